"""Bad inputs: one line naming the problem, exit code != 0, nothing written, nothing lost."""

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autofeedback import tables
from autofeedback.shapes.demo import make_rendered_run

from .conftest import cli


def _one_error_line(proc):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_help_lists_stages_without_importing_torch():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom autofeedback.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "print(r.output)\nprint('HEAVY', [m for m in ('torch', 'diffusers', 'pandas') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for stage in ("generate", "judge", "run"):
        assert stage in out
    assert "HEAVY []" in out


def test_empty_prompts_file(tmp_path, tiny_model):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    run_dir = tmp_path / "run"
    line = _one_error_line(cli("generate", "--out", run_dir, "--model", tiny_model, "--prompts", empty))
    assert "empty.jsonl" in line and "no prompts" in line
    assert not run_dir.exists()


def test_prompts_parquet_missing_a_column(tmp_path, tiny_model):
    bad = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt_id": ["a"], "prompt": ["one red circle on a blue background"]}), bad)
    line = _one_error_line(cli("generate", "--out", tmp_path / "run", "--model", tiny_model, "--prompts", bad))
    assert "prompts.parquet" in line and "missing column 'suite'" in line and "expected string" in line
    assert not (tmp_path / "run").exists()


def test_images_table_missing_a_column_for_judge(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "images.parquet").mkdir(parents=True)
    pq.write_table(pa.table({"image_id": ["a"], "prompt_id": ["p"], "prompt": ["x"]}),
                   run_dir / "images.parquet" / "part-0.parquet")
    line = _one_error_line(cli("judge", run_dir))
    assert "missing column 'image'" in line and "part-0.parquet" in line
    assert not (run_dir / "judgments.parquet").exists()


def test_unknown_model_path(tmp_path):
    line = _one_error_line(cli("generate", "--out", tmp_path / "run", "--model", tmp_path / "no-such-model",
                               "--prompts", "shapes"))
    assert "model path not found" in line and "no-such-model" in line
    assert not (tmp_path / "run").exists()


def test_shipped_models_missing_outside_a_clone_say_where_they_live(tmp_path):
    """data/models/ is a repository file, not package data: an installed CLI run elsewhere says so in one line."""
    make_rendered_run(tmp_path / "run", n_prompts=1, per_prompt=1)
    for args in (("generate", "--out", "new", "--model", "data/models/shapes-tiny", "--prompts", "shapes"),
                 ("embed", "run", "--clip", "data/models/shapes-clip"),
                 ("judge", "run", "--judge", "clip:data/models/shapes-clip")):
        line = _one_error_line(cli(*args, cwd=tmp_path))
        assert "path not found: data/models/shapes-" in line and "repository file" in line, line
    assert not (tmp_path / "new").exists()


def test_folder_that_is_not_a_pipeline(tmp_path):
    line = _one_error_line(cli("generate", "--out", tmp_path / "run", "--model", tmp_path, "--prompts", "shapes"))
    assert "no model_index.json" in line


def test_negative_image_count(tmp_path, tiny_model):
    line = _one_error_line(cli("generate", "--out", tmp_path / "run", "--model", tiny_model, "--prompts", "shapes",
                               "--images-per-prompt", "-3"))
    assert "images_per_prompt" in line and "-3" in line
    assert not (tmp_path / "run").exists()


def test_unknown_judge_and_missing_run(tmp_path):
    assert "no images table" in _one_error_line(cli("judge", tmp_path / "nothing"))
    assert "unknown judge 'gpt'" in _one_error_line(cli("judge", tmp_path, "--judge", "gpt"))


def test_bad_pipeline_yaml(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("run_dir: x\nsteps:\n  - generate: {model: m, prompts: shapes, images_per_prompt: 2, colour: red}\n")
    line = _one_error_line(cli("run", bad))
    assert "colour" in line and "Extra inputs are not permitted" in line
    assert "pipeline file not found" in _one_error_line(cli("run", tmp_path / "nope.yaml"))


@pytest.mark.parametrize("content,needle", [
    ('{"prompt": "ok"}\n{not json\n', ":2: not valid JSON"),
    ('{"text": "no prompt field"}\n', "missing or empty 'prompt' field"),
])
def test_malformed_prompt_files(tmp_path, tiny_model, content, needle):
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    assert needle in _one_error_line(cli("generate", "--out", tmp_path / "run", "--model", tiny_model,
                                         "--prompts", f))


def test_a_failed_run_loses_nothing(tmp_path, tiny_model):
    """A bad second invocation leaves the existing table exactly as it was."""
    run_dir = tmp_path / "run"
    ok = cli("generate", "--out", run_dir, "--model", tiny_model, "--prompts", "shapes", "--limit", "2", "-n", "1",
             "--steps", "2", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    before = tables.read(run_dir / "images.parquet", "images")
    _one_error_line(cli("generate", "--out", run_dir, "--model", tmp_path / "missing", "--prompts", "shapes"))
    assert tables.read(run_dir / "images.parquet", "images").equals(before)
