"""export + publish: a shapes run -> judged -> pairs -> a dataset folder that `datasets` loads offline,
with a card that carries the provenance; publish against a local fake Hub; no secret in any file."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from autofeedback import export, judge, pairs, publish, tables
from autofeedback.config import ExportConfig, JudgeConfig, PairsConfig, PublishConfig
from autofeedback.errors import InputError
from autofeedback.shapes.demo import make_rendered_run

from .conftest import cli

SECRET = "sk-test-DO-NOT-LEAK-1234567890"
HF_SECRET = "hf_testTOKENnotForFiles987654"


@pytest.fixture
def judged_run(tmp_path, server, monkeypatch):
    """8 prompts x 3 images, judged pointwise by the checker and pairwise (both orders) over the loopback server."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    run = make_rendered_run(tmp_path / "run", n_prompts=8, per_prompt=3, seed=1)
    judge.run(JudgeConfig(run_dir=run, judge="shapes"))
    judge.run(JudgeConfig(run_dir=run, judge="openai:shapes-checker", base_url=server.base_url, mode="pairwise",
                          timeout=2.0, max_retries=1))
    # a pipeline config with a secret in it: the card shows the config, never the secret
    (run / "pipeline.yaml").write_text(yaml.safe_dump({
        "run_dir": "runs/x", "steps": [{"judge": {"judge": "openai:gpt-4o", "api_key": SECRET,
                                                  "api_key_env": "OPENAI_API_KEY"}}]}))
    return run


def _load(folder, config=None):
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(str(folder), config) if config else datasets.load_dataset(str(folder))


def _card_yaml(folder) -> dict:
    text = (Path(folder) / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _assert_no_secret(folder, *extra_text):
    for path in Path(folder).rglob("*"):
        if path.is_file() and path.name != "pipeline.yaml":  # the test's own input holds the secret
            blob = path.read_bytes()
            assert SECRET.encode() not in blob and HF_SECRET.encode() not in blob, path
    for text in extra_text:
        assert SECRET not in text and HF_SECRET not in text


def test_shapes_run_to_hf_folder_loads_offline_with_provenance(judged_run, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    s = pairs.run(PairsConfig(run_dir=judged_run))
    assert s["pairs"] > 0 and s["voters"]["openai:shapes-checker/pairwise"]["position_consistency"] == 1.0
    out = judged_run / "export" / "hf"
    summary = export.run(ExportConfig(run_dir=judged_run, license="apache-2.0"))
    assert summary["configs"]["pairs"]["rows"] == s["pairs"]
    ds = _load(out)["train"]
    assert ds.num_rows == s["pairs"]
    images = {r["image_id"]: r for r in tables.read(judged_run / "images.parquet", "images").to_pylist()}
    prefs = {r["pair_id"]: r for r in tables.read(judged_run / "preferences.parquet", "preferences").to_pylist()}
    for row in ds:
        assert row["chosen"].size == (32, 32) and row["rejected"].size == (32, 32)  # the images decode
        buf = io.BytesIO()
        row["chosen"].save(buf, format="PNG")
        ref = prefs[row["pair_id"]]
        assert row["chosen_image_id"] == ref["chosen_image_id"] and row["prompt"] == ref["prompt"]
        assert row["chosen_model"] == images[row["chosen_image_id"]]["model"] == "renderer"
    labels = _load(out, "labels")["train"]
    assert labels.num_rows == 24 and {r["label"] for r in labels} == {True, False}
    aug = _load(out, "augmentations")["train"]
    assert aug.num_rows == 24 and all(len(r["perturbed"]) == 3 for r in aug)
    # the card: YAML metadata + provenance
    meta = _card_yaml(out)
    assert meta["license"] == "apache-2.0" and meta["size_categories"] == ["n<1K"]
    assert {c["config_name"] for c in meta["configs"]} == {"pairs", "labels", "augmentations"}
    assert [c for c in meta["configs"] if c.get("default")][0]["config_name"] == "pairs"
    feats = {f["name"]: f for f in [c for c in meta["dataset_info"] if c["config_name"] == "pairs"][0]["features"]}
    assert feats["chosen"]["dtype"] == "image" and feats["rejected"]["dtype"] == "image"
    card = (out / "README.md").read_text()
    template = next(r["template"] for r in tables.read(judged_run / "judgments.parquet", "judgments").to_pylist()
                    if r["mode"] == "pairwise")
    assert template.startswith("pairwise.v1@")
    for needle in ("`renderer`", "openai:shapes-checker", template, "shapes-checker-v1", "mode pairwise",
                   "Position consistency", "Agreement", "combine=majority", "Pipeline config", "openai:gpt-4o"):
        assert needle in card, needle
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["pipeline"]["config"]["steps"][0]["judge"]["api_key"] == "***"
    _assert_no_secret(out)


def test_pickapic_layout(judged_run):
    from PIL import Image

    pairs.run(PairsConfig(run_dir=judged_run, tie_policy="keep"))
    summary = export.run(ExportConfig(run_dir=judged_run, format="pickapic", jpeg_quality=90))
    ds = _load(summary["out"])["train"]
    prefs = {r["pair_id"]: r for r in tables.read(judged_run / "preferences.parquet", "preferences").to_pylist()}
    sides = set()
    for row in ds:
        for k in ("jpg_0", "jpg_1"):
            img = Image.open(io.BytesIO(row[k]))
            assert img.format == "JPEG" and img.size == (32, 32)
        ref = prefs[row["ranking_id"]]
        assert row["caption"] == ref["prompt"]
        assert row["label_0"] + row["label_1"] == 1.0
        if ref["margin"] == 0:
            assert row["label_0"] == 0.5
        else:
            best = row["image_0_uid"] if row["label_0"] == 1.0 else row["image_1_uid"]
            assert best == ref["chosen_image_id"] == row["best_image_uid"]
            sides.add(row["label_0"])
    assert sides == {0.0, 1.0}  # the chosen image is not always on the same side
    assert any(r["margin"] == 0 for r in prefs.values())  # ties kept as 0.5/0.5


def test_export_errors(tmp_path):
    run = make_rendered_run(tmp_path / "run", n_prompts=2, per_prompt=2)
    with pytest.raises(InputError, match="no preferences table"):
        export.run(ExportConfig(run_dir=run))
    # pairs whose images the run doesn't have (imported human labels)
    human = tmp_path / "human"
    tables.append(tables.table_path(human, "preferences"), [{
        "pair_id": "p1", "prompt_id": "x", "prompt": "a cat", "chosen_image_id": "a.webp",
        "rejected_image_id": "b.webp", "margin": 1.0, "agreement": 1.0, "source": "human_labels:x/listwise",
        "created_at": tables.now()}], "preferences")
    with pytest.raises(InputError, match="no images table"):
        export.run(ExportConfig(run_dir=human))
    with pytest.raises(InputError, match="no pairs from source judgments"):
        export.run(ExportConfig(run_dir=human, sources=["judgments"]))


def test_publish_dry_run_cli_writes_the_folder_and_never_the_token(judged_run):
    pairs.run(PairsConfig(run_dir=judged_run))
    env_out = cli("publish", judged_run, "--repo-id", "me/shapes-prefs", "--dry-run")
    assert env_out.returncode == 0, env_out.stderr
    assert "dry run" in env_out.stdout and "me/shapes-prefs" in env_out.stdout
    out = judged_run / "export" / "hf"
    assert (out / "README.md").exists() and list((out / "data" / "pairs").glob("train-*.parquet"))
    assert 'load_dataset("me/shapes-prefs")' in (out / "README.md").read_text()
    _assert_no_secret(judged_run, env_out.stdout, env_out.stderr)  # the whole run dir: tables, export, report


def test_publish_offline_is_a_clear_error(judged_run):
    pairs.run(PairsConfig(run_dir=judged_run))
    with pytest.raises(InputError, match="HF_HUB_OFFLINE"):
        publish.run(PublishConfig(run_dir=judged_run, repo_id="me/x"))


# ------------------------------------------------------------------------------ a fake Hub on loopback
class FakeHub:
    """The few Hub endpoints create_repo + upload_folder use; records every call and every committed file."""

    def __init__(self):
        self.calls: list[tuple[str, str, str]] = []  # (method, path, authorization)
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                hub.calls.append(("GET", self.path, self.headers.get("Authorization", "")))
                path = self.path.split("?")[0]
                if path.startswith("/api/datasets/") and "/tree/" in path:
                    repo = "/".join(path.split("/")[3:5])
                    files = hub.repos.get(repo, {})
                    return self._send(200, [{"type": "file", "path": p, "size": len(b), "oid": "0" * 40}
                                            for p, b in files.items()])
                if path.startswith("/api/datasets/"):
                    repo = "/".join(path.split("/")[3:5])
                    if repo in hub.repos:
                        return self._send(200, {"id": repo, "sha": "1" * 40, "private": False, "siblings": []})
                return self._send(404, {"error": "not found"})

            def do_POST(self):
                body = self._body()
                hub.calls.append(("POST", self.path, self.headers.get("Authorization", "")))
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    if repo in hub.repos:
                        return self._send(409, {"error": "You already created this dataset repo",
                                                "url": f"{hub.url}/datasets/{repo}"})
                    hub.repos[repo] = {}
                    return self._send(200, {"url": f"{hub.url}/datasets/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    return self._send(200, {})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False, "oid": None} for f in files]})
                if "/commit/" in path:
                    repo = "/".join(path.split("/")[3:5])
                    lines = [json.loads(x) for x in body.splitlines() if x.strip()]
                    commit = {"header": lines[0], "files": {}, "deleted": []}
                    for item in lines[1:]:
                        if item["key"] == "file":
                            data = base64.b64decode(item["value"]["content"])
                            commit["files"][item["value"]["path"]] = data
                            hub.repos[repo][item["value"]["path"]] = data
                        elif item["key"] == "deletedFile":
                            commit["deleted"].append(item["value"]["path"])
                            hub.repos[repo].pop(item["value"]["path"], None)
                    hub.commits.append(commit)
                    return self._send(200, {"commitUrl": f"{hub.url}/datasets/{repo}/commit/{len(hub.commits)}",
                                            "commitOid": f"{len(hub.commits):040d}"})
                return self._send(404, {"error": f"unknown endpoint {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_publish_uploads_to_a_hub_and_republish_updates_it(judged_run, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    pairs.run(PairsConfig(run_dir=judged_run))
    with FakeHub() as hub:
        cfg = PublishConfig(run_dir=judged_run, repo_id="me/shapes-prefs", endpoint=hub.url, private=True)
        s = publish.run(cfg)
        assert s["commit"] == f"{1:040d}"
        files = hub.repos["me/shapes-prefs"]
        assert "README.md" in files and any(p.startswith("data/pairs/train-") for p in files)
        assert any(p.startswith("data/labels/") for p in files) and "provenance.json" in files
        assert all(auth == f"Bearer {HF_SECRET}" for _, _, auth in hub.calls)  # the token from $HF_TOKEN
        # re-publish with fewer pairs: the repo exists (409 -> exist_ok), the same commit path updates it, and a
        # shard left by an earlier publish with more shards is deleted
        stale = "data/pairs/train-00001-of-00002.parquet"
        hub.repos["me/shapes-prefs"][stale] = b"old"
        pairs.run(PairsConfig(run_dir=judged_run, max_pairs_per_prompt=1))
        s2 = publish.run(cfg)
        assert s2["commit"] == f"{2:040d}" and s2["pairs"] < s["pairs"]
        repo = hub.repos["me/shapes-prefs"]
        assert stale not in repo and hub.commits[-1]["deleted"] == [stale]
        assert "data/pairs/train-00000-of-00001.parquet" in repo
        assert sum(1 for m, p, _ in hub.calls if p == "/api/repos/create") == 2
        readme = hub.repos["me/shapes-prefs"]["README.md"].decode()
        assert f"| pairs (default) | {s2['pairs']} |" in readme
    text = publish.format_summary(s2)
    assert HF_SECRET not in text and HF_SECRET not in capsys.readouterr().out
    for blob in hub.repos["me/shapes-prefs"].values():
        assert HF_SECRET.encode() not in blob and SECRET.encode() not in blob
