"""publish: export the run's dataset folder and upload it to the Hugging Face Hub.

Reads:   what `autofeedback export` reads (see autofeedback.export)
Writes:  RUN/export/FORMAT/ (the folder), then the Hub dataset repository REPO_ID: created if missing
         (exist_ok), the folder uploaded as one commit; shards of an earlier publish that are gone are deleted,
         so re-publishing updates the repository in place. --dry-run stops after the folder.
Token:   $HF_TOKEN (or --token-env NAME), else the login cache of `hf auth login`. It is passed to
         huggingface_hub only: never printed, logged or written (the export checks every file for it).
"""

from __future__ import annotations

import os

from . import export
from .config import ExportConfig, PublishConfig
from .errors import InputError
from .redact import redact


def run(cfg: PublishConfig) -> dict:
    """Export, then upload unless dry_run. Returns the export summary plus {repo_id, url, commit}."""
    # 1. Check inputs.
    if cfg.repo_id.count("/") != 1 or not all(cfg.repo_id.split("/")):
        raise InputError(f"--repo-id {cfg.repo_id!r}: expected ORG/NAME")
    # 2. Write the dataset folder.
    ecfg = ExportConfig(run_dir=cfg.run_dir, format=cfg.format, out=cfg.out, license=cfg.license,
                        pretty_name=cfg.pretty_name)
    summary = export.run(ecfg, repo_id=cfg.repo_id)
    summary.update({"repo_id": cfg.repo_id, "dry_run": cfg.dry_run, "url": None, "commit": None})
    if cfg.dry_run:
        return summary
    # 3. Create the repository (or find it) and upload the folder as one commit.
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    token = os.environ.get(cfg.token_env) or None  # None: huggingface_hub's own login cache
    api = HfApi(endpoint=cfg.endpoint, token=token)
    message = cfg.commit_message or (f"autofeedback: {summary['pairs']} pairs ({cfg.format}), "
                                     + ", ".join(f"{k} {v['rows']}" for k, v in summary["configs"].items()))
    try:
        repo = api.create_repo(cfg.repo_id, repo_type="dataset", private=cfg.private, exist_ok=True)
        commit = api.upload_folder(repo_id=cfg.repo_id, repo_type="dataset", folder_path=summary["out"],
                                   commit_message=message, delete_patterns=["data/**"])
    except OfflineModeIsEnabled:
        raise InputError("the Hub is unreachable: HF_HUB_OFFLINE is set (unset it, or use --dry-run)") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = {401: f"not authenticated: set ${cfg.token_env} or run `hf auth login`",
                403: f"the token may not write to {cfg.repo_id}"}.get(status, "")
        raise InputError(f"upload to {cfg.repo_id} failed (HTTP {status}){': ' + hint if hint else ''}: "
                         f"{redact(str(exc).splitlines()[0])[:300]}") from None
    except httpx2.TransportError as exc:  # no network, DNS, refused, timed out: nothing was uploaded
        raise InputError(f"could not reach the Hub at {api.endpoint} ({type(exc).__name__}: "
                         f"{redact(str(exc))[:200]}); check the network or --endpoint, or use --dry-run") from None
    summary["url"] = str(repo)
    summary["commit"] = getattr(commit, "oid", None)
    return summary


def format_summary(s: dict, cfg: PublishConfig | None = None) -> str:
    text = export.format_summary(s)
    if s["dry_run"]:
        return text + f"\n  dry run: nothing uploaded (would publish to {s['repo_id']})"
    return text + f"\n  published to {s['url']} (commit {s['commit']})"
