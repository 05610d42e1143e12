"""The eval stage: run(cfg) reads the ratings, computes judge health, agreement, ensembles and before/after,
writes RUN/report/metrics.json and report.html, and returns this command's keys of metrics.json;
format_summary() is what a pipeline's eval step prints (autofeedback.eval has the metrics.json reference).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from .. import progress, tables
from ..config import EvalConfig
from ..errors import InputError
from . import protocol
from .agreement import AgreementResult, compute_agreement, judge_health
from .before_after import before_after, before_after_grid
from .ensembles import evaluate_ensembles, judge_costs
from .ratings import (check_map_used, maps_target, merge_sources, normalize, parse_map, read_ratings,
                      read_run_judgments, read_run_table)

OWN_KEYS = ("agreement", "judge_health", "before_after", "before_after_skipped", "eval", "ensembles", "calibration")
EVAL_STEPS = ("inputs", "read tables", "read ratings", "judge health", "agreement", "ensembles", "before/after",
              "report")


def _stepper(bar):
    """step(): the previous eval step is done; the bar names the next one."""
    done = [0]

    def step() -> None:
        if done[0]:
            bar.update(1)
        if done[0] < len(EVAL_STEPS):
            bar.set_postfix_str(EVAL_STEPS[done[0]])
        done[0] += 1

    step()
    return step


def run(cfg: EvalConfig, echo=None) -> dict:
    """Compute agreement and before/after metrics, write metrics.json and report.html.

    Returns this command's keys of metrics.json (agreement, judge_health, before_after, eval)."""
    run_dir = Path(cfg.run_dir)
    bar = progress.bar(len(EVAL_STEPS), "eval", unit="step", enabled=cfg.progress)
    step = _stepper(bar)
    # 1. Check inputs: which files exist, column mapping.
    mapping = parse_map(cfg.column_map)
    label_map = protocol.parse_labels(cfg.labels)
    human_path = cfg.human
    if human_path is None and tables.exists(tables.table_path(run_dir, "human_labels")):
        human_path = tables.table_path(run_dir, "human_labels")
    judgment_paths = list(cfg.judgments)
    run_judgments = tables.table_path(run_dir, "judgments")
    has_run_judgments = cfg.run_judgments and tables.exists(run_judgments)
    for p in [human_path, *judgment_paths]:
        if p is not None and not Path(p).exists():
            raise InputError(f"file not found: {p}")
    if human_path is None and not judgment_paths and not has_run_judgments:
        raise InputError(f"{run_dir}: nothing to evaluate: no judgments.parquet in the run and no --human "
                         f"or --judgments file given")
    check_map_used(mapping, {"human": [human_path] if human_path is not None else [], "judgments": judgment_paths})

    # 2. Read the run's tables (images without pixels, prompts).
    step()
    images = read_run_table(run_dir, "images", ["image_id", "prompt_id", "prompt", "model", "seed", "created_at"])
    prompts = read_run_table(run_dir, "prompts", ["prompt_id", "prompt", "category", "split"])

    # 3. Read and normalize the ratings.
    step()
    judge_rows = []
    for p in judgment_paths:
        judge_rows.append(normalize(read_ratings(p, mapping, role="judgments"), p,
                                    default_rater=Path(p).stem.split(".")[0],
                                    prefer_item_id=maps_target(mapping, "item_id", "judgments"), role="judge",
                                    label_map=label_map))
    if has_run_judgments:
        judge_rows.append(normalize(read_run_judgments(run_dir), run_judgments, default_rater="judge", role="judge",
                                    label_map=label_map))
    judges = merge_sources(judge_rows)
    human = None
    if human_path is not None:
        human = normalize(read_ratings(human_path, mapping, role="human"), human_path, default_rater="human",
                          prefer_item_id=maps_target(mapping, "item_id", "human"), label_map=label_map)
        human = human[human["status"] == "ok"]
        if human.empty:
            raise InputError(f"{human_path}: no usable ratings (every row has a non-ok status or no value)")

    # 4. Judge health: statuses, refusals, position consistency.
    step()
    health = judge_health(judges, cfg.bootstrap, cfg.seed) if judges is not None else {}

    # 5. Agreement with the humans.
    step()
    result = None
    if human is not None:
        result = compute_agreement(human, judges, tie_policy=cfg.tie_policy, n_boot=cfg.bootstrap,
                                   seed=cfg.seed, min_rater_items=cfg.min_rater_items, images=images,
                                   prompts=prompts, human_source=str(human_path), failed=cfg.failed,
                                   bootstrap_unit=cfg.bootstrap_unit,
                                   judge_threshold=protocol.parse_thresholds(cfg.judge_threshold),
                                   judge_scale=protocol.parse_scales(cfg.judge_scale),
                                   aligned_threshold=cfg.aligned_threshold)
    agreement = result.metrics if result is not None else None

    # 5b. Judge ensembles (cross-fitted), calibration to P(aligned), cost-aware selection (issue #10).
    step()
    ensembles = calibration = None
    if result is not None and (cfg.ensemble or cfg.calibration):
        costs, cost_source = judge_costs(judges, cfg.judge_cost)
        ensembles, calibration, notes = evaluate_ensembles(
            result, cfg.ensemble, members=cfg.ensemble_judges, folds=cfg.folds, seed=cfg.seed, ridge=cfg.ridge,
            threshold=cfg.aligned_threshold, calibration=cfg.calibration or "isotonic", bins=cfg.ece_bins,
            costs=costs, cost_source=cost_source, budget=cfg.budget, repeats=cfg.fold_repeats)
        agreement["warnings"].extend(notes)

    # 6. Model before/after on the run's own pointwise judgments.
    step()
    ba, why = None, []
    if has_run_judgments and images is not None:
        jt = tables.read(run_judgments, "judgments", columns=["judge", "mode", "prompt_id", "image_ids", "label",
                                                             "score", "answers", "status"])
        ba = before_after(images, jt, prompts, judge=cfg.judge, models=cfg.models, split=cfg.split,
                          n_boot=cfg.bootstrap, seed=cfg.seed, why=why)

    # 7. Write metrics.json (merged, atomic) and the HTML report.
    step()
    metrics = {
        "agreement": agreement, "judge_health": health, "before_after": ba,
        "before_after_skipped": why[0] if why else None,
        "ensembles": ensembles, "calibration": calibration,
        "eval": {"created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "run_dir": str(run_dir),
                 "inputs": {"human": None if human_path is None else str(human_path),
                            "judgments": [str(p) for p in judgment_paths]
                            + ([str(run_judgments)] if has_run_judgments else [])},
                 "config": json.loads(cfg.model_dump_json())},
    }
    report_dir = run_dir / "report"
    with tables.run_lock(run_dir, wait=cfg.wait, hint="wait for it to finish, or pass --wait"):
        merged = write_metrics(report_dir / "metrics.json", metrics)
        grid_path = None
        if ba is not None:
            grid_path = before_after_grid(run_dir, images, prompts, jt, ba, report_dir / "before_after.png")
        html_path = None
        if cfg.html:
            from .. import report_html

            grids = image_grids(run_dir, images, judges, result, ba, cfg)
            html_path = report_html.write_html(report_dir / "report.html", merged, grids)
    step()
    bar.close()
    if echo is not None:
        from .. import report

        echo(report.format_terminal(metrics))
        written = [str(p) for p in (html_path, grid_path) if p]
        echo(f"\nwrote {report_dir / 'metrics.json'}" + (f" and {' and '.join(written)}" if written else ""))
    return _public(metrics)


def format_summary(s: dict, cfg: EvalConfig | None = None) -> str:
    """What a pipeline's eval step prints: the same tables as `autofeedback eval`."""
    from .. import report

    return "eval:\n" + report.format_terminal(s)


# ============================================================================ image grids
def image_grids(run_dir: Path, images, judges, agreement: AgreementResult | None, ba, cfg,
                k: int | None = None) -> list[dict]:
    """Best / worst images by the judge, and the worst judge-human disagreements, when the run has images.

    Returns [{title, note, items: [{image_id, png (bytes), caption}]}]."""
    if images is None or images.empty:
        return []
    k = k or cfg.grid
    grids: list[dict] = []
    meta = images.drop_duplicates("image_id").set_index("image_id")
    wanted: list[tuple[str, str, list[tuple[str, str]]]] = []
    if judges is not None:
        pw = judges[(judges["status"] == "ok") & (judges["kind"] != "choice") & judges["item_id"].isin(meta.index)]
        name = (ba or {}).get("judge") or cfg.judge
        if name is None and not pw.empty:
            name = pw["rater"].value_counts().index[0]
        sel = pw[pw["rater"].isin([name, f"{name}/pointwise"])]
        if not sel.empty:
            s = sel.groupby("item_id")["value"].mean().sort_index(kind="stable")
            s = s.sort_values(kind="stable")
            best = s.iloc[::-1][:k]
            worst = s.iloc[:k]
            cap = lambda it, v: f"{meta.at[it, 'model']} · {name} {v:.3g} · {meta.at[it, 'prompt']}"  # noqa: E731
            wanted.append((f"Best by {name}", "highest-scored images of the run",
                           [(it, cap(it, v)) for it, v in best.items()]))
            wanted.append((f"Worst by {name}", "lowest-scored images of the run",
                           [(it, cap(it, v)) for it, v in worst.items()]))
    if agreement is not None:
        items, section = agreement.items, agreement.metrics
        ids = np.array(items.ids)
        in_run = np.isin(ids, meta.index.to_numpy())
        if in_run.any() and items.judges:
            name = cfg.judge if cfg.judge in items.judges else max(
                items.judges, key=lambda j: ((section["judges"][j]["metrics"].get(
                    section["primary_metric"]) or {}).get("value") or -9))
            x, y = items.judges[name], items.mean
            ok = np.isfinite(x) & np.isfinite(y) & in_run
            if ok.sum() >= 2:
                from scipy.stats import rankdata

                rx = np.full(len(x), np.nan)
                ry = np.full(len(x), np.nan)
                rx[ok] = (rankdata(x[ok]) - 0.5) / ok.sum()
                ry[ok] = (rankdata(y[ok]) - 0.5) / ok.sum()
                gap = np.where(ok, np.abs(rx - ry), -1)
                top = np.argsort(-gap, kind="stable")[:k]
                caps = [(ids[i], f"{name} {x[i]:.3g} (rank {rx[i]:.0%}) · humans {y[i]:.3g} (rank {ry[i]:.0%}) · "
                                 f"{meta.at[ids[i], 'prompt']}") for i in top if gap[i] >= 0]
                wanted.append((f"Judge–human disagreements ({name})",
                               "largest gaps between the judge's rank and the human rank of an image", caps))
    if not wanted:
        return []
    need = sorted({it for _, _, lst in wanted for it, _ in lst})
    png = tables.images_by_id(run_dir, need, strict=False)
    for title, note, lst in wanted:
        grids.append({"title": title, "note": note,
                      "items": [{"image_id": it, "png": png.get(it), "caption": c} for it, c in lst]})
    return grids


# ============================================================================ metrics.json
def write_metrics(path: Path, metrics: dict, keys=OWN_KEYS) -> dict:
    """Merge `keys` of `metrics` into an existing metrics.json (other top-level keys kept); atomic write.

    The one writer of RUN/report/metrics.json: `eval` owns OWN_KEYS, `autofeedback run` its own keys."""
    path = Path(path)
    merged: dict = {}
    if path.exists():
        try:
            merged = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: existing metrics.json is not valid JSON ({exc}); move it away") from None
        if not isinstance(merged, dict):
            raise InputError(f"{path}: existing metrics.json is not a JSON object; move it away")
    for key in keys:
        merged[key] = _public(metrics.get(key))
    tables.write_atomic(path, json.dumps(merged, indent=2, allow_nan=False, default=_json_default) + "\n")
    return merged


def _public(obj):
    """Drop private keys (leading underscore) and make floats JSON-safe."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(obj, (list, tuple)):
        return [_public(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (_dt.datetime, _dt.date)):
        return o.isoformat()
    return str(o)
