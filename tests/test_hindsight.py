"""Hindsight relabeling (`train rwr --hindsight`, #18): the shapes judge's captions, and which rejected samples are
learned from under them, on hand-built runs of rendered scenes (exact expected values). A caption is learned under
only when it is one of the run's prompts of the training split."""

import io
import json
import shutil

import pytest

from autofeedback import judge, tables, train_rwr
from autofeedback.config import JudgeConfig, TrainRWRConfig
from autofeedback.errors import InputError
from autofeedback.judges.shapes import ShapesJudge
from autofeedback.shapes.world import Scene, parse_prompt, render

ASKED = "two red squares on a blue background"      # the train prompt every image was drawn for
FOUR = "four red squares on a blue background"      # train prompts the samples may show
CIRCLES = "four red circles on a blue background"
HELDOUT = "three red squares on a blue background"  # a held-out prompt


def _png(prompt: str, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    render(parse_prompt(prompt), seed=seed).save(buf, format="PNG")
    return buf.getvalue()


def _run(tmp_path, shows: dict[str, str], heldout_in_table: bool = True):
    """A run whose images were all drawn for ASKED; each image shows the scene named in `shows`. Without
    heldout_in_table the run's prompts table holds the train prompts only, as the main job's does when it trains
    (its held-out prompts are drawn after training)."""
    run_dir = tmp_path / "run"
    prompts = []
    for text, split in ((ASKED, "train"), (FOUR, "train"), (CIRCLES, "train"), (HELDOUT, "heldout"))[
            :None if heldout_in_table else 3]:
        prompts.append({"prompt_id": tables.prompt_id("shapes", text), "prompt": text, "split": split,
                        "suite": "shapes", "category": "count",
                        "metadata": json.dumps(parse_prompt(text).metadata())})
    pid = prompts[0]["prompt_id"]
    images = [{"image_id": name, "prompt_id": pid, "prompt": ASKED, "model": "renderer", "seed": k, "steps": 0,
               "guidance": 0.0, "height": 32, "width": 32, "sampler": None, "lora": None,
               "image": {"bytes": _png(scene, k), "path": f"{name}.png"}, "created_at": tables.now()}
              for k, (name, scene) in enumerate(shows.items())]
    tables.append(tables.table_path(run_dir, "prompts"), prompts, "prompts")
    tables.append(tables.table_path(run_dir, "images"), images, "images")
    judge.run(JudgeConfig(run_dir=run_dir, judge="shapes"))
    return run_dir


SHOWS = {
    "right": ASKED,                                          # aligned: kept under its prompt
    "count": FOUR,                                           # only the count wrong: relabeled
    "heldout": HELDOUT,                                      # only the count wrong, but that is a held-out prompt
    "color": "two green squares on a blue background",       # the color wrong
    "count+shape": CIRCLES,                                  # the count and the shape wrong
    "off-suite": "four red squares on a green background",   # only the count wrong, but no prompt of the run
}


def _cfg(run_dir, **kw):
    return TrainRWRConfig(run_dir=run_dir, model="unused", split="train", reward="label", min_reward=1, **kw)


def test_the_shapes_judge_captions_what_the_image_shows():
    j = ShapesJudge()
    row = j.judge_one({"prompt": ASKED, "images": [_png(FOUR)]})
    assert row["label"] is False and row["caption"] == FOUR
    assert [a["question"] for a in row["answers"] if not a["correct"]] == ["count"]
    assert j.judge_one({"prompt": ASKED, "images": [_png(ASKED)]})["caption"] == ASKED
    assert j.judge_one({"prompt": "one red circle on a blue background",
                        "images": [_png("one red circle on a blue background")]})["caption"] == \
        "one red circle on a blue background"  # singular noun, as the world words it
    blank = io.BytesIO()
    render(Scene(1, "red", "square", "blue"), seed=0).convert("L").convert("RGB").save(blank, format="PNG")
    assert j.judge_one({"prompt": ASKED, "images": [blank.getvalue()]})["caption"] is None  # unreadable colors


def test_hindsight_relabels_only_samples_wrong_in_the_named_concepts(tmp_path):
    run_dir = _run(tmp_path, SHOWS)
    plain = train_rwr.load_rewards(_cfg(run_dir))
    assert [(x["image_id"], x["prompt"]) for x in plain] == [("right", ASKED)]
    got = {x["image_id"]: (x["prompt"], x["reward"], x.get("hindsight", False))
           for x in train_rwr.load_rewards(_cfg(run_dir, hindsight=["count"]))}
    assert got == {"right": (ASKED, 1.0, False), "count": (FOUR, 1.0, True)}
    got = {x["image_id"]: x["prompt"] for x in train_rwr.load_rewards(_cfg(run_dir, hindsight=["count", "shape"]))}
    assert got == {"right": ASKED, "count": FOUR, "count+shape": CIRCLES}
    # without a split, any prompt of the run is a caption to learn under
    got = {x["image_id"]: x["prompt"] for x in train_rwr.load_rewards(
        TrainRWRConfig(run_dir=run_dir, model="unused", reward="label", min_reward=1, hindsight=["count"]))}
    assert got == {"right": ASKED, "count": FOUR, "heldout": HELDOUT}


def test_a_heldout_caption_is_not_learned_before_the_heldout_prompts_are_in_the_run(tmp_path):
    """The main job trains before it draws the held-out prompts, so its prompts table does not list them yet: a
    sample that shows a held-out scene must still not be learned under that prompt's text."""
    run_dir = _run(tmp_path, SHOWS, heldout_in_table=False)
    got = {x["image_id"]: x["prompt"] for x in train_rwr.load_rewards(_cfg(run_dir, hindsight=["count"]))}
    assert got == {"right": ASKED, "count": FOUR}


def test_hindsight_errors_say_what_is_missing(tmp_path):
    run_dir = _run(tmp_path, {"right": ASKED, "count": FOUR})
    with pytest.raises(InputError, match="needs --reward label"):
        train_rwr.load_rewards(TrainRWRConfig(run_dir=run_dir, model="unused", reward="score", hindsight=["count"]))
    with pytest.raises(InputError, match="answers no such question.*background, color, count, shape"):
        train_rwr.load_rewards(_cfg(run_dir, hindsight=["colour"]))
    # judgments without captions (a judge that does not describe images, or rows written before it did)
    path = tables.table_path(run_dir, "judgments")
    rows = tables.read(path, "judgments").to_pylist()
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    tables.append(path, [{**r, "caption": None} for r in rows], "judgments")
    with pytest.raises(InputError, match="wrote no captions"):
        train_rwr.load_rewards(_cfg(run_dir, hindsight=["count"]))
    # several judges: which one's captions and answers is ambiguous
    tables.append(path, [{**r, "judge": "other", "request_id": r["request_id"] + "x"} for r in rows], "judgments")
    with pytest.raises(InputError, match="several judges"):
        train_rwr.load_rewards(_cfg(run_dir, hindsight=["count"]))
