"""Hindsight relabeling (`train rwr --hindsight`, #18): the shapes judge's captions, and which rejected samples are
learned from under them, on hand-built runs of rendered scenes (exact expected values)."""

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
HELDOUT = "three red squares on a blue background"  # a held-out prompt


def _png(prompt: str, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    render(parse_prompt(prompt), seed=seed).save(buf, format="PNG")
    return buf.getvalue()


def _run(tmp_path, shows: dict[str, str]):
    """A run whose images were all drawn for ASKED; each image shows the scene named in `shows`."""
    run_dir = tmp_path / "run"
    prompts = []
    for text, split in ((ASKED, "train"), (HELDOUT, "heldout")):
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
    "count": "four red squares on a blue background",        # only the count wrong: relabeled
    "heldout": HELDOUT,                                      # only the count wrong, but that is a held-out prompt
    "color": "two green squares on a blue background",       # the color wrong
    "count+shape": "four red circles on a blue background",  # the count and the shape wrong
}


def _cfg(run_dir, **kw):
    return TrainRWRConfig(run_dir=run_dir, model="unused", split="train", reward="label", min_reward=1, **kw)


def test_the_shapes_judge_captions_what_the_image_shows():
    j = ShapesJudge()
    request = {"prompt": ASKED, "images": [_png("four red squares on a blue background")]}
    row = j.judge_one(request)
    assert row["label"] is False and row["caption"] == "four red squares on a blue background"
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
    assert got == {"right": (ASKED, 1.0, False),
                   "count": ("four red squares on a blue background", 1.0, True)}
    got = {x["image_id"]: x["prompt"] for x in train_rwr.load_rewards(_cfg(run_dir, hindsight=["count", "shape"]))}
    assert got == {"right": ASKED, "count": "four red squares on a blue background",
                   "count+shape": "four red circles on a blue background"}
    # without a split there is no other split's prompt to keep out
    got = {x["image_id"]: x["prompt"] for x in train_rwr.load_rewards(
        TrainRWRConfig(run_dir=run_dir, model="unused", reward="label", min_reward=1, hindsight=["count"]))}
    assert got["heldout"] == HELDOUT and "color" not in got


def test_hindsight_errors_say_what_is_missing(tmp_path):
    run_dir = _run(tmp_path, {"right": ASKED, "count": "four red squares on a blue background"})
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
