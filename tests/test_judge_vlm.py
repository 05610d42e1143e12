"""The OpenAI-protocol judge against a real HTTP server on 127.0.0.1 (the checker behind it)."""

import json

import pytest

from autofeedback import judge as stage
from autofeedback import tables
from autofeedback.config import JudgeConfig
from autofeedback.judges.shapes import ShapesJudge

MODEL = "openai:shapes-checker"


def _judge(run_dir, server, **kw):
    base = dict(run_dir=run_dir, judge=MODEL, base_url=server.base_url, timeout=1.0, max_retries=2,
                concurrency=8)
    return stage.run(JudgeConfig(**{**base, **kw}))


def _rows(run_dir, mode=None):
    rows = tables.read(tables.table_path(run_dir, "judgments"), "judgments").to_pylist()
    return [r for r in rows if mode is None or r["mode"] == mode]


def _truth(run_dir):
    """The exact checker's verdict on every image, straight from the table (no server involved)."""
    images = tables.read(run_dir / "images.parquet", "images").to_pylist()
    meta = {r["prompt_id"]: json.loads(r["metadata"]) for r in tables.read(run_dir / "prompts.parquet", "prompts").to_pylist()}
    checker = ShapesJudge()
    return {im["image_id"]: checker.judge_one({"prompt": im["prompt"], "images": [im["image"]["bytes"]],
                                               "metadata": meta[im["prompt_id"]]}) for im in images}


def test_pointwise_agrees_with_the_checker(shapes_run, server):
    s = _judge(shapes_run, server)
    assert s["status"] == {"ok": 24}
    truth = _truth(shapes_run)
    rows = _rows(shapes_run)
    assert len(rows) == 24
    agree = sum(r["label"] == truth[r["image_ids"][0]]["label"] for r in rows)
    assert agree / len(rows) >= 0.99
    assert {r["label"] for r in rows} == {True, False}  # both verdicts occur: the test can fail
    r = rows[0]
    assert r["template"].startswith("pointwise_binary.v1@") and r["input_tokens"] > 0 and r["rationale"]


def test_pointwise_scores_1_to_10(shapes_run, server):
    _judge(shapes_run, server, template="pointwise_score.v1")
    truth = _truth(shapes_run)
    rows = _rows(shapes_run)
    assert all(r["status"] == "ok" and 1 <= r["score"] <= 10 for r in rows)
    assert all((r["score"] == 10) == truth[r["image_ids"][0]]["label"] for r in rows)


def test_pairwise_both_orders_and_consistency(shapes_run, server):
    s = _judge(shapes_run, server, mode="pairwise")
    rows = _rows(shapes_run, "pairwise")
    assert len(rows) == 8 * 3 * 2  # 3 pairs per prompt, both orders
    orders = {json.loads(r["details"])["order"] for r in rows}
    assert orders == {"AB", "BA"}
    truth = _truth(shapes_run)
    ok = [r for r in rows if r["status"] == "ok"]
    agree = 0
    for r in ok:
        a, b = (truth[i]["score"] for i in r["image_ids"])
        expected = r["image_ids"][0] if a > b else r["image_ids"][1] if b > a else "tie"
        agree += r["choice"] == expected
    assert agree / len(ok) >= 0.99
    assert s["position_consistency"] == 1.0 and s["pairs_both_orders"] == 24
    combined = stage.combine_orders(rows)
    assert len(combined) == 24 and all(c["consistent"] for c in combined.values())


def test_position_bias_is_measured_and_inconsistent_pairs_become_ties(shapes_run, server):
    server.set_position_bias(1.0)  # always "A"
    s = _judge(shapes_run, server, mode="pairwise")
    assert s["chose_first_shown"] == 1.0
    assert s["position_consistency"] < 1.0
    combined = stage.combine_orders(_rows(shapes_run, "pairwise"))
    assert all(c["choice"] == "tie" for c in combined.values() if not c["consistent"])


def test_listwise_rankings_are_valid_permutations(shapes_run, server):
    _judge(shapes_run, server, mode="listwise", list_size=3)
    rows = _rows(shapes_run, "listwise")
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    truth = _truth(shapes_run)
    for r in rows:
        assert sorted(r["ranking"]) == sorted(r["image_ids"])
        assert truth[r["ranking"][0]]["label"]  # the matching image is ranked first
    # the presentation order is shuffled, not always the table order
    lists = [json.loads(r["details"])["list"] for r in rows]
    assert any(r["image_ids"] != lst for r, lst in zip(rows, lists))


def test_vqa_scores(shapes_run, server):
    _judge(shapes_run, server, mode="vqa")
    truth = _truth(shapes_run)
    rows = _rows(shapes_run, "vqa")
    assert len(rows) == 24 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert len(r["answers"]) == 4 and r["score"] == truth[r["image_ids"][0]]["score"]


def test_caption_scores(shapes_run, server):
    pytest.importorskip("sentence_transformers")
    _judge(shapes_run, server, mode="caption")
    rows = _rows(shapes_run, "caption")
    assert len(rows) == 24 and all(r["status"] == "ok" and r["caption"] for r in rows)
    truth = _truth(shapes_run)
    good = [r["score"] for r in rows if truth[r["image_ids"][0]]["label"]]
    bad = [r["score"] for r in rows if not truth[r["image_ids"][0]]["label"]]
    assert all(0 < x <= 1.0 for x in good + bad)
    assert sum(good) / len(good) > sum(bad) / len(bad)  # matching images describe closer to the prompt


def test_rerun_sends_nothing(shapes_run, server):
    _judge(shapes_run, server)
    n = server.requests
    s = _judge(shapes_run, server)
    assert s["requests"] == 0 and server.requests == n


def test_images_go_as_data_urls_with_the_right_mime(shapes_run, server):
    _judge(shapes_run, server, image_format="jpeg", image_max_side=16, detail="low", limit=3)
    assert all(r["status"] == "ok" for r in _rows(shapes_run))  # the server checks MIME vs bytes
