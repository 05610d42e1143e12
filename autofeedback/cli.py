"""The `autofeedback` command. Thin: parse flags -> stage config -> lazy import of the stage -> run.

Nothing heavy (torch, diffusers, pandas) is imported here, so `autofeedback --help` is instant.
Errors a user can fix (InputError) print one line and exit with code 2.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .config import GenerateConfig, JudgeConfig, TrainDPOConfig, TrainRWRConfig, build
from .errors import InputError
from .redact import redact

app = typer.Typer(
    name="autofeedback",
    help="Align text-to-image diffusion models with AI feedback. Stages read and write Parquet in a run "
         "directory; every stage resumes where it stopped.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _help(cls, field: str) -> str:
    return cls.model_fields[field].description or ""


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def user_errors(fn):
    """Turn InputError into one line on stderr and exit code 2; Ctrl-C into exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            typer.echo(f"error: {redact(str(exc))}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; completed work is saved, re-run to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@user_errors
def generate(
    run_dir: Path = typer.Option(..., "--out", "--run-dir", "-o", help=_help(GenerateConfig, "run_dir")),
    model: str = typer.Option(..., "--model", "-m", help=_help(GenerateConfig, "model")),
    prompts: str = typer.Option(..., "--prompts", "-p", help=_help(GenerateConfig, "prompts")),
    split: Optional[str] = typer.Option(None, help=_help(GenerateConfig, "split")),
    limit: Optional[int] = typer.Option(None, help=_help(GenerateConfig, "limit")),
    images_per_prompt: int = typer.Option(4, "--images-per-prompt", "-n", help=_help(GenerateConfig, "images_per_prompt")),
    seed: int = typer.Option(0, help=_help(GenerateConfig, "seed")),
    steps: int = typer.Option(20, help=_help(GenerateConfig, "steps")),
    guidance: float = typer.Option(4.0, help=_help(GenerateConfig, "guidance")),
    height: Optional[int] = typer.Option(None, help=_help(GenerateConfig, "height")),
    width: Optional[int] = typer.Option(None, help=_help(GenerateConfig, "width")),
    batch_size: int = typer.Option(32, help=_help(GenerateConfig, "batch_size")),
    device: str = typer.Option("cpu", help=_help(GenerateConfig, "device")),
    dtype: str = typer.Option("float32", help=_help(GenerateConfig, "dtype")),
    channels_last: bool = typer.Option(True, help=_help(GenerateConfig, "channels_last")),
    compile: bool = typer.Option(False, "--compile", help=_help(GenerateConfig, "compile")),
    vae_slicing: bool = typer.Option(False, "--vae-slicing", help=_help(GenerateConfig, "vae_slicing")),
    vae_tiling: bool = typer.Option(False, "--vae-tiling", help=_help(GenerateConfig, "vae_tiling")),
    lora: Optional[str] = typer.Option(None, help=_help(GenerateConfig, "lora")),
    model_name: Optional[str] = typer.Option(None, help=_help(GenerateConfig, "model_name")),
    negative_prompt: Optional[str] = typer.Option(None, help=_help(GenerateConfig, "negative_prompt")),
    flush_every: int = typer.Option(64, help=_help(GenerateConfig, "flush_every")),
    progress: bool = typer.Option(True, help=_help(GenerateConfig, "progress")),
):
    """Prompts -> images (RUN/images.parquet) with any diffusers text-to-image pipeline."""
    cfg = build(GenerateConfig, "generate", **{k: v for k, v in locals().items()})
    _quiet_libraries()
    from . import generate as stage

    typer.echo(stage.format_summary(stage.run(cfg), cfg))


@app.command()
@user_errors
def judge(
    run_dir: Path = typer.Argument(..., help=_help(JudgeConfig, "run_dir")),
    judge: list[str] = typer.Option(["shapes"], "--judge", "-j", help=_help(JudgeConfig, "judge")
                                    + " (repeatable: the judges run one after another, each keeps its own rows; "
                                      "--max-cost applies to each)"),
    mode: str = typer.Option("pointwise", help=_help(JudgeConfig, "mode")),
    template: Optional[str] = typer.Option(None, help=_help(JudgeConfig, "template")),
    limit: Optional[int] = typer.Option(None, help=_help(JudgeConfig, "limit")),
    both_orders: bool = typer.Option(True, help=_help(JudgeConfig, "both_orders")),
    pairs_per_prompt: Optional[int] = typer.Option(None, help=_help(JudgeConfig, "pairs_per_prompt")),
    list_size: int = typer.Option(4, help=_help(JudgeConfig, "list_size")),
    seed: int = typer.Option(0, help=_help(JudgeConfig, "seed")),
    base_url: Optional[str] = typer.Option(None, help=_help(JudgeConfig, "base_url")),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help=_help(JudgeConfig, "api_key_env")),
    concurrency: int = typer.Option(16, help=_help(JudgeConfig, "concurrency")),
    rpm: Optional[float] = typer.Option(None, help=_help(JudgeConfig, "rpm")),
    tpm: Optional[float] = typer.Option(None, help=_help(JudgeConfig, "tpm")),
    timeout: float = typer.Option(60.0, help=_help(JudgeConfig, "timeout")),
    max_retries: int = typer.Option(3, help=_help(JudgeConfig, "max_retries")),
    structured: str = typer.Option("auto", help=_help(JudgeConfig, "structured")),
    temperature: float = typer.Option(0.0, help=_help(JudgeConfig, "temperature")),
    max_tokens: int = typer.Option(400, help=_help(JudgeConfig, "max_tokens")),
    max_cost: Optional[float] = typer.Option(None, help=_help(JudgeConfig, "max_cost")),
    price_input: Optional[float] = typer.Option(None, help=_help(JudgeConfig, "price_input")),
    price_output: Optional[float] = typer.Option(None, help=_help(JudgeConfig, "price_output")),
    batch: bool = typer.Option(False, "--batch", help=_help(JudgeConfig, "batch")),
    detail: Optional[str] = typer.Option(None, help=_help(JudgeConfig, "detail")),
    image_max_side: Optional[int] = typer.Option(None, help=_help(JudgeConfig, "image_max_side")),
    image_format: str = typer.Option("png", help=_help(JudgeConfig, "image_format")),
    jpeg_quality: int = typer.Option(90, help=_help(JudgeConfig, "jpeg_quality")),
):
    """Images -> judgments (RUN/judgments.parquet): the shapes checker, or any OpenAI-compatible VLM."""
    values = {k: v for k, v in locals().items()}
    names = list(dict.fromkeys(values.pop("judge") or ["shapes"]))
    cfgs = [build(JudgeConfig, "judge", judge=name, **values) for name in names]  # check every judge first
    _quiet_libraries()
    from . import judge as stage

    for cfg in cfgs:
        typer.echo(stage.format_summary(stage.run(cfg), cfg))


@app.command("serve-checker")
@user_errors
def serve_checker(
    port: int = typer.Option(8000, help="port on 127.0.0.1"),
    latency: float = typer.Option(0.0, help="seconds added to every answer"),
    fault_rate: list[str] = typer.Option([], help="FAULT=P: answer with this fault with probability P (401, 429, "
                                                  "500, hang, reset, bad_body, malformed, refusal, truncated)"),
    position_bias: float = typer.Option(0.0, help="probability that a pairwise answer is 'A' whatever the images"),
):
    """A local OpenAI-protocol server whose 'VLM' is the shapes checker (demos and tests; loopback only)."""
    from .judges.checker_server import FAULTS, serve

    rates = {}
    for item in fault_rate:
        name, _, p = item.partition("=")
        try:
            rate = float(p)
        except ValueError:
            rate = None
        if name not in FAULTS or rate is None or not 0 <= rate <= 1:
            raise InputError(f"--fault-rate {item!r}: expected FAULT=P with P a probability (0 to 1) and FAULT one "
                             f"of {', '.join(FAULTS)}")
        rates[name] = rate
    serve(port=port, latency=latency, rates=rates, position_bias=position_bias)


@app.command()
@user_errors
def run(
    pipeline: Path = typer.Argument(..., help="pipeline YAML, e.g. pipelines/shapes.yaml"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", "-o", help="override the pipeline's run_dir"),
    set_: list[str] = typer.Option([], "--set", help="override a step field: STAGE.FIELD=VALUE (repeatable)"),
):
    """Run a pipeline YAML end to end (every stage resumes), then print the alignment table."""
    _quiet_libraries()
    from . import run as runner

    runner.run(pipeline, overrides=set_, run_dir=run_dir, echo=typer.echo)


from .config import EvalConfig  # noqa: E402  (the eval command's config)


@app.command("eval")
@user_errors
def eval_(
    run_dir: Path = typer.Argument(..., help=_help(EvalConfig, "run_dir")),
    human: Optional[Path] = typer.Option(None, "--human", help=_help(EvalConfig, "human")),
    judgments: list[Path] = typer.Option([], "--judgments", help=_help(EvalConfig, "judgments")),
    run_judgments: bool = typer.Option(True, help=_help(EvalConfig, "run_judgments")),
    map_: list[str] = typer.Option([], "--map", help=_help(EvalConfig, "column_map")),
    tie_policy: str = typer.Option("half", help=_help(EvalConfig, "tie_policy")),
    failed: str = typer.Option("wrong", help=_help(EvalConfig, "failed")),
    labels_: list[str] = typer.Option([], "--labels", help=_help(EvalConfig, "labels")),
    judge_threshold: list[str] = typer.Option([], "--judge-threshold", help=_help(EvalConfig, "judge_threshold")),
    judge_scale: list[str] = typer.Option([], "--judge-scale", help=_help(EvalConfig, "judge_scale")),
    bootstrap: int = typer.Option(2000, help=_help(EvalConfig, "bootstrap")),
    bootstrap_unit: str = typer.Option("auto", help=_help(EvalConfig, "bootstrap_unit")),
    seed: int = typer.Option(0, help=_help(EvalConfig, "seed")),
    judge: Optional[str] = typer.Option(None, "--judge", "-j", help=_help(EvalConfig, "judge")),
    models: Optional[str] = typer.Option(None, help="comma-separated; " + _help(EvalConfig, "models")),
    split: Optional[str] = typer.Option(None, help=_help(EvalConfig, "split")),
    min_rater_items: int = typer.Option(10, help=_help(EvalConfig, "min_rater_items")),
    html: bool = typer.Option(True, help=_help(EvalConfig, "html")),
    grid: int = typer.Option(8, help=_help(EvalConfig, "grid")),
    wait: bool = typer.Option(False, "--wait", help=_help(EvalConfig, "wait")),
    ensemble: list[str] = typer.Option([], "--ensemble", help=_help(EvalConfig, "ensemble")
                                       + " (repeatable or comma-separated; 'all' = every method)"),
    ensemble_judge: list[str] = typer.Option([], "--ensemble-judge", help=_help(EvalConfig, "ensemble_judges")
                                             + " (repeatable)"),
    folds: int = typer.Option(5, help=_help(EvalConfig, "folds")),
    fold_repeats: int = typer.Option(5, help=_help(EvalConfig, "fold_repeats")),
    ridge: float = typer.Option(1.0, help=_help(EvalConfig, "ridge")),
    calibration: Optional[str] = typer.Option(None, help=_help(EvalConfig, "calibration")),
    aligned_threshold: Optional[float] = typer.Option(None, help=_help(EvalConfig, "aligned_threshold")),
    ece_bins: int = typer.Option(10, help=_help(EvalConfig, "ece_bins")),
    judge_cost: list[str] = typer.Option([], "--judge-cost", help=_help(EvalConfig, "judge_cost") + " (repeatable)"),
    budget: Optional[float] = typer.Option(None, help=_help(EvalConfig, "budget")),
    progress: bool = typer.Option(True, help=_help(EvalConfig, "progress")),
):
    """Agreement of judges with human labels + model before/after -> RUN/report/{metrics.json,report.html}."""
    from .ensemble import METHODS

    methods: list[str] = []
    for item in ensemble:
        for m in (x.strip() for x in item.split(",")):
            if m == "all":
                methods += [x for x in METHODS if x not in methods]
            elif m and m not in methods:
                methods.append(m)
    costs = {}
    for item in judge_cost:
        name, eq, usd = item.rpartition("=")
        try:
            costs[name.strip()] = float(usd)
        except ValueError:
            raise InputError(f"--judge-cost {item!r}: expected NAME=USD, e.g. gpt-4o=1.25") from None
        if not eq or not name.strip():
            raise InputError(f"--judge-cost {item!r}: expected NAME=USD, e.g. gpt-4o=1.25")
    for item in map_:
        target, eq, source = item.partition("=")
        if not eq or not target.strip() or not source.strip():
            raise InputError(f"--map {item!r}: expected TARGET=SOURCE, e.g. item_id=image")
    cfg = build(EvalConfig, "eval", run_dir=run_dir, human=human, judgments=judgments, run_judgments=run_judgments,
                column_map=list(map_), labels=list(labels_), failed=failed, bootstrap_unit=bootstrap_unit,
                judge_threshold=list(judge_threshold), judge_scale=list(judge_scale), fold_repeats=fold_repeats,
                tie_policy=tie_policy, bootstrap=bootstrap, seed=seed, judge=judge,
                models=[m.strip() for m in models.split(",") if m.strip()] if models else None, split=split,
                min_rater_items=min_rater_items, html=html, grid=grid, wait=wait, ensemble=methods,
                ensemble_judges=ensemble_judge or None, folds=folds, ridge=ridge, calibration=calibration,
                aligned_threshold=aligned_threshold, ece_bins=ece_bins, judge_cost=costs, budget=budget,
                progress=progress)
    from . import evaluate as stage

    stage.run(cfg, echo=typer.echo)


train_app = typer.Typer(help="Train on the run's feedback: Diffusion-DPO (dpo), reward-weighted likelihood (rwr), "
                              "a reward model (reward).",
                         no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("dpo")
@user_errors
def train_dpo(
    run_dir: Path = typer.Argument(..., help=_help(TrainDPOConfig, "run_dir")),
    model: str = typer.Option(..., "--model", "-m", help=_help(TrainDPOConfig, "model")),
    out: str = typer.Option("dpo", help=_help(TrainDPOConfig, "out")),
    loss: str = typer.Option("sigmoid", help=_help(TrainDPOConfig, "loss")),
    beta: float = typer.Option(2000.0, help=_help(TrainDPOConfig, "beta")),
    lora_rank: int = typer.Option(8, help=_help(TrainDPOConfig, "lora_rank")),
    reference: str = typer.Option("adapters", help=_help(TrainDPOConfig, "reference")),
    steps: int = typer.Option(200, help=_help(TrainDPOConfig, "steps")),
    batch_size: int = typer.Option(8, help=_help(TrainDPOConfig, "batch_size")),
    grad_accum: int = typer.Option(1, help=_help(TrainDPOConfig, "grad_accum")),
    lr: float = typer.Option(1e-4, help=_help(TrainDPOConfig, "lr")),
    sft_weight: float = typer.Option(0.0, help=_help(TrainDPOConfig, "sft_weight")),
    uncond_prob: float = typer.Option(0.0, help=_help(TrainDPOConfig, "uncond_prob")),
    timestep_min: float = typer.Option(0.0, help=_help(TrainDPOConfig, "timestep_min")),
    ema_decay: float = typer.Option(0.0, help=_help(TrainDPOConfig, "ema_decay")),
    vae_latents: str = typer.Option("mode", help=_help(TrainDPOConfig, "vae_latents")),
    train_text_encoder: bool = typer.Option(False, help=_help(TrainDPOConfig, "train_text_encoder")),
    weight_decay: float = typer.Option(0.0, help=_help(TrainDPOConfig, "weight_decay")),
    mixed_precision: str = typer.Option("no", help=_help(TrainDPOConfig, "mixed_precision")),
    device: str = typer.Option("auto", help=_help(TrainDPOConfig, "device")),
    max_pairs: Optional[int] = typer.Option(None, help=_help(TrainDPOConfig, "max_pairs")),
    seed: int = typer.Option(0, help=_help(TrainDPOConfig, "seed")),
    checkpoint_every: int = typer.Option(50, help=_help(TrainDPOConfig, "checkpoint_every")),
    resume: bool = typer.Option(True, help=_help(TrainDPOConfig, "resume")),
    log_every: int = typer.Option(10, help=_help(TrainDPOConfig, "log_every")),
    progress: bool = typer.Option(True, help=_help(TrainDPOConfig, "progress")),
):
    """Diffusion-DPO on the pipeline's UNet from RUN/preferences.parquet (LoRA or full; accelerate-ready)."""
    cfg = build(TrainDPOConfig, "train dpo", **{k: v for k, v in locals().items()})
    _quiet_libraries()
    from . import train_dpo as stage
    from .training import NonFiniteLoss

    try:
        summary = stage.run(cfg)
    except NonFiniteLoss as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None
    typer.echo(stage.format_summary(summary, cfg))


@train_app.command("rwr")
@user_errors
def train_rwr(
    run_dir: Path = typer.Argument(..., help=_help(TrainRWRConfig, "run_dir")),
    model: str = typer.Option(..., "--model", "-m", help=_help(TrainRWRConfig, "model")),
    out: str = typer.Option("rwr", help=_help(TrainRWRConfig, "out")),
    judge: Optional[str] = typer.Option(None, help=_help(TrainRWRConfig, "judge")),
    reward: str = typer.Option("label", help=_help(TrainRWRConfig, "reward")),
    reg_weight: float = typer.Option(1.0, help=_help(TrainRWRConfig, "reg_weight")),
    uncond_prob: float = typer.Option(0.0, help=_help(TrainRWRConfig, "uncond_prob")),
    timestep_min: float = typer.Option(0.0, help=_help(TrainRWRConfig, "timestep_min")),
    ema_decay: float = typer.Option(0.0, help=_help(TrainRWRConfig, "ema_decay")),
    vae_latents: str = typer.Option("mode", help=_help(TrainRWRConfig, "vae_latents")),
    train_text_encoder: bool = typer.Option(False, help=_help(TrainRWRConfig, "train_text_encoder")),
    weight_decay: float = typer.Option(0.0, help=_help(TrainRWRConfig, "weight_decay")),
    temperature: Optional[float] = typer.Option(None, help=_help(TrainRWRConfig, "temperature")),
    min_reward: Optional[float] = typer.Option(None, help=_help(TrainRWRConfig, "min_reward")),
    anchor_weight: float = typer.Option(0.0, help=_help(TrainRWRConfig, "anchor_weight")),
    anchor_model: Optional[str] = typer.Option(None, help=_help(TrainRWRConfig, "anchor_model")),
    reg_images: Optional[Path] = typer.Option(None, help=_help(TrainRWRConfig, "reg_images")),
    split: Optional[str] = typer.Option(None, help=_help(TrainRWRConfig, "split")),
    images_model: Optional[str] = typer.Option(None, help=_help(TrainRWRConfig, "images_model")),
    lora_rank: int = typer.Option(8, help=_help(TrainRWRConfig, "lora_rank")),
    steps: int = typer.Option(200, help=_help(TrainRWRConfig, "steps")),
    batch_size: int = typer.Option(8, help=_help(TrainRWRConfig, "batch_size")),
    grad_accum: int = typer.Option(1, help=_help(TrainRWRConfig, "grad_accum")),
    lr: float = typer.Option(1e-4, help=_help(TrainRWRConfig, "lr")),
    mixed_precision: str = typer.Option("no", help=_help(TrainRWRConfig, "mixed_precision")),
    device: str = typer.Option("auto", help=_help(TrainRWRConfig, "device")),
    seed: int = typer.Option(0, help=_help(TrainRWRConfig, "seed")),
    checkpoint_every: int = typer.Option(50, help=_help(TrainRWRConfig, "checkpoint_every")),
    resume: bool = typer.Option(True, help=_help(TrainRWRConfig, "resume")),
    log_every: int = typer.Option(10, help=_help(TrainRWRConfig, "log_every")),
    progress: bool = typer.Option(True, help=_help(TrainRWRConfig, "progress")),
):
    """Lee et al.'s reward-weighted likelihood (+ pre-training regularizer) from the run's judgments."""
    cfg = build(TrainRWRConfig, "train rwr", **{k: v for k, v in locals().items()})
    _quiet_libraries()
    from . import train_rwr as stage
    from .training import NonFiniteLoss

    try:
        summary = stage.run(cfg)
    except NonFiniteLoss as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None
    typer.echo(stage.format_summary(summary, cfg))


from .config import ExportConfig, ImportLabelsConfig, PairsConfig, PublishConfig  # noqa: E402  (issue #5)


def _parse_map(items: list[str], example: str) -> dict[str, str]:
    out = {}
    for item in items:
        target, eq, source = item.partition("=")
        if not eq or not target.strip() or not source.strip():
            raise InputError(f"--map {item!r}: expected FIELD=COLUMN, e.g. {example}")
        out[target.strip()] = source.strip()
    return out


@app.command()
@user_errors
def pairs(
    run_dir: Path = typer.Argument(..., help=_help(PairsConfig, "run_dir")),
    source: str = typer.Option("judgments", "--source", help=_help(PairsConfig, "source")),
    judge: list[str] = typer.Option([], "--judge", "-j", help=_help(PairsConfig, "judges") + " (repeatable)"),
    mode: list[str] = typer.Option([], "--mode", help=_help(PairsConfig, "modes") + " (repeatable)"),
    combine: str = typer.Option("majority", help=_help(PairsConfig, "combine")),
    dedupe: bool = typer.Option(True, help=_help(PairsConfig, "dedupe")),
    orders: str = typer.Option("consistent", help=_help(PairsConfig, "orders")),
    pointwise_value: str = typer.Option("auto", help=_help(PairsConfig, "pointwise_value")),
    tie_policy: str = typer.Option("drop", help=_help(PairsConfig, "tie_policy")),
    min_margin: float = typer.Option(0.0, help=_help(PairsConfig, "min_margin")),
    max_pairs_per_prompt: Optional[int] = typer.Option(None, help=_help(PairsConfig, "max_pairs_per_prompt")),
    seed: int = typer.Option(0, help=_help(PairsConfig, "seed")),
    labels: bool = typer.Option(True, help=_help(PairsConfig, "labels")),
    augment: int = typer.Option(4, help=_help(PairsConfig, "augment")),
    split: Optional[str] = typer.Option(None, help=_help(PairsConfig, "split")),
    ensemble: Optional[str] = typer.Option(None, help=_help(PairsConfig, "ensemble")),
):
    """Judgments (or human labels) -> preference pairs, per-image labels and prompt augmentations."""
    cfg = build(PairsConfig, "pairs", run_dir=run_dir, source=source, judges=judge or None, modes=mode or None,
                split=split,
                combine=combine, dedupe=dedupe, orders=orders, pointwise_value=pointwise_value, tie_policy=tie_policy,
                min_margin=min_margin, max_pairs_per_prompt=max_pairs_per_prompt, seed=seed, labels=labels,
                augment=augment, ensemble=ensemble)
    from . import pairs as stage

    typer.echo(stage.format_summary(stage.run(cfg)))


@app.command("import-labels")
@user_errors
def import_labels(
    file: Path = typer.Argument(..., help=_help(ImportLabelsConfig, "file")),
    run_dir: Path = typer.Option(..., "--run", "--run-dir", help=_help(ImportLabelsConfig, "run_dir")),
    kind: str = typer.Option("auto", help=_help(ImportLabelsConfig, "kind")),
    map_: list[str] = typer.Option([], "--map", help=_help(ImportLabelsConfig, "column_map")),
    annotator: Optional[str] = typer.Option(None, help=_help(ImportLabelsConfig, "annotator")),
    suite: str = typer.Option("external", help=_help(ImportLabelsConfig, "suite")),
    prompts: bool = typer.Option(True, help=_help(ImportLabelsConfig, "prompts")),
):
    """Human or external ratings, choices or rankings (CSV/JSONL/Parquet) -> RUN/human_labels.parquet."""
    cfg = build(ImportLabelsConfig, "import-labels", file=file, run_dir=run_dir, kind=kind,
                column_map=_parse_map(map_, "image_ids=generations"), annotator=annotator, suite=suite,
                prompts=prompts)
    from . import labels as stage

    typer.echo(stage.format_summary(stage.run(cfg)))


@app.command()
@user_errors
def export(
    run_dir: Path = typer.Argument(..., help=_help(ExportConfig, "run_dir")),
    format_: str = typer.Option("hf", "--format", help=_help(ExportConfig, "format")),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help=_help(ExportConfig, "out")),
    source: list[str] = typer.Option([], "--source", help=_help(ExportConfig, "sources") + " (repeatable)"),
    license_: str = typer.Option("other", "--license", help=_help(ExportConfig, "license")),
    pretty_name: Optional[str] = typer.Option(None, help=_help(ExportConfig, "pretty_name")),
    jpeg_quality: int = typer.Option(95, help=_help(ExportConfig, "jpeg_quality")),
    max_shard_mb: float = typer.Option(500.0, help=_help(ExportConfig, "max_shard_mb")),
    seed: int = typer.Option(0, help=_help(ExportConfig, "seed")),
):
    """Preferences -> a Hugging Face dataset folder (Parquet shards + dataset card), hf or Pick-a-Pic layout."""
    cfg = build(ExportConfig, "export", run_dir=run_dir, format=format_, out=out, sources=source or None,
                license=license_, pretty_name=pretty_name, jpeg_quality=jpeg_quality, max_shard_mb=max_shard_mb,
                seed=seed)
    from . import export as stage

    typer.echo(stage.format_summary(stage.run(cfg)))


@app.command()
@user_errors
def publish(
    run_dir: Path = typer.Argument(..., help=_help(PublishConfig, "run_dir")),
    repo_id: str = typer.Option(..., "--repo-id", help=_help(PublishConfig, "repo_id")),
    private: bool = typer.Option(False, "--private", help=_help(PublishConfig, "private")),
    dry_run: bool = typer.Option(False, "--dry-run", help=_help(PublishConfig, "dry_run")),
    format_: str = typer.Option("hf", "--format", help=_help(PublishConfig, "format")),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help=_help(PublishConfig, "out")),
    license_: str = typer.Option("other", "--license", help=_help(PublishConfig, "license")),
    pretty_name: Optional[str] = typer.Option(None, help=_help(PublishConfig, "pretty_name")),
    token_env: str = typer.Option("HF_TOKEN", help=_help(PublishConfig, "token_env")),
    endpoint: Optional[str] = typer.Option(None, help=_help(PublishConfig, "endpoint")),
    commit_message: Optional[str] = typer.Option(None, help=_help(PublishConfig, "commit_message")),
):
    """Export the run's dataset and upload it to the Hugging Face Hub (re-publishing updates it)."""
    cfg = build(PublishConfig, "publish", run_dir=run_dir, repo_id=repo_id, private=private, dry_run=dry_run,
                format=format_, out=out, license=license_, pretty_name=pretty_name, token_env=token_env,
                endpoint=endpoint, commit_message=commit_message)
    from . import publish as stage

    typer.echo(stage.format_summary(stage.run(cfg)))


from .config import LabelConfig  # noqa: E402  (issue #9)


@app.command()
@user_errors
def label(
    run_dir: Path = typer.Argument(..., help=_help(LabelConfig, "run_dir")),
    mode: str = typer.Option("pointwise", help=_help(LabelConfig, "mode")),
    annotator: Optional[str] = typer.Option(None, help=_help(LabelConfig, "annotator")),
    host: str = typer.Option("127.0.0.1", help=_help(LabelConfig, "host")),
    port: int = typer.Option(8765, help=_help(LabelConfig, "port")),
    image_root: Optional[Path] = typer.Option(None, help=_help(LabelConfig, "image_root")),
    order: str = typer.Option("random", help=_help(LabelConfig, "order")),
    seed: int = typer.Option(0, help=_help(LabelConfig, "seed")),
    max_pairs_per_prompt: Optional[int] = typer.Option(None, help=_help(LabelConfig, "max_pairs_per_prompt")),
    token: Optional[str] = typer.Option(None, help=_help(LabelConfig, "token")),
    export_label_studio: Optional[Path] = typer.Option(None, help=_help(LabelConfig, "export_label_studio")),
    import_label_studio: Optional[Path] = typer.Option(None, help=_help(LabelConfig, "import_label_studio")),
):
    """Serve a local page to label the run's images by hand (keyboard shortcuts) -> RUN/human_labels.parquet."""
    cfg = build(LabelConfig, "label", run_dir=run_dir, mode=mode, annotator=annotator, host=host, port=port,
                image_root=image_root, order=order, seed=seed, max_pairs_per_prompt=max_pairs_per_prompt,
                token=token, export_label_studio=export_label_studio, import_label_studio=import_label_studio)
    from . import label_server as stage

    if export_label_studio is not None and import_label_studio is not None:
        raise InputError("give --export-label-studio or --import-label-studio, not both")
    if export_label_studio is not None:
        s = stage.export_label_studio(cfg, export_label_studio)
        typer.echo(f"wrote {s['tasks']} tasks ({s['annotations']} annotations) to {s['file']}; "
                   f"labeling config: {s['config']}")
        return
    if import_label_studio is not None:
        s = stage.import_label_studio(cfg, import_label_studio)
        typer.echo(f"read {s['labels']} labels of {len(s['annotators'])} annotators from {s['tasks']} tasks "
                   f"({s['cancelled']} cancelled); {s['written']} new or changed rows written")
        return
    summary = stage.run(cfg, echo=typer.echo)
    typer.echo(f"labels per annotator: {summary.get('annotators') or 'none'}")


from .config import EmbedConfig, TrainRewardConfig  # noqa: E402  (issue #6)


@app.command()
@user_errors
def embed(
    run_dir: Path = typer.Argument(..., help=_help(EmbedConfig, "run_dir")),
    clip: str = typer.Option(..., "--clip", help=_help(EmbedConfig, "clip")),
    device: str = typer.Option("cpu", help=_help(EmbedConfig, "device")),
    batch_size: int = typer.Option(256, help=_help(EmbedConfig, "batch_size")),
):
    """Cache CLIP embeddings of the run's images and prompts in RUN/embeddings.parquet (only new ones)."""
    cfg = build(EmbedConfig, "embed", **{k: v for k, v in locals().items()})
    _quiet_libraries()
    from . import embeddings as stage

    typer.echo(stage.format_summary(stage.run(cfg), cfg))


@train_app.command("reward")
@user_errors
def train_reward(
    run_dir: Path = typer.Argument(..., help=_help(TrainRewardConfig, "run_dir")),
    clip: str = typer.Option(..., "--clip", help=_help(TrainRewardConfig, "clip")),
    out: str = typer.Option("reward", help=_help(TrainRewardConfig, "out")),
    objective: str = typer.Option("mse", help=_help(TrainRewardConfig, "objective")),
    aux_weight: float = typer.Option(0.1, help=_help(TrainRewardConfig, "aux_weight")),
    temperature: float = typer.Option(0.1, help=_help(TrainRewardConfig, "temperature")),
    val_split: Optional[str] = typer.Option("heldout", help=_help(TrainRewardConfig, "val_split")),
    val_fraction: float = typer.Option(0.2, help=_help(TrainRewardConfig, "val_fraction")),
    hidden: list[int] = typer.Option([256, 64], help=_help(TrainRewardConfig, "hidden") + " (repeatable)"),
    dropout: float = typer.Option(0.1, help=_help(TrainRewardConfig, "dropout")),
    steps: int = typer.Option(2000, help=_help(TrainRewardConfig, "steps")),
    batch_size: int = typer.Option(256, help=_help(TrainRewardConfig, "batch_size")),
    lr: float = typer.Option(1e-3, help=_help(TrainRewardConfig, "lr")),
    weight_decay: float = typer.Option(1e-4, help=_help(TrainRewardConfig, "weight_decay")),
    eval_every: int = typer.Option(100, help=_help(TrainRewardConfig, "eval_every")),
    seed: int = typer.Option(0, help=_help(TrainRewardConfig, "seed")),
    device: str = typer.Option("cpu", help=_help(TrainRewardConfig, "device")),
):
    """A reward model on frozen CLIP embeddings: Lee et al.'s MSE + prompt classification, or Bradley-Terry."""
    cfg = build(TrainRewardConfig, "train reward", **{k: v for k, v in locals().items()})
    _quiet_libraries()
    from . import reward as stage

    typer.echo(stage.format_summary(stage.run(cfg), cfg))


def main() -> None:  # console-script entry point
    app(prog_name="autofeedback")


if __name__ == "__main__":
    sys.exit(main())

