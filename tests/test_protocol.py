"""The publishable eval protocol (issue #22), each item on a small hand-computed table:
1 judges and the ceiling on the same leave-one-rater-out target, 2 nested ensemble selection, 3 the prompt
(cluster) bootstrap, 4 four-way pairwise answers as arena benchmarks count them, 5 one judge whatever its
failures, 6 within-prompt correlations and tau-c, 7 scales, 8 own sheets (--map constants and joins, --labels,
per-category console lines, no RuntimeWarning)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau, spearmanr

from autofeedback import ensemble, report, stats
from autofeedback.config import EvalConfig
from autofeedback.errors import InputError
from autofeedback.eval import protocol, stage
from autofeedback.eval.ensembles import mixed_raw
from autofeedback.eval.scoring import RawMetrics, ScoringContext

from .conftest import cli


def _eval(run_dir, **kw):
    kw.setdefault("bootstrap", 200)
    kw.setdefault("html", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # item 8: no RuntimeWarning leaks
        return stage.run(EvalConfig(run_dir=run_dir, **kw))


def _write(tmp_path, name, rows):
    p = tmp_path / name
    pd.DataFrame(rows).to_json(p, orient="records", lines=True)
    return p


# ------------------------------------------------------------------ 1. the same target for judges and raters
# 6 items, 3 raters (r3 is deviant: it reverses the others), one judge.
R = {"r1": [1, 2, 3, 4, 5, 5], "r2": [1, 3, 2, 4, 4, 5], "r3": [5, 4, 3, 1, 2, 1]}
J = [1.0, 2.5, 2.0, 3.0, 4.0, 4.5]


def _three_raters(tmp_path):
    human = [{"item_id": f"i{k}", "rater": r, "score": float(v[k])} for r, v in R.items() for k in range(6)]
    judge = [{"item_id": f"i{k}", "judge": "j", "score": J[k]} for k in range(6)]
    return _write(tmp_path, "h.jsonl", human), _write(tmp_path, "j.jsonl", judge)


def test_ceiling_and_judges_scored_on_the_same_leave_one_out_target(tmp_path):
    h, j = _three_raters(tmp_path)
    m = _eval(tmp_path / "run", human=h, judgments=[j], min_rater_items=2)
    ag = m["agreement"]
    mat = np.array([R["r1"], R["r2"], R["r3"]], dtype=float).T
    loo_targets = [np.delete(mat, k, axis=1).mean(1) for k in range(3)]
    # the ceiling: each rater vs the mean of the other two, averaged; per rater kept
    per = [spearmanr(mat[:, k], loo_targets[k]).statistic for k in range(3)]
    ceiling = ag["human"]["ceiling"]
    assert ceiling["metrics"]["spearman"]["value"] == pytest.approx(np.mean(per), abs=1e-6)
    for k, r in enumerate(R):
        assert ceiling["per_rater"][r]["metrics"]["spearman"]["value"] == pytest.approx(per[k], abs=1e-6)
    r3 = ceiling["per_rater"]["r3"]["metrics"]["spearman"]["value"]      # the deviant rater shows
    assert r3 < -0.5 and r3 == min(v["metrics"]["spearman"]["value"] for v in ceiling["per_rater"].values())
    # the judge on that same target: vs each left-out rater's mean of the others, averaged over raters
    judge = ag["judges"]["j"]
    loo = [spearmanr(J, t).statistic for t in loo_targets]
    assert judge["metrics_loo"]["spearman"]["value"] == pytest.approx(np.mean(loo), abs=1e-6)
    ktb = [kendalltau(J, t).statistic for t in loo_targets]
    assert judge["metrics_loo"]["kendall_tau_b"]["value"] == pytest.approx(np.mean(ktb), abs=1e-6)
    # ... and on the all-rater mean, as before (an easier target)
    assert judge["metrics"]["spearman"]["value"] == pytest.approx(spearmanr(J, mat.mean(1)).statistic, abs=1e-6)
    text = report.format_terminal(m)
    assert "judges vs the mean of all 3 raters" in text
    assert "judges and the human ceiling on the same target: each vs the mean of the other 2 raters" in text
    assert "ceiling per left-out rater" in text and "r3 -" in text


def test_two_raters_loo_is_judge_vs_each_rater(tmp_path):
    """With two raters the leave-one-out target is the other rater: a judge's LOO value is the mean of its
    agreement with each rater, the ceiling rater A vs rater B."""
    a, b = [1, 2, 3, 4, 5, 3, 2], [2, 2, 3, 5, 4, 4, 1]
    x = [0.1, 0.3, 0.2, 0.9, 0.8, 0.5, 0.1]
    human = [{"item_id": f"i{k}", "rater": r, "score": float(v[k])} for r, v in (("a", a), ("b", b)) for k in range(7)]
    m = _eval(tmp_path / "run", human=_write(tmp_path, "h.jsonl", human), min_rater_items=2,
              judgments=[_write(tmp_path, "j.jsonl",
                                [{"item_id": f"i{k}", "judge": "j", "score": x[k]} for k in range(7)])])
    ag = m["agreement"]
    expected = (spearmanr(x, a).statistic + spearmanr(x, b).statistic) / 2
    assert ag["judges"]["j"]["metrics_loo"]["spearman"]["value"] == pytest.approx(expected, abs=1e-6)
    assert ag["human"]["ceiling"]["metrics"]["spearman"]["value"] == pytest.approx(spearmanr(a, b).statistic, abs=1e-6)


# ------------------------------------------------------------------ 2. nested selection
def _noise_pool(tmp_path, n_noise=10, P=40, K=4, real_sd=None):
    rng = np.random.default_rng(0)
    n = P * K
    items = [f"p{i // K}_{i % K}" for i in range(n)]
    truth = rng.normal(size=n)
    human = [{"item_id": it, "rater": r, "score": t + rng.normal(0, 0.3), "prompt_id": it.split("_")[0]}
             for it, t in zip(items, truth) for r in ("a", "b")]
    rows = []
    for k in range(n_noise):
        z = rng.normal(size=n)
        rows += [{"item_id": it, "judge": f"noise{k}", "score": v} for it, v in zip(items, z)]
    if real_sd:
        rows += [{"item_id": it, "judge": "real", "score": t + rng.normal(0, real_sd)} for it, t in zip(items, truth)]
    return _write(tmp_path, "h.jsonl", human), _write(tmp_path, "j.jsonl", rows)


def test_nested_selection_does_not_credit_noise_judges_lucky_in_sample(tmp_path):
    """Pure-noise judges: the in-sample greedy path picks the lucky ones and 'agrees' with the humans; nested
    selection (chosen inside each training fold, scored on the held-out fold) is at chance."""
    h, j = _noise_pool(tmp_path)
    m = _eval(tmp_path / "run", human=h, judgments=[j], ensemble=["zmean", "learned"])
    ens = m["ensembles"]
    steps = ens["selection"]["steps"]
    assert ens["selection"]["in_sample"] and steps and steps[-1]["value"] > 0.1        # lucky in-sample
    lucky = steps[0]["judge"]
    nested = ens["nested"]
    assert nested["repeats"] == 5 and nested["fold_unit"] == "prompt_id"
    for method in ("zmean", "learned"):
        rho = nested["results"][method]["metrics"]["spearman"]
        assert rho["ci95"][0] < 0 < rho["ci95"][1], (method, rho)                        # no credit out of sample
        assert rho["value"] < steps[-1]["value"] - 0.1
    assert set(nested["selection_frequency"]) >= {lucky}
    text = report.format_terminal(m)
    assert "HONEST (nested selection, out-of-sample)" in text and "IN-SAMPLE path" in text


def test_nested_selection_by_hand_on_the_functions():
    """nested_predictions: a real judge among noise is chosen in every training fold; predictions are made
    only for held-out items; the fold splits differ by seed."""
    rng = np.random.default_rng(1)
    P, K = 30, 4
    n = P * K
    y = rng.normal(size=n)
    X = np.column_stack([y + rng.normal(0, 0.5, n), rng.normal(size=(n, 3))])
    groups = np.repeat(np.arange(P), K)
    preds, freq = ensemble.nested_predictions(X, ["real", "n1", "n2", "n3"], y, (y > 0).astype(float), groups,
                                              ["zmean", "learned"], folds=5, repeats=3, seed=0)
    assert freq["real"] == 1.0
    assert preds["zmean"].shape == (3, n) and np.isfinite(preds["learned"]).all()
    assert all(spearmanr(p, y).statistic > 0.7 for p in preds["learned"])
    f0, f1 = ensemble.fold_ids(n, groups, 5, 0), ensemble.fold_ids(n, groups, 5, 1)
    assert not np.array_equal(f0, f1)


def test_mixed_raw_takes_turns_between_fold_splits():
    rs = stats.Resampler(10, 6, seed=0)
    ctx = ScoringContext(ref_kind="score", groups=None, tie_policy="half", rs=rs, rs_prompts=None)
    calls = []

    def score(x, c):
        calls.append(c.rs.n_boot)
        return RawMetrics({"m": (float(x[0]), np.full(c.rs.n_boot, x[0]), 10)})

    raw = mixed_raw([np.zeros(10), np.ones(10)], ctx, score)
    m = raw.estimates["m"]
    assert calls == [3, 3] and m[0] == 0.5 and sorted(m[1]) == [0, 0, 0, 1, 1, 1]


# ------------------------------------------------------------------ 3. prompt (cluster) bootstrap
def test_bootstrap_resamples_prompts_when_there_is_a_prompt_column(tmp_path):
    h, j = _noise_pool(tmp_path, n_noise=1, real_sd=0.5)
    m = _eval(tmp_path / "run", human=h, judgments=[j])
    b = m["agreement"]["bootstrap"]
    assert b["unit"] == "prompt_id" and b["n_units"] == 40
    assert "cluster bootstrap over prompts (prompt_id, 40 prompts)" in report.format_terminal(m)
    mi = _eval(tmp_path / "run2", human=h, judgments=[j], bootstrap_unit="item")
    assert mi["agreement"]["bootstrap"]["unit"] == "item"
    assert "bootstrap over items" in report.format_terminal(mi)
    # the point estimates do not depend on the unit
    for name in ("spearman", "pairwise_accuracy"):
        assert m["agreement"]["judges"]["real"]["metrics"][name]["value"] == \
            mi["agreement"]["judges"]["real"]["metrics"][name]["value"]
    with pytest.raises(InputError, match="not every item has a prompt_id"):
        pd.DataFrame({"item_id": ["a", "b"], "rater": ["r", "r"], "score": [1, 2]}).to_csv(tmp_path / "np.csv")
        _eval(tmp_path / "run3", human=tmp_path / "np.csv", bootstrap_unit="prompt")


# ------------------------------------------------------------------ 4. four-way pairwise answers
# humans (GenAI-Arena words) and a judge (GenAI-Bench verdicts), one pair per row; `correct` as GenAI-Bench counts it
ARENA = [
    ("leftvote", "[[A>B]]", True), ("leftvote", "[[B>A]]", False), ("rightvote", "[[B>>A]]", True),
    ("tievote", "[[A=B=Good]]", True), ("tievote", "[[A=B=Bad]]", False), ("bothbad_vote", "[[A=B=Bad]]", True),
    ("bothbad_vote", "[[A=B]]", True), ("tievote", "[[A=B]]", True), ("rightvote", None, False),
    ("leftvote", "[[Model A is better: [[A>B]] ]", False), ("bothbad_vote", "[[A=B=Good]]", False),
    ("rightvote", "[[A>B]]", False),
]


def _arena_file(tmp_path):
    rows = [{"idx": i, "prompt": f"prompt {i % 5}", "human_vote": h, "model_vote": j, "correct": c}
            for i, (h, j, c) in enumerate(ARENA)]
    p = tmp_path / "pairwise.json"
    p.write_text(json.dumps(rows))
    return p


ARENA_MAP = ["item_id=idx", "human:choice=human_vote", "judgments:choice=model_vote", "human:rater='arena'",
             "judgments:rater='gpt'"]


@pytest.mark.parametrize("failed,expected", [("wrong", 6 / 12), ("tie", 6 / 12), ("drop", 6 / 10)])
def test_four_way_accuracy_from_the_raw_arena_file(tmp_path, failed, expected):
    """One raw file with both columns, as GenAI-Bench stores judge verdicts: mean(correct) comes out exactly."""
    p = _arena_file(tmp_path)
    m = _eval(tmp_path / "run", human=p, judgments=[p], column_map=ARENA_MAP, failed=failed)
    ag = m["agreement"]
    gpt = ag["judges"]["gpt"]
    assert ag["human"]["answers4"] == {"A": 3, "B": 3, "tie": 3, "both_bad": 3}
    assert gpt["n_failed"] == 2                           # None and the nested bracket
    if failed == "wrong":
        assert gpt["metrics"]["accuracy_4way"]["value"] == pytest.approx(np.mean([c for *_, c in ARENA]))
    assert gpt["metrics"]["accuracy_4way"]["value"] == pytest.approx(expected)
    assert gpt["metrics"]["accuracy_4way"]["n"] == (10 if failed == "drop" else 12)
    # three-way pairwise accuracy keeps both-bad a tie: human A/B pairs only (6), judge ties count 1/2
    # right: 0, 2 ; judge tie on none of them; failed (8, 9): wrong / tie (1/2) / dropped
    three = {"wrong": 2 / 6, "tie": 3 / 6, "drop": 2 / 4}[failed]
    assert gpt["metrics"]["pairwise_accuracy"]["value"] == pytest.approx(three)
    assert gpt["confusion4"]["both_bad"] == {"both_bad": 1, "tie_any": 1, "tie": 1}
    assert m["judge_health"]["gpt"]["status"] == {"no_value": 1, "ok": 10, "unparsed": 1}
    text = report.format_terminal(m)
    assert "4-way acc." in text and "both_bad 3" in text and f"counted {failed}" in text


def test_arena_answer_vocabulary():
    assert protocol.arena_answer("[[A>B]]") == "A" and protocol.arena_answer("B>>A") == "B"
    assert protocol.arena_answer("bothbad_vote") == "both_bad" and protocol.arena_answer("tievote") == "tie"
    assert protocol.arena_answer("[[A=B]]") == "tie_any" and protocol.arena_answer("[[A=B=B=Bad]]") is None
    assert protocol.arena_answer("[[x [[A>B]] ]]") is None
    x = np.array([1, 2, 3, 4, 5, 5, 0], dtype=float)
    y = np.array([1, 1, 3, 3, 3, 4, 2], dtype=float)
    # right: A=A, tie=tie, tie_any vs tie, tie_any vs both_bad -> 4 of 7
    assert stats.w_choice4_accuracy(x, y)[0] == pytest.approx(4 / 7)


# ------------------------------------------------------------------ 5. judge health of a pairwise judge
def test_a_pairwise_judge_with_failures_is_one_judge(tmp_path):
    """Failed rows without a choice (and no mode column) used to become a second, 'pointwise' judge."""
    human = [{"item_id": f"p{i}", "rater": "h", "choice": "A"} for i in range(10)]
    judge = [{"item_id": f"p{i}", "judge": "vlm", "choice": "A" if i == 0 else None} for i in range(10)]
    m = _eval(tmp_path / "run", human=_write(tmp_path, "h.jsonl", human), judgments=[_write(tmp_path, "j.jsonl", judge)])
    assert list(m["judge_health"]) == ["vlm"]
    assert m["judge_health"]["vlm"]["status"] == {"no_value": 9, "ok": 1}
    assert m["agreement"]["judges"]["vlm"]["metrics"]["pairwise_accuracy"]["value"] == pytest.approx(0.1)
    text = report.format_terminal(m)
    assert "vlm: 10 rows: ok 10.0%, no_value 90.0%" in text and "ok 100" not in text


# ------------------------------------------------------------------ 6. within-prompt correlation, tau-c
def test_within_prompt_correlations_by_hand(tmp_path):
    # prompt A: judge and humans agree in order; prompt B: reversed; prompt C: humans constant (left out)
    hum = {"A": [1, 2, 3, 4], "B": [1, 2, 3, 5], "C": [3, 3, 3, 3]}
    jud = {"A": [0.1, 0.2, 0.4, 0.3], "B": [0.9, 0.5, 0.6, 0.1], "C": [0.1, 0.2, 0.3, 0.4]}
    human = [{"item_id": f"{p}{k}", "rater": "h", "score": float(v[k]), "prompt_id": p}
             for p, v in hum.items() for k in range(4)]
    judge = [{"item_id": f"{p}{k}", "judge": "j", "score": v[k]} for p, v in jud.items() for k in range(4)]
    m = _eval(tmp_path / "run", human=_write(tmp_path, "h.jsonl", human), judgments=[_write(tmp_path, "j.jsonl", judge)])
    met = m["agreement"]["judges"]["j"]["metrics"]
    for name, fn in (("spearman", lambda a, b: spearmanr(a, b).statistic),
                     ("kendall_tau_b", lambda a, b: kendalltau(a, b).statistic),
                     ("kendall_tau_c", lambda a, b: kendalltau(a, b, variant="c").statistic)):
        per = [fn(jud[p], hum[p]) for p in ("A", "B")]
        assert met[f"{name}_per_prompt"]["value"] == pytest.approx(np.mean(per), abs=1e-6)
        assert met[f"{name}_per_prompt"]["n"] == 2 and met[f"{name}_per_prompt"]["prompts"] == 3
    x = [v for p in "ABC" for v in jud[p]]
    y = [v for p in "ABC" for v in hum[p]]
    assert met["kendall_tau_c"]["value"] == pytest.approx(kendalltau(x, y, variant="c").statistic, abs=1e-6)
    assert "within prompts" in report.format_terminal(m)


# ------------------------------------------------------------------ 7. scales
def _yes_no_vs_ten(tmp_path):
    # humans yes/no; judge 0-10
    lab = [1, 1, 0, 0, 1, 0, 1, 0]
    sc = [9, 6, 4, 8, 10, 1, 7, 2]
    human = [{"item_id": f"i{k}", "rater": "h", "label": bool(lab[k])} for k in range(8)]
    judge = [{"item_id": f"i{k}", "judge": "j", "score": float(sc[k])} for k in range(8)]
    return _write(tmp_path, "h.jsonl", human), _write(tmp_path, "j.jsonl", judge), lab, sc


def test_scales_skipped_metrics_are_named_and_a_threshold_computes_them(tmp_path):
    h, j, lab, sc = _yes_no_vs_ten(tmp_path)
    m = _eval(tmp_path / "run", human=h, judgments=[j])
    entry = m["agreement"]["judges"]["j"]
    assert "accuracy" not in entry["metrics"] and entry["scale_status"] == "skipped"
    assert "accuracy, κ, α skipped" in entry["scale"] and "--judge-threshold 7.75" in entry["scale"]
    assert "scales: accuracy, κ and α skipped for 1 judge(s)" in report.format_terminal(m)
    m = _eval(tmp_path / "run2", human=h, judgments=[j], judge_threshold=["5"])
    met = m["agreement"]["judges"]["j"]["metrics"]
    pred = [float(s >= 5) for s in sc]                   # 1 1 0 1 1 0 1 0 vs 1 1 0 0 1 0 1 0: 7 of 8
    assert met["accuracy"]["value"] == pytest.approx(7 / 8)
    from sklearn.metrics import cohen_kappa_score

    assert met["cohen_kappa"]["value"] == pytest.approx(cohen_kappa_score(pred, lab), abs=1e-9)
    assert "judge >= 5" in m["agreement"]["judges"]["j"]["scale"]
    m = _eval(tmp_path / "run3", human=h, judgments=[j], judge_threshold=["j=auto"])
    assert "judge >= 7.75" in m["agreement"]["judges"]["j"]["scale"]   # 1 + 3/4 of (10 - 1)


def test_judge_scale_rescales_onto_the_human_values(tmp_path):
    human = [{"item_id": f"i{k}", "rater": "h", "score": float(v)} for k, v in enumerate([1, 2, 3, 4, 5, 5])]
    judge = [{"item_id": f"i{k}", "judge": "j", "score": float(v)} for k, v in enumerate([0, 2.4, 5, 7.6, 10, 6])]
    h, j = _write(tmp_path, "h.jsonl", human), _write(tmp_path, "j.jsonl", judge)
    m = _eval(tmp_path / "run", human=h, judgments=[j], judge_scale=["j=0:10"])
    # 0 -> 1, 2.4 -> 1.96 -> 2, 5 -> 3, 7.6 -> 4.04 -> 4, 10 -> 5, 6 -> 3.4 -> 3: 5 of 6 exact
    assert m["agreement"]["judges"]["j"]["metrics"]["accuracy"]["value"] == pytest.approx(5 / 6)
    assert "rescaled from [0, 10]" in m["agreement"]["judges"]["j"]["scale"]


# ------------------------------------------------------------------ 8. bringing your own sheet
def test_own_sheet_constants_joins_prompt_from_text_and_word_labels(tmp_path):
    sheet = pd.DataFrame({
        "text_id": ["t1"] * 3 + ["t2"] * 3, "model": ["m1", "m2", "m3"] * 2,
        "prompt": ["a cat"] * 3 + ["a dog"] * 3,
        "annotator": ["x"] * 6, "verdict": ["yes", "partly", "no", "no", "yes", "partly"],
        "topic": ["animals"] * 3 + ["pets"] * 3})
    sheet2 = sheet.assign(annotator="y", verdict=["yes", "yes", "no", "partly", "yes", "no"])
    pd.concat([sheet, sheet2]).to_csv(tmp_path / "sheet.csv", index=False)
    judge = pd.DataFrame({"text_id": sheet["text_id"], "model": sheet["model"], "rating": [9, 5, 1, 2, 8, 6]})
    judge.to_csv(tmp_path / "judge.csv", index=False)
    m = _eval(tmp_path / "run", human=tmp_path / "sheet.csv", judgments=[tmp_path / "judge.csv"], min_rater_items=2,
              column_map=["item_id=text_id+model", "label=verdict", "category=topic", "score=rating",
                          "judgments:rater='myjudge'", "mode=pointwise"],
              labels=["yes=1,partly=0.5,no=0"])
    ag = m["agreement"]
    assert ag["human"]["kind"] == "score" and ag["human"]["values"] == [0.0, 0.5, 1.0]
    assert ag["human"]["n_prompts"] == 2 and ag["bootstrap"]["unit"] == "prompt_id"   # prompt_id from the text
    j = ag["judges"]["myjudge"]
    hm = np.array([1, .75, 0, .25, 1, .25])
    assert j["metrics"]["spearman"]["value"] == pytest.approx(spearmanr([9, 5, 1, 2, 8, 6], hm).statistic, abs=1e-6)
    assert ag["pairwise_unit"] == "pairs of items with the same prompt_id"
    text = report.format_terminal(m)
    assert "per category (Spearman ρ of the best judge, myjudge" in text and "animals" in text and "pets" in text


def test_map_constant_mode_pairwise_and_errors(tmp_path):
    human = pd.DataFrame({"pair": ["p1", "p2", "p3"], "who": ["h"] * 3, "pick": ["A", "B", "A"]})
    human.to_csv(tmp_path / "h.csv", index=False)
    judge = pd.DataFrame({"pair": ["p1", "p2", "p3"], "pick": ["A", "A", "A"]})
    judge.to_csv(tmp_path / "j.csv", index=False)
    m = _eval(tmp_path / "run", human=tmp_path / "h.csv", judgments=[tmp_path / "j.csv"],
              column_map=["item_id=pair", "rater=who", "choice=pick", "mode=pairwise"])
    assert m["agreement"]["human"]["kind"] == "choice"
    assert m["agreement"]["judges"]["j"]["metrics"]["pairwise_accuracy"]["value"] == pytest.approx(2 / 3)
    with pytest.raises(InputError, match=r"no column 'whoo'.*for a constant write rater='whoo'"):
        _eval(tmp_path / "r2", human=tmp_path / "h.csv", column_map=["item_id=pair", "rater=whoo"])
    with pytest.raises(InputError, match="unknown file role"):
        _eval(tmp_path / "r3", human=tmp_path / "h.csv", column_map=["people:item_id=pair"])
    with pytest.raises(InputError, match=r"column 'label' value 'maybe' is not in --labels"):
        pd.DataFrame({"item_id": ["a", "b"], "rater": ["r", "r"], "label": ["yes", "maybe"]}).to_csv(
            tmp_path / "l.csv", index=False)
        _eval(tmp_path / "r4", human=tmp_path / "l.csv", labels=["yes=1,partly=0.5,no=0"])


def test_cli_arena_file_with_options_and_no_runtime_warning(tmp_path):
    p = _arena_file(tmp_path)
    args = [a for m in ARENA_MAP for a in ("--map", m)]
    proc = cli("eval", tmp_path / "run", "--human", p, "--judgments", p, *args, "--bootstrap", "200",
               "--failed", "wrong", "--no-html")
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    assert "4-way acc." in proc.stdout and "gpt: 12 rows: ok 83.3%, no_value 8.3%, unparsed 8.3%" in proc.stdout
