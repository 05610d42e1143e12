"""Prompt-suite hooks: a suite's own VQA questions and prompt perturbations reach judge (vqa) and pairs (augment)."""

import hashlib
import json
import shutil

import pyarrow as pa
import pytest

from autofeedback import judge, pairs, suites, tables
from autofeedback.config import JudgeConfig, PairsConfig
from autofeedback.shapes.demo import make_rendered_run
from autofeedback.shapes.suite import suite_records


def _h(x) -> str:
    return hashlib.sha256(json.dumps(x).encode()).hexdigest()[:16]


def _relabel_suite(run_dir, suite: str) -> None:
    """Give every prompt of the run another suite name (prompt_ids stay: images keep pointing at them)."""
    path = tables.table_path(run_dir, "prompts")
    t = tables.read(path, "prompts")
    t = t.set_column(t.column_names.index("suite"), "suite", pa.array([suite] * t.num_rows, pa.string()))
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    tables.append(path, t, "prompts")


def _count_questions(prompt, meta):
    return [{"question": "How many shapes are in the image?", "answer": str(meta["count"])},
            {"question": "What color is the background?", "answer": meta["background"],
             "choices": ["red", "green", "blue", "yellow"]}]


def _night_and_day(prompt, meta, vocab):
    return [(prompt + " at night", "time"), (prompt + " at noon", "time"), ("upside down " + prompt, "pose")]


@pytest.fixture
def mysuite():
    suites.register("mysuite", suites.SuiteHooks(vqa_questions=_count_questions, perturbations=_night_and_day))
    suites.register("noaug", suites.SuiteHooks(vqa_questions=_count_questions, perturbations=None))
    yield
    suites.unregister("mysuite")
    suites.unregister("noaug")


def test_shapes_suite_output_is_unchanged():
    """Hashes taken before the hooks existed (pairs.perturbations / judge.vqa_questions hard-coded the shapes world)."""
    recs = suite_records()
    p = [pairs.perturbations(r["prompt"], r["metadata"], "shapes", {}) for r in recs]
    q = [judge.vqa_questions(r["prompt"], r["metadata"], "shapes") for r in recs]
    assert (len(recs), _h(p), _h(q)) == (360, "06b7c3a70320924e", "1ebd5b56bf45a4cd")
    assert q[0] == [("How many shapes are in the image?", "1"), ("What color are the shapes?", "red"),
                    ("What shape are they?", "circle"), ("What color is the background?", "green")]


def test_shapes_augmentations_table_is_unchanged(tmp_path):
    run_dir = make_rendered_run(tmp_path / "run", n_prompts=6, per_prompt=2, seed=3)
    judge.run(JudgeConfig(run_dir=run_dir, judge="shapes"))
    pairs.run(PairsConfig(run_dir=run_dir))
    a = tables.read(tables.table_path(run_dir, "augmentations"), "augmentations").sort_by("aug_id")
    rows = [{k: v for k, v in r.items() if k != "created_at"} for r in a.to_pylist()]
    assert (len(rows), _h(rows)) == (12, "7abed29a6d5e6242")


def test_default_suite_reads_explicit_questions_with_choices():
    meta = {"questions": [{"question": "Is there a dog?", "answer": "yes", "choices": ["yes", "no"]},
                          ["How many dogs?", 2], {"no": "question"}]}
    assert suites.vqa_questions("geneval", "a dog", meta) == [("Is there a dog? (choices: yes, no)", "yes"),
                                                              ("How many dogs?", "2")]
    assert suites.vqa_questions(None, "a dog", {"count": 2}) == []
    # shapes metadata under another suite name is not the shapes world: no hard-coded questions
    assert judge.vqa_questions("two red circles", {"count": 2, "color": "red", "shape": "circle",
                                                   "background": "blue"}) == []


def test_user_suite_questions_drive_judge_vqa(shapes_run, server, mysuite):
    _relabel_suite(shapes_run, "mysuite")
    s = judge.run(JudgeConfig(run_dir=shapes_run, judge="openai:shapes-checker", base_url=server.base_url,
                              timeout=1.0, max_retries=2, concurrency=8, mode="vqa"))
    assert s["status"] == {"ok": 24}
    rows = tables.read(tables.table_path(shapes_run, "judgments"), "judgments").to_pylist()
    assert len(rows) == 24
    for r in rows:
        assert [a["question"] for a in r["answers"]] == [
            "How many shapes are in the image?",
            "What color is the background? (choices: red, green, blue, yellow)"]
    assert any(r["score"] == 1.0 for r in rows)


def test_unregistered_suite_without_questions_is_an_error_row(shapes_run, server):
    _relabel_suite(shapes_run, "nobody")
    s = judge.run(JudgeConfig(run_dir=shapes_run, judge="openai:shapes-checker", base_url=server.base_url,
                              timeout=1.0, max_retries=2, mode="vqa", limit=2))
    rows = tables.read(tables.table_path(shapes_run, "judgments"), "judgments").to_pylist()
    assert s["status"] == {"error": 2} and "suite 'nobody'" in rows[0]["error"]


def test_user_suite_perturbations_drive_pairs_augment(shapes_run, mysuite):
    _relabel_suite(shapes_run, "mysuite")
    judge.run(JudgeConfig(run_dir=shapes_run, judge="shapes"))
    s = pairs.run(PairsConfig(run_dir=shapes_run, augment=3))
    aug = tables.read(tables.table_path(shapes_run, "augmentations"), "augmentations").to_pylist()
    assert s["augmentations"] == len(aug) == 24
    for r in aug:
        assert len(r["perturbed"]) == 2 and set(r["changed"]) == {"time", "pose"}  # round-robin over fields
        assert all(p.endswith((" at night", " at noon")) or p == "upside down " + r["prompt"] for p in r["perturbed"])


def test_suite_without_perturbations_says_so(shapes_run, mysuite):
    _relabel_suite(shapes_run, "noaug")
    judge.run(JudgeConfig(run_dir=shapes_run, judge="shapes"))
    cfg = PairsConfig(run_dir=shapes_run, augment=3)
    s = pairs.run(cfg)
    assert s["augmentations"] == 0 and s["augmentations_unsupported"] == {"noaug": 24}
    text = pairs.format_summary(s, cfg)
    assert "suite 'noaug' has no perturbations" in text and "24 images without augmentations" in text


def test_hooks_load_lazily_and_bad_specs_are_clear():
    suites.register("broken", "autofeedback.nothing_here:HOOKS")
    try:
        from autofeedback.errors import InputError

        with pytest.raises(InputError, match="suite 'broken': cannot load"):
            suites.get("broken")
    finally:
        suites.unregister("broken")
    assert suites.get("shapes").perturbations is not None and suites.get(None) is suites.DEFAULT
