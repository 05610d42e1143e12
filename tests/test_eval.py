"""`autofeedback eval`: published TIFA correlations, DSG alpha, label-file formats and column maps,
pairwise choices and judge health by hand, before/after by hand and on a real shapes-world run,
metrics.json merging, and the HTML report in headless Chromium."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autofeedback import tables
from autofeedback.config import EvalConfig
from autofeedback.errors import InputError
from autofeedback.eval import stage
from autofeedback.eval.before_after import before_after

from .conftest import REPO, cli

HUMAN = REPO / "data" / "human"
TIFA_HUMAN = HUMAN / "tifa160_human.parquet"
TIFA_METRICS = HUMAN / "tifa160_metrics.parquet"
DSG = HUMAN / "dsg_tifa160_likert.parquet"
# TIFA paper / repo: Spearman of each metric with the average human rating on the 800 images.
PUBLISHED = {"tifa_mplug-large": 0.592, "tifa_blip2-flant5xl": 0.558, "clipscore_vitb32": 0.320}


def _eval(run_dir, **kw):
    kw.setdefault("bootstrap", 200)
    return stage.run(EvalConfig(run_dir=run_dir, **kw))


# ------------------------------------------------------------------------------------ TIFA / DSG
@pytest.fixture(scope="module")
def tifa_metrics(tmp_path_factory):
    """The real CLI on the shipped TIFA files (one subprocess for the whole module)."""
    run_dir = tmp_path_factory.mktemp("tifa")
    proc = cli("eval", run_dir, "--human", TIFA_HUMAN, "--judgments", TIFA_METRICS, "--bootstrap", "500")
    assert proc.returncode == 0, proc.stderr
    return json.loads((run_dir / "report" / "metrics.json").read_text()), proc.stdout, run_dir


def test_tifa_reproduces_published_spearman(tifa_metrics):
    metrics, _, _ = tifa_metrics
    judges = metrics["agreement"]["judges"]
    for judge, value in PUBLISHED.items():
        rho = judges[judge]["metrics"]["spearman"]
        assert abs(rho["value"] - value) <= 0.002, (judge, rho)
        assert rho["ci95"][0] < rho["value"] < rho["ci95"][1] and rho["n"] == 800
    assert set(judges["tifa_mplug-large"]["metrics"]) == {
        "spearman", "kendall_tau_b", "kendall_tau_c", "pairwise_accuracy",
        "spearman_per_prompt", "kendall_tau_b_per_prompt", "kendall_tau_c_per_prompt"}
    assert metrics["agreement"]["baselines"]["clip_score"]["judge"] == "clipscore_vitb32"


def test_tifa_rater_rater_ceiling(tifa_metrics):
    metrics, stdout, _ = tifa_metrics
    human = metrics["agreement"]["human"]
    assert human["n_items"] == 800 and human["n_raters"] == 2 and human["values"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    ceiling = human["ceiling"]["metrics"]["spearman"]
    # with two raters, leave-one-rater-out = rater A vs rater B
    a = pd.read_parquet(TIFA_HUMAN).pivot(index="item_id", columns="rater", values="score")
    from scipy.stats import spearmanr

    direct = spearmanr(a["tifa_a"], a["tifa_b"]).statistic
    assert ceiling["value"] == pytest.approx(direct, abs=1e-6)
    assert abs(ceiling["value"] - 0.72) < 0.01 and ceiling["ci95"][0] < ceiling["value"] < ceiling["ci95"][1]
    assert "human ceiling (2 raters, LOO)" in stdout and "tifa_mplug-large" in stdout
    # every metric of the best judge sits below the ceiling; the random baseline near zero
    assert metrics["agreement"]["judges"]["tifa_mplug-large"]["metrics"]["spearman"]["value"] < ceiling["value"]
    assert abs(metrics["agreement"]["baselines"]["random"]["metrics"]["spearman"]["value"]) < 0.1
    cats = metrics["agreement"]["judges"]["tifa_mplug-large"]["per_category"]
    assert set(cats) == {"coco", "drawbench", "paintskill", "partiprompt"}
    assert sum(c["n_items"] for c in cats.values()) == 800


def test_dsg_likert_krippendorff_alpha_with_ci(tmp_path):
    m = _eval(tmp_path, human=DSG)
    human = m["agreement"]["human"]
    assert human["n_raters"] == 5 and human["n_items"] == 800 and human["n_ratings"] == 3995
    df = pd.read_parquet(DSG).pivot(index="item_id", columns="rater", values="score").to_numpy()
    from autofeedback import stats

    for level in ("ordinal", "interval"):
        a = human["alpha"][level]
        assert a["value"] == pytest.approx(stats.krippendorff_alpha(df, level), abs=1e-6)
        assert 0.6 < a["value"] < 0.75, a
        assert a["ci95"][0] < a["value"] < a["ci95"][1] and a["ci95"][1] - a["ci95"][0] < 0.1
    assert human["ceiling"]["n_raters"] == 5


def test_column_map_csv_gives_the_same_numbers(tmp_path):
    """A user's own sheet (other column names, CSV) works through --map, without conversion."""
    human = pd.read_parquet(TIFA_HUMAN).rename(columns={"item_id": "image", "rater": "who", "score": "rating"})
    human[["image", "who", "rating", "category"]].to_csv(tmp_path / "sheet.csv", index=False)
    metric = pd.read_parquet(TIFA_METRICS)
    metric = metric[metric["judge"] == "tifa_mplug-large"].rename(columns={"item_id": "image"})
    metric[["image", "judge", "score"]].to_json(tmp_path / "judge.jsonl", orient="records", lines=True)
    m = _eval(tmp_path / "run", human=tmp_path / "sheet.csv", judgments=[tmp_path / "judge.jsonl"],
              column_map={"item_id": "image", "rater": "who", "score": "rating"})
    rho = m["agreement"]["judges"]["tifa_mplug-large"]["metrics"]["spearman"]["value"]
    assert abs(rho - 0.592) <= 0.002
    # no prompt_id in the sheet: pairwise accuracy over all pairs of items
    assert m["agreement"]["pairwise_unit"] == "all pairs of items"


# -------------------------------------------------------------------------- pairwise by hand
def _pairwise_files(tmp_path):
    """4 pairs (pNa, pNb). Humans: P1 a, P2 b, P3 split (tie), P4 a (shown as b|a).
    Judge asked both orders: P1 a/a, P2 a/a (wrong), P3 a/b (inconsistent -> tie), P4 a/tie.
    Plus one refused and one unparseable request on a fifth pair."""
    human = [
        {"annotator": "h1", "image_ids": ["p1a", "p1b"], "choice": "A"},
        {"annotator": "h2", "image_ids": ["p1a", "p1b"], "choice": "p1a"},
        {"annotator": "h1", "image_ids": ["p2a", "p2b"], "choice": "B"},
        {"annotator": "h2", "image_ids": ["p2a", "p2b"], "choice": "second"},
        {"annotator": "h1", "image_ids": ["p3a", "p3b"], "choice": "p3a"},
        {"annotator": "h2", "image_ids": ["p3a", "p3b"], "choice": "p3b"},
        {"annotator": "h1", "image_ids": ["p4b", "p4a"], "choice": "B"},
        {"annotator": "h2", "image_ids": ["p4b", "p4a"], "choice": "p4a"},
    ]
    judge = []
    for pair, ab, ba in (("p1", "p1a", "p1a"), ("p2", "p2a", "p2a"), ("p3", "p3a", "p3b"), ("p4", "p4a", "tie")):
        judge.append({"judge": "vlm", "mode": "pairwise", "image_ids": [f"{pair}a", f"{pair}b"], "choice": ab,
                      "status": "ok"})
        judge.append({"judge": "vlm", "mode": "pairwise", "image_ids": [f"{pair}b", f"{pair}a"], "choice": ba,
                      "status": "ok"})
    judge.append({"judge": "vlm", "mode": "pairwise", "image_ids": ["p5a", "p5b"], "choice": None,
                  "status": "refused"})
    judge.append({"judge": "vlm", "mode": "pairwise", "image_ids": ["p5b", "p5a"], "choice": None,
                  "status": "parse_error"})
    pd.DataFrame(human).to_json(tmp_path / "human.jsonl", orient="records", lines=True)
    pd.DataFrame(judge).to_json(tmp_path / "judge.jsonl", orient="records", lines=True)
    return tmp_path / "human.jsonl", tmp_path / "judge.jsonl"


@pytest.mark.parametrize("policy,expected", [("half", 2 / 3), ("wrong", 2 / 3), ("drop", 2 / 3), ("match", 3 / 4)])
def test_pairwise_choices_by_hand(tmp_path, policy, expected):
    human, judge = _pairwise_files(tmp_path)
    m = _eval(tmp_path / "run", human=human, judgments=[judge], tie_policy=policy)
    ag = m["agreement"]
    assert ag["human"]["kind"] == "choice" and ag["primary_metric"] == "pairwise_accuracy"
    vlm = ag["judges"]["vlm"]["metrics"]
    # judge (per pair, orders combined) +1, +1, 0, +1 vs humans +1, -1, 0, +1
    assert vlm["pairwise_accuracy"]["value"] == pytest.approx(expected)
    # accuracy/kappa against the majority (P3 has none): judge right on P1, P4, wrong on P2
    assert vlm["accuracy"]["value"] == pytest.approx(2 / 3) and vlm["accuracy"]["n"] == 3
    assert vlm["cohen_kappa"]["value"] == pytest.approx(0.0, abs=1e-12)
    if policy == "half":
        # always-first picks the image shown first to the humans: a, a, a, b -> right only on P1
        assert ag["baselines"]["always_first"]["metrics"]["pairwise_accuracy"]["value"] == pytest.approx(1 / 3)
        h = m["judge_health"]["vlm"]
        assert h["n_rows"] == 10 and h["status"] == {"ok": 8, "parse_error": 1, "refused": 1}
        assert h["refusal_rate"] == pytest.approx(0.1) and h["parse_error_rate"] == pytest.approx(0.1)
        # orders agree on P1, P2; not on P3, P4
        assert h["position_consistency"]["value"] == pytest.approx(0.5) and h["position_consistency"]["n"] == 4
        # decided answers that picked the image shown first: 5 of 7
        assert h["first_position_rate"]["value"] == pytest.approx(5 / 7)


def test_position_consistency_from_details(tmp_path):
    rows = [{"judge": "j", "mode": "pairwise", "image_ids": ["a", "b"], "choice": "a", "status": "ok",
             "details": json.dumps({"consistent": c})} for c in (True, True, True, False)]
    pd.DataFrame(rows).to_json(tmp_path / "j.jsonl", orient="records", lines=True)
    m = _eval(tmp_path / "run", judgments=[tmp_path / "j.jsonl"])
    assert m["agreement"] is None
    assert m["judge_health"]["j"]["position_consistency"]["value"] == pytest.approx(0.75)


def test_run_tables_human_labels_and_judgments(tmp_path):
    """RUN/human_labels.parquet (the judgments shape + annotator) is the default --human; the run's
    judgments are items image_ids[0], scored by score."""
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 6, 30).astype(float)
    humans = [{"label_id": f"{a}-{i}", "annotator": a, "mode": "pointwise", "image_ids": [f"img{i}"],
               "score": float(np.clip(truth[i] + (a == "b") * rng.integers(-1, 2), 1, 5))}
              for a in ("a", "b") for i in range(30)]
    tables.append(tables.table_path(tmp_path, "human_labels"), humans, "human_labels")
    judged = [{"request_id": f"r{i}", "judge": "vlm", "mode": "pointwise", "image_ids": [f"img{i}"],
               "score": float(truth[i]), "status": "ok"} for i in range(30)]
    judged.append({"request_id": "r-x", "judge": "vlm", "mode": "pointwise", "image_ids": ["img0"],
                   "status": "refused"})
    tables.append(tables.table_path(tmp_path, "judgments"), judged, "judgments")
    m = _eval(tmp_path)
    vlm = m["agreement"]["judges"]["vlm"]
    assert vlm["n_items"] == 30 and m["agreement"]["human"]["n_raters"] == 2
    mean = pd.DataFrame(humans).groupby(pd.DataFrame(humans)["image_ids"].map(lambda x: x[0]))["score"].mean()
    from scipy.stats import spearmanr

    expected = spearmanr(truth, mean.reindex([f"img{i}" for i in range(30)]).to_numpy()).statistic
    assert vlm["metrics"]["spearman"]["value"] == pytest.approx(expected, abs=1e-6)
    assert "alpha_interval" in vlm["metrics"] and "cohen_kappa" in vlm["metrics"]   # same 1-5 scale
    assert m["judge_health"]["vlm"]["status"] == {"ok": 30, "refused": 1}
    assert m["eval"]["inputs"]["human"].endswith("human_labels.parquet")


# ---------------------------------------------------------------------------------- bad input
def test_bad_inputs_name_the_file_column_and_value(tmp_path):
    pd.DataFrame({"image": ["x"], "rater": ["r"], "score": [1.0]}).to_csv(tmp_path / "noitem.csv", index=False)
    with pytest.raises(InputError, match=r"noitem\.csv: no item column.*--map item_id="):
        _eval(tmp_path / "r1", human=tmp_path / "noitem.csv")
    pd.DataFrame({"item_id": ["x", "y"], "rater": ["r", "r"], "label": ["yes", "maybe"]}).to_csv(
        tmp_path / "label.csv", index=False)
    with pytest.raises(InputError, match=r"label\.csv: row 1: column 'label' value 'maybe'"):
        _eval(tmp_path / "r2", human=tmp_path / "label.csv")
    with pytest.raises(InputError, match=r"--map item_id=picture: no column 'picture'"):
        _eval(tmp_path / "r3", human=tmp_path / "noitem.csv", column_map={"item_id": "picture"})
    with pytest.raises(InputError, match="unknown target column 'itemid'"):
        _eval(tmp_path / "r4", human=tmp_path / "noitem.csv", column_map={"itemid": "image"})
    with pytest.raises(InputError, match="nothing to evaluate"):
        _eval(tmp_path / "r5")
    pd.DataFrame({"item_id": ["a", "b"], "rater": ["r", "r"], "score": [1, 2]}).to_csv(tmp_path / "h.csv", index=False)
    pd.DataFrame({"image": ["A", "B"], "judge": ["j", "j"], "score": [1, 2]}).to_csv(tmp_path / "j.csv", index=False)
    with pytest.raises(InputError, match=r"no judge rated any of the human-labeled items.*'A' vs human 'a'.*--map"):
        _eval(tmp_path / "r6", human=tmp_path / "h.csv", judgments=[tmp_path / "j.csv"],
              column_map={"item_id": "image"})


def test_cli_bad_choice_is_one_error_line(tmp_path):
    pd.DataFrame({"item_id": ["x"], "rater": ["r"], "choice": ["left-ish"]}).to_csv(tmp_path / "c.csv", index=False)
    proc = cli("eval", tmp_path / "run", "--human", tmp_path / "c.csv")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "c.csv" in lines[0] and "'left-ish'" in lines[0], proc.stderr


# ------------------------------------------------------------------------- before/after by hand
def _t(minutes: int):
    return dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=minutes)


def _j(image, label, score, count, status="ok"):
    return {"judge": "shapes", "mode": "pointwise", "image_ids": [image], "label": label, "score": score,
            "answers": [{"question": "count", "correct": count}, {"question": "color", "correct": True}],
            "status": status}


def test_before_after_by_hand():
    images = pd.DataFrame({
        "image_id": ["i1", "i2", "i3", "i4", "i5", "i6", "i7"],
        "prompt_id": ["p1", "p1", "p2", "p1", "p2", "p2", "p3"],
        "model": ["A", "A", "A", "B", "B", "B", "B"],
        "created_at": [_t(0)] * 3 + [_t(5)] * 4,
    })
    judgments = pd.DataFrame([
        _j("i1", True, 1.0, True), _j("i2", False, 0.5, False), _j("i3", False, 0.5, False),
        _j("i4", True, 1.0, True), _j("i5", False, 0.5, True), _j("i6", True, 0.5, False),
        _j("i7", True, 1.0, True),                        # prompt p3 has no image of A: left out
        _j("i3", True, 1.0, True, status="parse_error"),  # not ok: not counted
    ])
    ba = before_after(images, judgments, n_boot=300)
    assert ba["models"] == ["A", "B"] and ba["baseline"] == "A" and ba["judge"] == "shapes"
    assert ba["n_prompts"] == 2 and ba["n_prompts_dropped"] == 1
    a, b = ba["per_model"]["A"], ba["per_model"]["B"]
    assert a["alignment"]["value"] == pytest.approx(1 / 3) and b["alignment"]["value"] == pytest.approx(2 / 3)
    assert a["concepts"]["count"]["value"] == pytest.approx(1 / 3)
    assert b["concepts"]["count"]["value"] == pytest.approx(2 / 3)
    assert a["concepts"]["color"]["value"] == 1.0 and a["n_images"] == 3
    c = ba["comparisons"][0]
    assert c["alignment_diff"]["value"] == pytest.approx(1 / 3)
    assert c["concept_diffs"]["color"]["value"] == 0.0
    # per prompt mean score: p1 A 0.75 vs B 1.0 (win), p2 A 0.5 vs B 0.5 (tie) -> (1 + 0.5) / 2
    assert c["win_rate"]["value"] == pytest.approx(0.75)
    assert (c["win_rate"]["wins"], c["win_rate"]["ties"], c["win_rate"]["losses"]) == (1, 1, 0)
    assert c["win_rate"]["ci95"][0] <= 0.75 <= c["win_rate"]["ci95"][1]
    # explicit order reverses the comparison
    rev = before_after(images, judgments, models=["B", "A"], n_boot=100)
    assert rev["comparisons"][0]["alignment_diff"]["value"] == pytest.approx(-1 / 3)
    with pytest.raises(InputError, match="model"):
        before_after(images, judgments, models=["A", "C"])
    why = []
    assert before_after(images[images["model"] == "A"], judgments, why=why) is None
    assert "one model" in why[0] and "(A)" in why[0]
    # two models judged on disjoint prompts (base on train, tuned on held-out): the reason, with each model's count
    why = []
    apart = images.assign(prompt_id=[f"{p}-{m}" for p, m in zip(images["prompt_id"], images["model"])])
    assert before_after(apart, judgments, why=why) is None
    assert "no prompt was judged by 'shapes' for every model (A: 2 prompts, B: 3 prompts)" in why[0]
    assert "--split" in why[0]
    from autofeedback.report import format_terminal
    assert f"no before/after: {why[0]}" in format_terminal({"before_after": None, "before_after_skipped": why[0]})
    # one model named is a mistake (e.g. --models given twice, the last one winning), not "nothing to report"
    with pytest.raises(ValueError, match="at least 2"):
        EvalConfig(run_dir="r", models=["A"])


# ------------------------------------------------------------------ a real shapes-world run
def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_shapes_run(run_dir: Path, n_prompts: int = 12, per_prompt: int = 3, seed: int = 0) -> pd.DataFrame:
    """Two 'models' that draw the prompt's scene or a wrong one (before: often, after: rarely), judged by
    the real shapes checker. Returns the ground truth per image (for simulated human labels)."""
    import dataclasses

    from autofeedback.judges.shapes import ShapesJudge
    from autofeedback.shapes.suite import suite_records
    from autofeedback.shapes.world import COUNTS, Scene, render

    rng = np.random.default_rng(seed)
    records = suite_records()
    chosen = [records[i] for i in rng.choice(len(records), n_prompts, replace=False)]
    prompt_rows = [{"prompt_id": tables.prompt_id(r["suite"], r["prompt"]), "prompt": r["prompt"], "suite": r["suite"],
                    "category": r["category"], "metadata": json.dumps(r["metadata"]), "split": r["split"]}
                   for r in chosen]
    tables.append(tables.table_path(run_dir, "prompts"), prompt_rows, "prompts")
    image_rows, requests, truth = [], [], []
    for minutes, (model, p_wrong) in enumerate((("tiny-before", 0.7), ("tiny-after", 0.25))):
        for p in prompt_rows:
            scene = Scene(**json.loads(p["metadata"]))
            for k in range(per_prompt):
                wrong = rng.random() < p_wrong
                drawn = scene
                if wrong:
                    drawn = dataclasses.replace(scene, count=int(rng.choice([c for c in COUNTS if c != scene.count])))
                image_id = tables.content_id("img", model, p["prompt_id"], k)
                png = _png(render(drawn, seed=int(rng.integers(1 << 30))))
                image_rows.append({"image_id": image_id, "prompt_id": p["prompt_id"], "prompt": p["prompt"],
                                   "model": model, "seed": k, "image": {"bytes": png, "path": None},
                                   "created_at": _t(minutes)})
                requests.append({"request_id": tables.content_id("req", image_id), "prompt_id": p["prompt_id"],
                                 "prompt": p["prompt"], "image_ids": [image_id], "images": [png],
                                 "metadata": json.loads(p["metadata"])})
                truth.append({"image_id": image_id, "aligned": not wrong})
    tables.append(tables.table_path(run_dir, "images"), image_rows, "images")
    judge = ShapesJudge()
    rows = []
    for req in requests:
        ans = judge.judge_one(req)
        rows.append({"request_id": req["request_id"], "judge": "shapes", "mode": "pointwise",
                     "template": judge.template, "prompt_id": req["prompt_id"], "image_ids": req["image_ids"],
                     "created_at": _t(9), **ans})
    tables.append(tables.table_path(run_dir, "judgments"), rows, "judgments")
    return pd.DataFrame(truth)


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("shapes-run")
    truth = make_shapes_run(run_dir)
    # two simulated annotators: the ground truth, and the ground truth with 10% of labels flipped
    rng = np.random.default_rng(1)
    flip = rng.random(len(truth)) < 0.1
    human = pd.concat([
        pd.DataFrame({"item_id": truth["image_id"], "annotator": "truth", "label": truth["aligned"]}),
        pd.DataFrame({"item_id": truth["image_id"], "annotator": "noisy", "label": truth["aligned"] ^ flip}),
    ])
    human.to_csv(run_dir / "human.csv", index=False)
    (run_dir / "report").mkdir()
    (run_dir / "report" / "metrics.json").write_text(json.dumps({"alignment": {"kept": True}, "pipeline": "x.yaml"}))
    metrics = _eval(run_dir, human=run_dir / "human.csv", bootstrap=300)
    return run_dir, metrics, truth


def test_shapes_run_before_after_and_merge(shapes_run):
    run_dir, metrics, truth = shapes_run
    ba = metrics["before_after"]
    assert ba["models"] == ["tiny-before", "tiny-after"] and ba["n_prompts"] == 12
    j = tables.read(tables.table_path(run_dir, "judgments"), "judgments").to_pandas()
    imgs = tables.read(tables.table_path(run_dir, "images"), "images", columns=["image_id", "model"]).to_pandas()
    j["model"] = j["image_ids"].map(lambda ids: ids[0]).map(dict(zip(imgs["image_id"], imgs["model"])))
    rates = j.groupby("model")["label"].mean()
    for model in ba["models"]:
        assert ba["per_model"][model]["alignment"]["value"] == pytest.approx(rates[model], abs=1e-6)
    diff = ba["comparisons"][0]["alignment_diff"]
    assert diff["value"] == pytest.approx(rates["tiny-after"] - rates["tiny-before"], abs=1e-6)
    assert diff["ci95"][0] > 0, diff                      # the better model is measurably better
    assert set(ba["per_model"]["tiny-after"]["concepts"]) == {"background", "color", "count", "shape"}
    saved = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert saved["alignment"] == {"kept": True} and saved["pipeline"] == "x.yaml"   # other keys kept
    assert {"agreement", "judge_health", "before_after", "eval"} <= set(saved)
    assert saved["before_after"] == json.loads(json.dumps(ba))


def test_before_after_grid_frames_each_models_image_by_the_verdict(shapes_run):
    from PIL import Image

    run_dir, _, _ = shapes_run
    grid = Image.open(run_dir / "report" / "before_after.png").convert("RGB")
    j = tables.read(tables.table_path(run_dir, "judgments"), "judgments").to_pandas()
    verdict = dict(zip(j["image_ids"].map(lambda ids: ids[0]), j["label"]))
    prompts = tables.read(tables.table_path(run_dir, "prompts"), "prompts").to_pandas().sort_values("prompt")
    # 12 prompts -> 12 rows (seed 0, the lowest both models have), sorted by prompt; columns in model order
    label_w, pad, cell, head_h = 300, 4, 96, 14 * 4 + 8
    assert grid.size == (max(label_w + 2 * (cell + pad), 640), head_h + 12 * (cell + pad))
    seen = set()
    for r, pid in enumerate(prompts["prompt_id"]):
        for c, model in enumerate(["tiny-before", "tiny-after"]):
            frame = grid.getpixel((label_w + c * (cell + pad) + 1, head_h + r * (cell + pad) + 1))
            aligned = bool(verdict[tables.content_id("img", model, pid, 0)])
            assert frame == ((30, 160, 60) if aligned else (210, 40, 40)), (r, c, model)
            seen.add(aligned)
    assert seen == {True, False}


def test_shapes_run_agreement_with_labels(shapes_run):
    _, metrics, _ = shapes_run
    ag = metrics["agreement"]
    assert ag["human"]["kind"] == "label" and ag["human"]["n_raters"] == 2
    shapes = ag["judges"]["shapes"]
    assert shapes["kind"] == "label" and shapes["n_items"] == 72
    # the exact checker agrees with the ground truth nearly always
    assert shapes["metrics"]["accuracy"]["value"] > 0.9 and shapes["metrics"]["cohen_kappa"]["value"] > 0.8
    assert ag["pairwise_unit"] == "pairs of items with the same prompt_id"    # groups from images.parquet
    assert set(shapes["per_category"]) <= {f"count={c}" for c in range(1, 5)}  # categories from prompts
    assert ag["human"]["ceiling"]["metrics"]["accuracy"]["value"] == pytest.approx(0.9, abs=0.06)


def test_report_html_is_self_contained(shapes_run):
    run_dir, _, _ = shapes_run
    html = (run_dir / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 + 3 * 8      # plots + three image grids
    for title in ("Best by shapes", "Worst by shapes", "Judge–human disagreements", "Before / after",
                  "Agreement with human labels"):
        assert title in html
    assert "http://" not in html and "https://" not in html and "<link rel=\"stylesheet\"" not in html


def test_report_html_escapes_what_comes_from_the_run(shapes_run):
    """Prompts, captions, file names, judge names and answers reach the report from the run's tables: the
    template (autoescape on) writes a hostile one as text, never as markup."""
    import copy
    from html.parser import HTMLParser

    from PIL import Image

    from autofeedback.report_html import render_html

    _, metrics, _ = shapes_run
    evil = '<script>alert("x")</script><img src=x onerror="alert(1)">&amp;\'</p>'
    m = copy.deepcopy(metrics)
    m.setdefault("eval", {})["run_dir"] = evil
    ag = m["agreement"]
    ag["judges"] = {evil + name: j for name, j in ag["judges"].items()}
    ag["human"]["source"] = evil
    ag["warnings"] = [evil]
    m["judge_health"] = {evil + name: v for name, v in m["judge_health"].items()}
    m["before_after"]["labels"] = {model: evil for model in m["before_after"]["models"]}
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    grids = [{"title": evil, "note": evil, "items": [{"png": buf.getvalue(), "image_id": evil, "caption": evil}]}]
    page = render_html(m, grids)

    class Parse(HTMLParser):
        tags, attrs, text = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.attrs += [name for name, _ in attrs]

        def handle_data(self, data):
            self.text.append(data)

    p = Parse()
    p.feed(page)
    assert p.tags.count("script") == 1 and "onerror" not in p.attrs  # the report's own script, no injected one
    assert p.tags.count("p") == page.count("</p>")                   # no paragraph closed early
    text = "".join(p.text)
    # the string comes back as it was (its "&amp;" too): title, heading, source, judges, warning, models, grid
    assert text.count(evil) >= 10, text.count(evil)


# ---------------------------------------------------------------------------------- Chromium
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
             f"--user-data-dir={profile}"]
    return subprocess.run([CHROMIUM, *flags, *extra, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)


def _console(log: str) -> list[str]:
    """Messages of the page's console (chromium logs them as ...:CONSOLE(line)] "text", source: ...)."""
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_opens_in_headless_chromium(shapes_run, tmp_path):
    import re

    from PIL import Image

    run_dir, _, _ = shapes_run
    page = run_dir / "report" / "report.html"
    dom = _chromium(page, tmp_path / "p1", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the page's own check ran: every <img> (plots, image grids) decoded
    m = re.search(r'data-images="(\d+) loaded=(\d+)"', dom.stdout)
    assert m and int(m.group(1)) >= 28 and m.group(1) == m.group(2), (m and m.group(0), dom.stdout[:300])
    shot = tmp_path / "report.png"
    proc = _chromium(page, tmp_path / "p2", f"--screenshot={shot}", "--window-size=1280,3200")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    assert not _console(dom.stderr) and not _console(proc.stderr), _console(dom.stderr + proc.stderr)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 3200)
    assert len(set(img.resize((320, 800)).getdata())) > 500      # plots and images, not a blank page
    if os.environ.get("AUTOFEEDBACK_UPDATE_DOCS"):
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, REPO / "docs" / "img" / "report.png")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_chromium_console_check_catches_errors(shapes_run, tmp_path):
    """Negative control: the same report with a broken image and a script error is caught."""
    run_dir, _, _ = shapes_run
    html = (run_dir / "report" / "report.html").read_text()
    broken = html.replace("</main>", '<img alt="broken" src="data:image/png;base64,AAAA">'
                                     "<script>noSuchFunction();</script></main>")
    page = tmp_path / "broken.html"
    page.write_text(broken)
    proc = _chromium(page, tmp_path / "p", "--dump-dom")
    console = _console(proc.stderr)
    assert any("did not load: broken" in line for line in console), proc.stderr[-3000:]
    assert any("noSuchFunction" in line for line in console), proc.stderr[-3000:]


def test_model_labels_are_short_names_full_paths_stay_in_json():
    from autofeedback.alignment import short_name, short_names
    from autofeedback.report import format_terminal

    assert short_name("/w/data/models/shapes-countnoise") == "shapes-countnoise"
    assert short_name("/w/runs/shapes/rwr/pipeline") == "rwr"
    assert short_name("/w/data/models/shapes-tiny+lora:/w/runs/shapes/dpo/lora") == "shapes-tiny+dpo"
    assert short_name("stable-diffusion-v1-5/stable-diffusion-v1-5") == "stable-diffusion-v1-5"
    assert short_names(["/a/rwr/pipeline", "/b/rwr/pipeline", "/c/m"]) == {   # a collision keeps full names
        "/a/rwr/pipeline": "/a/rwr/pipeline", "/b/rwr/pipeline": "/b/rwr/pipeline", "/c/m": "m"}
    long_a, long_b = "/very/long/machine/path/data/models/base", "/very/long/machine/path/runs/x/rwr/pipeline"
    images = pd.DataFrame({"image_id": ["i1", "i2"], "prompt_id": ["p1", "p1"], "model": [long_a, long_b],
                           "created_at": [_t(0), _t(5)]})
    ba = before_after(images, pd.DataFrame([_j("i1", False, 0.0, False), _j("i2", True, 1.0, True)]),
                      n_boot=50)
    assert ba["models"] == [long_a, long_b] and ba["labels"] == {long_a: "base", long_b: "rwr"}
    text = format_terminal({"before_after": ba})
    assert "  rwr vs base: alignment +100.0 pts" in text and "/very/long" not in text
