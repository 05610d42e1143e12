"""run: a pipeline YAML (pipelines/*.yaml) chains the stages, then prints the alignment table.

    base_dir: ..                 # relative paths below are relative to this (itself relative to the YAML)
    run_dir: runs/shapes
    steps:
      - generate: {model: data/models/shapes-tiny, prompts: prompts/shapes.jsonl, split: heldout}
      - judge: {judge: shapes}
    summary: {group_by: [split]}

Every stage resumes, so re-running a finished pipeline does no new work. `--set generate.steps=10`
overrides a field of every step of that stage (`--set 0.steps=10` only the first step). A value may
name the run directory as {run_dir} (e.g. `lora: "{run_dir}/dpo/lora"`, written by an earlier step).
Writes RUN/report/metrics.json.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import yaml

from . import alignment
from .config import STAGES, STEP_CONFIGS, PipelineConfig, build
from .errors import InputError
from .eval import write_metrics  # the one metrics.json writer (merges with what eval wrote)

PATH_FIELDS = ("model", "prompts", "lora", "reg_images", "clip", "images_model", "anchor_model", "gold_prompts")
# stage name in a pipeline YAML -> module with run(cfg) and format_summary(summary, cfg) (from config.STAGES)
STAGE_MODULES = {name: STAGES[name].module for name in STEP_CONFIGS}


def load_pipeline(path: str | Path, overrides: list[str] | None = None, run_dir: str | Path | None = None):
    path = Path(path)
    if not path.exists():
        raise InputError(f"pipeline file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping with run_dir and steps")
    pipe = build(PipelineConfig, str(path), **raw)
    base = (path.parent / pipe.base_dir).resolve()
    steps: list[tuple[str, dict]] = []
    for i, step in enumerate(pipe.steps):
        if not isinstance(step, dict) or len(step) != 1:
            raise InputError(f"{path}: steps[{i}] must be a mapping with one stage name, got {step!r}")
        (name, settings), = step.items()
        if name not in STEP_CONFIGS:
            raise InputError(f"{path}: steps[{i}]: unknown stage {name!r}; known: {', '.join(STEP_CONFIGS)}")
        steps.append((name, dict(settings or {})))
    for item in overrides or []:
        _apply_override(steps, item)
    # absolute: "{run_dir}/rwr/pipeline" must name a model the same way before and after it exists (images.model,
    # --images-model), or a rerun after a kill would not find its own images
    final_run_dir = (Path(run_dir) if run_dir is not None else _resolve(base, pipe.run_dir, must_exist=False)).resolve()
    configs = []
    for i, (name, settings) in enumerate(steps):
        for key, value in settings.items():  # "{run_dir}/dpo/lora": outputs of earlier steps
            if isinstance(value, str) and "{run_dir}" in value:
                settings[key] = value.replace("{run_dir}", str(final_run_dir))
        for key in PATH_FIELDS:
            if isinstance(settings.get(key), str):
                settings[key] = str(_resolve(base, Path(settings[key]), must_exist=True))
        for key in ("judge", "judges", "reward", "gold"):  # clip:PATH / reward:PATH judges: relative to base_dir
            value = settings.get(key)  # unless they exist from here (the judge's name, in the tables, stays as written)
            if isinstance(value, str):
                settings[key] = _resolve_judge(base, value)
            elif isinstance(value, list):
                settings[key] = [_resolve_judge(base, v) if isinstance(v, str) else v for v in value]
            elif isinstance(value, dict):  # train grpo's {JUDGE: WEIGHT}
                settings[key] = {_resolve_judge(base, str(k)): v for k, v in value.items()}
        url = settings.get("base_url")  # serve:FOLDER (the judge runs serve-vlm on it): relative to base_dir too
        if isinstance(url, str) and url.startswith("serve:") and not Path(url[6:]).exists() and (base / url[6:]).exists():
            settings["base_url"] = f"serve:{base / url[6:]}"
        settings["run_dir"] = final_run_dir
        configs.append((name, build(STEP_CONFIGS[name], f"{path}: steps[{i}] ({name})", **settings)))
    return pipe, final_run_dir, configs


def _resolve_judge(base: Path, judge: str) -> str:
    spec, eq, weight = judge.rpartition("=") if "=" in judge else (judge, "", "")  # train grpo's JUDGE=WEIGHT
    kind, sep, arg = spec.partition(":")
    if sep and kind in ("clip", "reward") and not Path(arg).exists() and (base / arg).exists():
        return f"{kind}:{base / arg}{eq}{weight}"
    return judge


def _resolve(base: Path, value: Path, must_exist: bool) -> Path:
    if value.is_absolute():
        return value
    candidate = base / value
    if not must_exist or candidate.exists():
        return candidate
    return value  # a built-in suite name or a Hub id


def _apply_override(steps: list[tuple[str, dict]], item: str) -> None:
    target, eq, value = item.partition("=")
    stage, dot, field = target.partition(".")
    if not eq or not dot or not field:
        raise InputError(f"--set {item!r}: expected STAGE.FIELD=VALUE (or INDEX.FIELD=VALUE)")
    parsed = yaml.safe_load(value) if value else None
    hit = False
    for i, (name, settings) in enumerate(steps):
        if stage == name or stage == str(i):
            settings[field] = parsed
            hit = True
    if not hit:
        raise InputError(f"--set {item!r}: no step named {stage!r} in the pipeline")


def run(path: str | Path, overrides: list[str] | None = None, run_dir: str | Path | None = None,
        echo=print) -> dict:
    pipe, run_dir, configs = load_pipeline(path, overrides, run_dir)
    t_start = time.perf_counter()
    stage_summaries = []
    for i, (name, cfg) in enumerate(configs):
        t0 = time.perf_counter()
        stage = importlib.import_module(STAGE_MODULES[name])
        summary = stage.run(cfg)
        text = stage.format_summary(summary, cfg)
        summary["seconds_total"] = round(time.perf_counter() - t0, 2)
        stage_summaries.append({"step": i, "stage": name, **summary})
        echo(f"[{i}] {text}")
    summary = alignment.summarize(run_dir, pipe.summary.group_by, pipe.summary.judge,
                                  pipe.summary.bootstrap, pipe.summary.seed)
    report_dir = run_dir / "report"
    metrics = write_metrics(report_dir / "metrics.json",
                  {"pipeline": str(path), "run_dir": str(run_dir), "alignment": summary, "stages": stage_summaries,
                   "seconds": round(time.perf_counter() - t_start, 2)},
                  keys=("pipeline", "run_dir", "alignment", "stages", "seconds"))
    echo("")
    echo(f"prompt alignment by the {', '.join(summary['judges'])} judge:")
    echo(alignment.format_table(summary))
    has_eval = any(name == "eval" for name, _ in configs)  # else a report file there is from an earlier eval
    extra = [str(report_dir / f) for f in ("report.html", "before_after.png") if has_eval and (report_dir / f).exists()]
    echo(f"\nwrote {report_dir / 'metrics.json'}" + "".join(f" and {f}" for f in extra))
    return metrics
