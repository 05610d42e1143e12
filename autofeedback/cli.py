"""The `autofeedback` command. Thin: parse flags -> stage config -> lazy import of the stage -> run.

Each stage's options are generated from its pydantic config (config.STAGES): one flag per field, named
--field-name unless FLAGS keeps an older name, with the model's default and its Field description as help.

Nothing heavy (torch, diffusers, pandas) is imported here, so `autofeedback --help` is instant.
Errors a user can fix (InputError) print one line and exit with code 2.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import types
from pathlib import Path
from typing import Literal, Optional, Union, get_args, get_origin

import typer

from .config import STAGES, build
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


train_app = typer.Typer(help="Train on the run's feedback: Diffusion-DPO (dpo), reward-weighted likelihood (rwr), "
                              "a reward model (reward); or online RL with any judge as the reward (grpo).",
                         no_args_is_help=True)
app.add_typer(train_app, name="train")
GROUPS = {"train": train_app}

# field -> flag names where they are not --field-name (kept as they were: the README, docs and tests use them)
FLAGS = {
    "generate": {"run_dir": ("--out", "--run-dir", "-o"), "model": ("--model", "-m"), "prompts": ("--prompts", "-p"),
                 "images_per_prompt": ("--images-per-prompt", "-n")},
    "judge": {"judge": ("--judge", "-j")},
    "pairs": {"judges": ("--judge", "-j"), "modes": ("--mode",)},
    "train_dpo": {"model": ("--model", "-m")},
    "train_rwr": {"model": ("--model", "-m")},
    "train_grpo": {"model": ("--model", "-m"), "prompts": ("--prompts", "-p")},
    "eval": {"column_map": ("--map",), "judge": ("--judge", "-j"), "ensemble_judges": ("--ensemble-judge",)},
    "import_labels": {"run_dir": ("--run", "--run-dir"), "column_map": ("--map",)},
    "export": {"out": ("--out", "-o"), "sources": ("--source",)},
    "publish": {"out": ("--out", "-o")},
}
ARGUMENTS = {"generate": (), "import_labels": ("file",)}  # positional fields; the others' is run_dir
REPEATED = {("judge", "judge")}  # one value in the config, repeatable on the command line (one config each)
MORE_HELP = {("judge", "judge"): " (repeatable: the judges run one after another, each keeps its own rows; "
                                 "--max-cost applies to each)",
             ("eval", "ensemble"): " (or comma-separated; 'all' = every method)",
             ("eval", "models"): " (or comma-separated)"}


def _cli_type(annotation) -> tuple[object, str | None]:
    """A field's annotation -> (the type typer parses, a metavar listing a Literal's choices).

    Values are checked by the config, not by click, so a bad one is the config's one-line error."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        if any(get_origin(a) in (list, dict) for a in kinds):  # list | None, dict | list: repeated strings
            return _cli_type(next(a for a in kinds if get_origin(a) in (list, dict)))
        inner, metavar = _cli_type(kinds[0])
        return Optional[inner], metavar
    if origin is dict:
        return list[str], "NAME=VALUE"
    if origin is list:
        inner, metavar = _cli_type(args[0])
        return list[inner], metavar
    if origin is Literal:
        return str, "[" + "|".join(map(str, args)) + "]"
    return annotation, None


def cli_default(stage: str, field: str):
    """The default a field's flag shows and passes: the model's (a mapping as NAME=VALUE items)."""
    info = STAGES[stage].config.model_fields[field]
    if info.is_required():
        return ...
    value = info.get_default(call_default_factory=True)
    if isinstance(value, dict):
        value = [f"{k}={v}" for k, v in value.items()]
    return [value] if (stage, field) in REPEATED else value


def _parameters(stage: str) -> list[inspect.Parameter]:
    cls = STAGES[stage].config
    positional = ARGUMENTS.get(stage, ("run_dir",))
    params = []
    for field in [*positional, *(f for f in cls.model_fields if f not in positional)]:
        info = cls.model_fields[field]
        tp, metavar = _cli_type(info.annotation)
        if (stage, field) in REPEATED:
            tp = list[tp]
        help_ = (info.description or "") + MORE_HELP.get((stage, field), "")
        if get_origin(tp) is list and (stage, field) not in MORE_HELP and "repeatable" not in help_:
            help_ += " (repeatable)"
        if field in positional:
            default = typer.Argument(cli_default(stage, field), help=help_)
        else:
            flags = FLAGS.get(stage, {}).get(field, ())
            default = typer.Option(cli_default(stage, field), *flags, help=help_, metavar=metavar)
        params.append(inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=tp))
    return params


def stage_command(stage: str, help: str, run=None):
    """Register the command of a stage (config.STAGES) with options generated from its config; `run(stage, values)`
    runs it (default: build the config, run the stage's module, print its format_summary)."""
    spec = STAGES[stage]
    fields = spec.config.model_fields

    def command(**values):
        for name, value in values.items():
            if isinstance(value, (list, tuple)) and not value and fields[name].default is None:
                values[name] = None  # a repeatable flag not given: the model's default (None)
        (run or _run)(stage, values)

    command.__signature__ = inspect.Signature(_parameters(stage))
    command.__name__ = stage
    *group, name = spec.command
    (GROUPS[group[0]] if group else app).command(name, help=help)(user_errors(command))


def _config(stage: str, values: dict):
    return build(STAGES[stage].config, " ".join(STAGES[stage].command), **values)


def _run(stage: str, values: dict) -> None:
    cfg = _config(stage, values)
    _quiet_libraries()
    module = importlib.import_module(STAGES[stage].module)
    typer.echo(module.format_summary(module.run(cfg), cfg))


def _run_training(stage: str, values: dict) -> None:
    """A trainer; a non-finite loss exits with code 3."""
    cfg = _config(stage, values)
    _quiet_libraries()
    module = importlib.import_module(STAGES[stage].module)
    from .training import NonFiniteLoss

    try:
        summary = module.run(cfg)
    except NonFiniteLoss as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None
    typer.echo(module.format_summary(summary, cfg))


def _run_judges(stage: str, values: dict) -> None:
    names = list(dict.fromkeys(values.pop("judge") or ["shapes"]))
    cfgs = [_config(stage, {**values, "judge": name}) for name in names]  # check every judge first
    _quiet_libraries()
    from . import judge as module

    for cfg in cfgs:
        typer.echo(module.format_summary(module.run(cfg), cfg))


def _run_eval(stage: str, values: dict) -> None:
    cfg = _config(stage, values)
    from .eval import stage

    stage.run(cfg, echo=typer.echo)  # prints its tables as it goes


def _run_label(stage: str, values: dict) -> None:
    cfg = _config(stage, values)
    from . import label_server as module
    from . import label_studio

    if cfg.export_label_studio is not None and cfg.import_label_studio is not None:
        raise InputError("give --export-label-studio or --import-label-studio, not both")
    if cfg.export_label_studio is not None:
        s = label_studio.export_label_studio(cfg, cfg.export_label_studio)
        typer.echo(f"wrote {s['tasks']} tasks ({s['annotations']} annotations) to {s['file']}; "
                   f"labeling config: {s['config']}")
        return
    if cfg.import_label_studio is not None:
        s = label_studio.import_label_studio(cfg, cfg.import_label_studio)
        typer.echo(f"read {s['labels']} labels of {len(s['annotators'])} annotators from {s['tasks']} tasks "
                   f"({s['cancelled']} cancelled); {s['written']} new or changed rows written")
        return
    summary = module.run(cfg, echo=typer.echo)
    typer.echo(f"labels per annotator: {summary.get('annotators') or 'none'}")


stage_command("generate", "Prompts -> images (RUN/images.parquet) with any diffusers text-to-image pipeline.")
stage_command("judge", "Images -> judgments (RUN/judgments.parquet): the shapes checker, or any OpenAI-compatible "
                       "VLM.", _run_judges)
stage_command("pairs", "Judgments (or human labels) -> preference pairs, per-image labels and prompt augmentations.")
stage_command("import_labels", "Human or external ratings, choices or rankings (CSV/JSONL/Parquet) -> "
                               "RUN/human_labels.parquet.")
stage_command("eval", "Agreement of judges with human labels + model before/after -> "
                      "RUN/report/{metrics.json,report.html}.", _run_eval)
stage_command("export", "Preferences -> a Hugging Face dataset folder (Parquet shards + dataset card), hf or "
                        "Pick-a-Pic layout.")
stage_command("publish", "Export the run's dataset and upload it to the Hugging Face Hub (re-publishing updates it).")
stage_command("label", "Serve a local page to label the run's images by hand (keyboard shortcuts) -> "
                       "RUN/human_labels.parquet.", _run_label)
stage_command("embed", "Cache CLIP embeddings of the run's images and prompts in RUN/embeddings.parquet (only new "
                       "ones).")
stage_command("train_dpo", "Diffusion-DPO on the pipeline's UNet from RUN/preferences.parquet (LoRA or full; "
                           "accelerate-ready).", _run_training)
stage_command("train_rwr", "Lee et al.'s reward-weighted likelihood (+ pre-training regularizer) from the run's "
                           "judgments.", _run_training)
stage_command("train_grpo", "Online RL (GRPO): groups of samples per prompt, rewarded by any judges (checker, CLIP, "
                            "reward model, OpenAI-protocol VLM) while sampling; clipped ratio + KL; a held-out gold "
                            "judge.", _run_training)
stage_command("train_reward", "A reward model on frozen CLIP embeddings: Lee et al.'s MSE + prompt classification, "
                              "or Bradley-Terry.")


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


@app.command("serve-vlm")
@user_errors
def serve_vlm(
    model: Path = typer.Option(Path("data/models/shapes-vlm"), help="a LLaVA-style transformers folder with a chat "
                                                                      "template (e.g. data/models/shapes-vlm)"),
    port: int = typer.Option(8000, help="port on 127.0.0.1"),
    max_batch: int = typer.Option(32, min=1, help="most requests generated together in one batch"),
    batch_wait_ms: float = typer.Option(10.0, min=0, help="how long a batch waits for more requests after its first"),
    threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads (default: torch's)"),
    model_name: Optional[str] = typer.Option(None, help="the model id /v1/models lists (default: the folder name)"),
):
    """A local OpenAI-protocol chat-completions server running a VLM with transformers (batched; loopback only)."""
    if not (model / "config.json").exists():
        raise InputError(f"--model {model}: not a model folder (no config.json); build the shapes VLM with "
                         f"python -m autofeedback.shapes.vlm_recipe --out {model}")
    from .judges.vlm_server import serve

    serve(str(model), port=port, max_batch=max_batch, batch_wait_ms=batch_wait_ms, threads=threads,
          model_name=model_name)


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


def main() -> None:  # console-script entry point
    app(prog_name="autofeedback")


if __name__ == "__main__":
    sys.exit(main())

