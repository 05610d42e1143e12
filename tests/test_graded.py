"""Graded feedback (#18): the checker's graded credits and the shapes:graded judge, on hand-computed values."""

import math

import pytest

from autofeedback.shapes import checker
from autofeedback.shapes.checker import Component, Reading, Verdict
from autofeedback.shapes.world import Scene, render


def _verdict(want: Scene, comps: list[Component], background: str = "blue") -> Verdict:
    reading = Reading(background, comps)
    correct = {"count": reading.count == want.count,
               "color": all(c.color == want.color for c in comps),
               "shape": all(c.shape == want.shape for c in comps),
               "background": background == want.background}
    return Verdict(reading, want, correct)


def _comp(fill: float, skew: float = 0.0, color: str = "red") -> Component:
    shape = "triangle" if skew <= checker.TRIANGLE_SKEW else ("square" if fill >= checker.SQUARE_FILL else "circle")
    return Component(color, shape, 40.0, fill, skew, (0.0, 0.0, 0.0))


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_square_credit_is_a_soft_margin_on_fill():
    want = Scene(2, "red", "square", "blue")
    at = _verdict(want, [_comp(0.88), _comp(0.88)]).credits()
    assert at["shape"] == pytest.approx(0.5 * (1 - sig(-6)), abs=1e-6)  # on the boundary: half credit
    above = _verdict(want, [_comp(0.895), _comp(0.865)]).credits()
    # one shape 1 softness above (sigmoid(1)), one 1 below (sigmoid(-1)); neither is a triangle (skew 0)
    tri = sig((checker.TRIANGLE_SKEW - 0.0) / checker.SKEW_SOFTNESS)
    assert above["shape"] == pytest.approx((1 - tri) * (sig(1) + sig(-1)) / 2, abs=1e-6)
    rounded, round_ = _verdict(want, [_comp(0.86)] * 2), _verdict(want, [_comp(0.785)] * 2)
    assert not rounded.aligned and not round_.aligned  # the binary label can't tell them apart
    assert rounded.graded > round_.graded + 0.05  # graded credit can


def test_count_color_and_background_credits():
    want = Scene(3, "red", "circle", "blue")
    v = _verdict(want, [_comp(0.78), _comp(0.78, color="green")], background="white")
    c = v.credits()
    assert c["count"] == 0.25  # one off
    assert c["color"] == 0.5  # one of two shapes the right color
    assert c["background"] == 0.0
    assert _verdict(want, [_comp(0.78)]).credits()["count"] == 0.0  # two off
    assert _verdict(want, []).credits() == {"count": 0.0, "color": 0.0, "shape": 0.0, "background": 1.0}
    assert v.graded == pytest.approx(sum(c.values()) / 4)


def test_a_clean_render_gets_almost_full_graded_credit():
    for scene in (Scene(1, "red", "square", "blue"), Scene(3, "yellow", "triangle", "purple"),
                  Scene(4, "white", "circle", "green")):
        v = checker.check(render(scene, 0), scene)
        assert v.aligned and v.graded > 0.95


def test_graded_judge_scores_with_credits_and_is_other_work(shapes_run):
    from autofeedback import judge, tables
    from autofeedback.config import JudgeConfig
    from autofeedback.errors import InputError

    judge.run(JudgeConfig(run_dir=shapes_run, judge="shapes"))
    judge.run(JudgeConfig(run_dir=shapes_run, judge="shapes:graded"))
    rows = tables.read(shapes_run / "judgments.parquet", "judgments").to_pylist()
    plain = {r["image_ids"][0]: r for r in rows if r["judge"] == "shapes"}
    graded = {r["image_ids"][0]: r for r in rows if r["judge"] == "shapes:graded"}
    assert set(plain) == set(graded) and len(plain) > 0
    assert not {r["request_id"] for r in plain.values()} & {r["request_id"] for r in graded.values()}
    for image_id, r in graded.items():
        assert r["label"] == plain[image_id]["label"]  # same reading, same verdict
        assert 0.0 <= r["score"] <= 1.0
    assert {r["score"] for r in graded.values()} - {0.0, 0.25, 0.5, 0.75, 1.0}  # not just quarters
    with pytest.raises(InputError, match="graded"):
        judge.run(JudgeConfig(run_dir=shapes_run, judge="shapes:fuzzy"))
