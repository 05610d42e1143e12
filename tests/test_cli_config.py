"""Every field of every stage config is reachable from the CLI and from a pipeline YAML (issue #23 item 2).

The commands' options are generated from the configs (config.STAGES); these tests keep it that way."""

import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

from autofeedback import cli, run
from autofeedback.config import STAGES, STEP_CONFIGS

from .conftest import REPO

# fields not set from a pipeline step's YAML, with the reason
YAML_EXCLUDED = {"run_dir": "filled in from the pipeline's run_dir (or run --run-dir)"}
# stages that are not pipeline steps, with the reason (their fields are reachable from the CLI only)
NOT_PIPELINE_STEPS = {"import_labels": "reads a file given on the command line; its output is a run's input",
                      "export": "writes a dataset outside the run's tables",
                      "publish": "uploads to the Hub",
                      "label": "an interactive web server"}
# values for required fields in the YAML test
REQUIRED = {"model": "some/model", "prompts": "shapes", "clip": "some/clip", "repo_id": "me/data", "file": "x.csv"}


def _command(stage: str):
    cmd = typer.main.get_command(cli.app)
    for name in STAGES[stage].command:
        cmd = cmd.commands[name]
    return cmd


def _expected_default(stage: str, field: str):
    info = STAGES[stage].config.model_fields[field]
    if info.is_required():
        return None
    value = info.get_default(call_default_factory=True)
    if isinstance(value, dict):  # a mapping is given as repeated NAME=VALUE
        value = [f"{k}={v}" for k, v in value.items()]
    if (stage, field) in cli.REPEATED:  # one judge per config, several on one command line
        value = [value]
    return value


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_config_field_is_a_flag_with_the_models_default(stage):
    params = {p.name: p for p in _command(stage).params}
    fields = STAGES[stage].config.model_fields
    missing = [f for f in fields if f not in params]
    assert not missing, f"{stage}: fields without a flag: {missing}"
    for field, info in fields.items():
        param = params[field]
        default = list(param.default) if isinstance(param.default, tuple) else param.default
        assert param.required == info.is_required(), (stage, field)
        assert default == _expected_default(stage, field), (stage, field, default)
        assert (info.description or "") in (getattr(param, "help", None) or ""), (stage, field)
    extra = [name for name in params if name not in fields and name != "help"]
    assert not extra, f"{stage}: flags that are not config fields: {extra}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_config_field_is_a_pipeline_yaml_key(stage, tmp_path):
    if stage in NOT_PIPELINE_STEPS:
        assert stage not in STEP_CONFIGS
        return
    cls = STAGES[stage].config
    settings = {}
    for field, info in cls.model_fields.items():
        if field in YAML_EXCLUDED:
            continue
        value = REQUIRED[field] if info.is_required() else info.get_default(call_default_factory=True)
        settings[field] = str(value) if isinstance(value, Path) else value
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"run_dir": "run", "steps": [{stage: settings}]}))
    _pipe, _run_dir, configs = run.load_pipeline(pipeline)
    ((name, cfg),) = configs
    assert name == stage and type(cfg) is cls
    assert set(settings) | set(YAML_EXCLUDED) == set(cls.model_fields)


def test_one_registry():
    assert set(STEP_CONFIGS) == {n for n in STAGES if n not in NOT_PIPELINE_STEPS}
    assert run.STAGE_MODULES == {n: STAGES[n].module for n in STEP_CONFIGS}
    root = typer.main.get_command(cli.app)
    stage_commands = {" ".join(s.command) for s in STAGES.values()}
    all_commands = {f"{g} {c}" if hasattr(root.commands[g], "commands") else g
                    for g in root.commands for c in getattr(root.commands[g], "commands", [g])}
    assert all_commands - stage_commands == {"run", "serve-checker", "serve-vlm"}  # the hand-written ones


def test_mappings_are_parsed_by_the_configs_for_yaml_and_cli_alike():
    from autofeedback.config import EvalConfig, ImportLabelsConfig

    a = EvalConfig(run_dir="r", judge_cost=["gpt-4o=1.25"], models="a,b", ensemble=["zmean,all"])
    assert a.judge_cost == {"gpt-4o": 1.25} and a.models == ["a", "b"]
    assert a.ensemble == ["zmean", "rankmean", "vote", "learned", "logistic"]
    assert EvalConfig(run_dir="r", judge_cost={"x": 2}).judge_cost == {"x": 2.0}
    assert ImportLabelsConfig(file="f", run_dir="r", column_map=["image_ids=generations"]).column_map == {
        "image_ids": "generations"}
    with pytest.raises(ValueError, match="--judge-cost 'x': expected NAME=USD"):
        EvalConfig(run_dir="r", judge_cost=["x"])


def test_importing_the_cli_imports_no_torch():
    code = ("import autofeedback.cli, sys\nfrom typer.testing import CliRunner\n"
            "r = CliRunner().invoke(autofeedback.cli.app, ['train', 'dpo', '--help'])\nassert r.exit_code == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
