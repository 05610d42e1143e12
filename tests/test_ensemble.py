"""Judge ensembles, cross-fitted learned combinations, calibration and cost-aware selection (issue #10):
the TIFA numbers next to the rater-rater ceiling, no leakage on shuffled labels, missing scores in the long
format, and the building blocks by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from autofeedback import ensemble
from autofeedback.config import EvalConfig
from autofeedback.eval import stage

from .conftest import REPO, cli

HUMAN = REPO / "data" / "human"
TIFA_HUMAN = HUMAN / "tifa160_human.parquet"
TIFA_METRICS = HUMAN / "tifa160_metrics.parquet"
PUBLISHED = {"tifa_mplug-large": 0.592, "tifa_blip2-flant5xl": 0.558}
TIFA5 = ["tifa_blip2-flant5xl", "tifa_git-large", "tifa_mplug-large", "tifa_ofa-large", "tifa_vilt"]


def _ci_ok(m):
    return m["ci95"][0] is not None and m["ci95"][0] <= m["value"] <= m["ci95"][1]


@pytest.fixture(scope="module")
def tifa(tmp_path_factory):
    """The real CLI on the shipped TIFA files: every ensemble of the five tifa_* judges."""
    run_dir = tmp_path_factory.mktemp("tifa_ens")
    proc = cli("eval", run_dir, "--human", TIFA_HUMAN, "--judgments", TIFA_METRICS, "--bootstrap", "500",
               "--ensemble", "all", "--ensemble-judge", "tifa_*", "--judge-cost", "tifa_mplug-large=2.5",
               "--judge-cost", "tifa_blip2-flant5xl=1")
    assert proc.returncode == 0, proc.stderr
    return json.loads((run_dir / "report" / "metrics.json").read_text()), proc.stdout, run_dir


def test_tifa_ensembles_next_to_single_judges_and_ceiling(tifa):
    metrics, stdout, run_dir = tifa
    ens = metrics["ensembles"]
    assert ens["members"] == TIFA5 and ens["fold_unit"] == "prompt_id" and ens["folds"] == 5
    judges = metrics["agreement"]["judges"]
    for name, value in PUBLISHED.items():  # each single judge as published
        assert abs(judges[name]["metrics"]["spearman"]["value"] - value) <= 0.002
    z = ens["results"]["zmean"]["metrics"]["spearman"]
    assert z["value"] >= 0.63 and _ci_ok(z) and z["n"] == 800
    assert z["value"] > judges["tifa_mplug-large"]["metrics"]["spearman"]["value"]
    for method in ("learned", "logistic"):
        r = ens["results"][method]
        assert r["out_of_fold"] and r["n_items"] == 800 and set(r["weights"]) == {"intercept", *TIFA5}
        rho = r["metrics"]["spearman"]
        assert 0.6 <= rho["value"] <= 0.7 and _ci_ok(rho)
    for method in ("rankmean", "vote"):
        assert ens["results"][method]["metrics"]["spearman"]["value"] > 0.55
    ceiling = ens["ceiling"]["spearman"]
    assert abs(ceiling["value"] - 0.722) < 0.002 and _ci_ok(ceiling)
    assert all(r["metrics"]["spearman"]["value"] < ceiling["value"] for r in ens["results"].values())
    # the side-by-side table in the terminal
    for line in ("ensemble: zmean", "ensemble: learned (out-of-fold)", "human ceiling (LOO)",
                 "HONEST (nested selection", "ensemble: zmean (nested)", "IN-SAMPLE (all 5 members",
                 "greedy selection, IN-SAMPLE path", "calibration to P(aligned)"):
        assert line in stdout
    html = (run_dir / "report" / "report.html").read_text()
    assert 'id="ensembles"' in html and 'alt="reliability diagram"' in html and "Greedy judge selection" in html


def test_tifa_greedy_selection_and_costs(tifa):
    sel = tifa[0]["ensembles"]["selection"]
    assert sel["costs_usd"]["tifa_mplug-large"] == 2.5 and sel["cost_source"]["tifa_mplug-large"] == "--judge-cost"
    assert sel["cost_source"]["tifa_vilt"] == "free"
    steps = sel["steps"]
    paid = [i for i, s in enumerate(steps) if s["cost_usd"] > 0]
    free = [i for i, s in enumerate(steps) if s["cost_usd"] == 0]
    assert free and (not paid or max(free) < min(paid))        # free judges come first
    assert all(s["gain"] > 0 for s in steps)
    assert [s["value"] for s in steps] == sorted(s["value"] for s in steps)
    assert steps[-1]["total_cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in steps))
    assert all(_ci_ok(s["metric"]) for s in steps)


def test_tifa_calibration_ece(tifa):
    cal = tifa[0]["calibration"]
    assert cal["aligned_threshold"] == 4.0 and abs(cal["aligned_rate"] - 0.605) < 1e-6 and cal["bins"] == 10
    for name in [*TIFA5, "ensemble:zmean", "ensemble:logistic"]:
        c = cal["judges"][name]
        assert 0 <= c["ece"]["value"] < 0.1 and c["n_items"] == 800
        assert 0.1 < c["brier"]["value"] < 0.25
        assert sum(b["n"] for b in c["reliability"]) == 800
    # TIFA scores are a share of correct VQA answers in [0, 1]: calibration lowers their ECE
    raw = cal["judges"]["tifa_mplug-large"]["ece_raw"]["value"]
    assert raw > cal["judges"]["tifa_mplug-large"]["ece"]["value"]


def test_shuffled_labels_learned_ensemble_at_chance(tmp_path):
    """No leakage: with the human ratings shuffled across items, out-of-fold predictions carry nothing."""
    h = pd.read_parquet(TIFA_HUMAN)
    wide = h.pivot(index="item_id", columns="rater", values="score")
    rng = np.random.default_rng(1)
    wide[:] = wide.to_numpy()[rng.permutation(len(wide))]
    meta = h.drop_duplicates("item_id").set_index("item_id")[["prompt_id", "category"]]
    long = wide.reset_index().melt(id_vars="item_id", var_name="rater", value_name="score").join(meta, on="item_id")
    path = tmp_path / "shuffled.parquet"
    long.to_parquet(path)
    m = stage.run(EvalConfig(run_dir=tmp_path / "run", human=path, judgments=[TIFA_METRICS], bootstrap=300,
                             ensemble=["learned", "logistic"], html=False))
    for method in ("learned", "logistic"):
        met = m["ensembles"]["results"][method]["metrics"]
        lo, hi = met["spearman"]["ci95"]
        assert lo < 0 < hi, (method, met["spearman"])
        assert abs(met["pairwise_accuracy"]["value"] - 0.5) < 0.06, (method, met["pairwise_accuracy"])


def test_cross_fit_has_no_leakage_but_in_sample_fit_would():
    """50 pure-noise judges, 120 items: an in-sample fit 'agrees' with noise, the cross-fitted one does not."""
    rng = np.random.default_rng(0)
    rhos_oof, rhos_in = [], []
    for rep in range(5):
        X = rng.normal(size=(120, 50))
        y = rng.normal(size=120)
        fold = ensemble.fold_ids(120, None, 5, rep)
        oof = ensemble.cross_fit(X, y, "learned", fold)
        beta = ensemble.fit_ridge(ensemble.zscores(X), y)
        rhos_oof.append(spearmanr(oof, y).statistic)
        rhos_in.append(spearmanr(beta[0] + ensemble.zscores(X) @ beta[1:], y).statistic)
    assert np.mean(rhos_in) > 0.4
    assert abs(np.mean(rhos_oof)) < 0.15


def test_fold_ids_keep_groups_together():
    groups = np.repeat(np.arange(37), 5)
    fold = ensemble.fold_ids(len(groups), groups, 5, 3)
    for g in range(37):
        assert len(set(fold[groups == g])) == 1
    sizes = np.bincount(fold) / 5
    assert sizes.max() - sizes.min() <= 1 and len(sizes) == 5


def test_long_format_with_missing_scores(tmp_path):
    """item_id, judge, score rows; two judges lack some items: the z-mean averages the judges present."""
    m = pd.read_parquet(TIFA_METRICS)
    m = m[m["judge"].isin(TIFA5[:3])][["item_id", "judge", "score", "prompt_id"]]
    rng = np.random.default_rng(2)
    items = sorted(m["item_id"].unique())
    drop_a = set(rng.choice(items, 240, replace=False))
    drop_b = set(rng.choice(items, 80, replace=False))
    keep = ~(((m["judge"] == TIFA5[0]) & m["item_id"].isin(drop_a))
             | ((m["judge"] == TIFA5[1]) & m["item_id"].isin(drop_b)))
    m = m[keep]
    path = tmp_path / "judges.csv"
    m.to_csv(path, index=False)
    out = stage.run(EvalConfig(run_dir=tmp_path / "run", human=TIFA_HUMAN, judgments=[path], bootstrap=200,
                               ensemble=["zmean", "rankmean", "vote", "learned"], html=False))
    judges = out["agreement"]["judges"]
    assert judges[TIFA5[0]]["n_items"] == 560 and judges[TIFA5[1]]["n_items"] == 720
    res = out["ensembles"]["results"]
    assert all(r["n_items"] == 800 for r in res.values())   # the third judge rated every item
    # by hand: z-score each judge over the items it rated, average the present ones, Spearman with the humans
    wide = m.pivot(index="item_id", columns="judge", values="score")
    z = (wide - wide.mean()) / wide.std(ddof=0)
    ref = pd.read_parquet(TIFA_HUMAN).groupby("item_id")["score"].mean()
    rho = spearmanr(z.mean(axis=1).reindex(ref.index), ref).statistic
    assert res["zmean"]["metrics"]["spearman"]["value"] == pytest.approx(rho, abs=1e-6)
    assert res["learned"]["metrics"]["spearman"]["value"] > 0.5


def test_combinations_by_hand():
    X = np.array([[1.0, 10.0, 1.0], [2.0, np.nan, 0.0], [3.0, 30.0, 1.0], [np.nan, np.nan, np.nan]])
    zc = (X - np.nanmean(X, 0)) / np.nanstd(X, 0)
    np.testing.assert_allclose(ensemble.zmean(X)[:3], np.nanmean(zc[:3], 1))
    assert np.isnan(ensemble.zmean(X)[3]) and np.isnan(ensemble.vote(X)[3])
    # percentile ranks per judge: (rank - 1/2) / n_rated
    np.testing.assert_allclose(ensemble.rankmean(X)[:3], [np.mean([1 / 6, 1 / 4, 2 / 3]), np.mean([1 / 2, 1 / 6]),
                                                          np.mean([5 / 6, 3 / 4, 2 / 3])])
    # votes: judge 0 (mean 2) yes for 2, 3; judge 1 (mean 20) yes for 30; judge 2 is a label
    np.testing.assert_allclose(ensemble.vote(X)[:3], [1 / 3, 1 / 2, 1.0])


def test_ece_and_calibration_by_hand():
    p = np.array([0.05, 0.15, 0.12, 0.95, 0.91, 1.0])
    y = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    # bins of 0.1: [0.05] -> |0 - .05|; [.15, .12] -> |.5 - .135|; [.95, .91, 1.0] -> |2/3 - .9533|
    want = (1 * 0.05 + 2 * abs(0.5 - 0.135) + 3 * abs(2 / 3 - (0.95 + 0.91 + 1.0) / 3)) / 6
    assert ensemble.w_ece(p, y)[0] == pytest.approx(want)
    w = np.random.default_rng(0).multinomial(6, np.ones(6) / 6, size=50).astype(float)
    for b in range(50):
        rep = np.repeat(np.arange(6), w[b].astype(int))
        assert ensemble.w_ece(p, y, w)[b] == pytest.approx(ensemble.w_ece(p[rep], y[rep])[0])
    # isotonic calibration is monotone in the raw score and in [0, 1]; folds never see their own items
    rng = np.random.default_rng(1)
    x = rng.normal(size=400)
    yy = (rng.random(400) < 1 / (1 + np.exp(-2 * x))).astype(float)
    fold = ensemble.fold_ids(400, None, 5, 0)
    for method in ensemble.CALIBRATION:
        cal = ensemble.calibrate(x, yy, fold, method)
        assert np.all((cal >= 0) & (cal <= 1))
        assert ensemble.w_ece(cal, yy)[0] < ensemble.w_ece(1 / (1 + np.exp(-10 * x)), yy)[0]
        for f in range(5):
            s = fold == f
            order = np.argsort(x[s])
            assert np.all(np.diff(cal[s][order]) >= -1e-12)


def test_greedy_respects_budget():
    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    X = np.column_stack([y + rng.normal(scale=s, size=300) for s in (0.5, 1.0, 2.0, 4.0)])
    names = ["a", "b", "c", "d"]
    score = lambda v: spearmanr(v, y).statistic  # noqa: E731
    steps = ensemble.greedy_select(X, names, {"a": 10.0, "b": 1.0, "c": 0.5}, score, budget=2.0)
    assert steps[0]["judge"] == "d"                     # free first
    assert "a" not in [s["judge"] for s in steps]       # over budget
    assert steps[-1]["total_cost_usd"] <= 2.0
    all_steps = ensemble.greedy_select(X, names, {}, score)
    assert all_steps[0]["judge"] == "a"                 # all free: the best judge first


def test_costs_from_judgments_cost_usd(tmp_path):
    m = pd.read_parquet(TIFA_METRICS)
    m = m[m["judge"].isin(TIFA5[:2])].copy()
    m["cost_usd"] = np.where(m["judge"] == TIFA5[0], 0.01, np.nan)
    path = tmp_path / "judges.jsonl"
    m.to_json(path, orient="records", lines=True)
    out = stage.run(EvalConfig(run_dir=tmp_path / "run", human=TIFA_HUMAN, judgments=[path], bootstrap=100,
                               ensemble=["zmean"], html=False))
    sel = out["ensembles"]["selection"]
    assert sel["costs_usd"][TIFA5[0]] == pytest.approx(8.0) and sel["cost_source"][TIFA5[0]] == "judgments.cost_usd"
    assert sel["costs_usd"][TIFA5[1]] == 0.0 and sel["cost_source"][TIFA5[1]] == "free"


def test_bad_ensemble_options(tmp_path):
    proc = cli("eval", tmp_path, "--human", TIFA_HUMAN, "--judgments", TIFA_METRICS, "--ensemble", "median",
               "--bootstrap", "100", "--no-html")
    assert proc.returncode == 2 and "ensemble" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = cli("eval", tmp_path, "--human", TIFA_HUMAN, "--judgments", TIFA_METRICS, "--ensemble", "zmean",
               "--judge-cost", "tifa_vilt", "--bootstrap", "100", "--no-html")
    assert proc.returncode == 2 and "--judge-cost" in proc.stderr


def test_pairs_with_an_ensemble_judge(tmp_path):
    """`pairs --ensemble zmean --judge A --judge B`: the judges' scores combined per image, then paired."""
    from autofeedback import pairs, tables
    from autofeedback.config import PairsConfig

    def row(judge, img, score, prompt="p1"):
        return {"request_id": tables.content_id(judge, img, score), "judge": judge, "mode": "pointwise",
                "template": "t.v1@abc", "prompt_id": prompt, "image_ids": [img], "status": "ok",
                "created_at": tables.now(), "details": "{}", "score": score}

    run = tmp_path / "run"
    # A on a 0-1 scale, B on a 1-10 scale, they disagree on b vs c; C is not a member; B misses image d
    rows = [row("A", "a", 0.9), row("A", "b", 0.2), row("A", "c", 0.1), row("A", "d", 0.5),
            row("B", "a", 9.0), row("B", "b", 1.0), row("B", "c", 5.0), row("C", "a", 0.0), row("C", "b", 1.0)]
    tables.append(tables.table_path(run, "judgments"), rows, "judgments")
    s = pairs.run(PairsConfig(run_dir=run, judges=["A", "B"], ensemble="zmean", augment=0))
    prefs = {(r["chosen_image_id"], r["rejected_image_id"]): r for r in
             tables.read(tables.table_path(run, "preferences"), "preferences").to_pylist()}
    X = np.array([[0.9, 9.0], [0.2, 1.0], [0.1, 5.0], [0.5, np.nan]])
    z = ensemble.zmean(X)
    assert s["pairs"] == 6
    for (c, r), p in prefs.items():
        ic, ir = "abcd".index(c), "abcd".index(r)
        assert z[ic] > z[ir] and p["margin"] == pytest.approx(z[ic] - z[ir])
        assert p["source"] == "judgments:zmean(A/pointwise+B/pointwise)"
    with pytest.raises(Exception, match="needs >= 2 pointwise judges"):
        pairs.run(PairsConfig(run_dir=run, judges=["A"], ensemble="zmean", augment=0))


def test_yes_no_humans_and_pairwise_humans(tmp_path):
    """Yes/no human labels: aligned = the majority label; pairwise human choices: skipped with a warning."""
    rng = np.random.default_rng(0)
    n = 120
    truth = rng.random(n)
    items = [f"img{i}" for i in range(n)]
    human = pd.DataFrame([{"item_id": it, "rater": r, "label": bool(t + rng.normal(0, 0.15) > 0.5)}
                          for it, t in zip(items, truth) for r in ("h1", "h2", "h3")])
    judges = pd.DataFrame([{"item_id": it, "judge": j, "score": t + rng.normal(0, s)}
                           for j, s in (("good", 0.2), ("noisy", 0.5)) for it, t in zip(items, truth)]
                          + [{"item_id": it, "judge": "yesno", "label": bool(t > 0.5)} for it, t in zip(items, truth)])
    hp, jp = tmp_path / "human.csv", tmp_path / "judges.jsonl"
    human.to_csv(hp, index=False)
    judges.to_json(jp, orient="records", lines=True)
    out = stage.run(EvalConfig(run_dir=tmp_path / "run", human=hp, judgments=[jp], bootstrap=100,
                               ensemble=["zmean", "vote", "logistic"]))
    assert out["ensembles"]["members"] == ["good", "noisy", "yesno"]
    assert out["calibration"]["aligned"] == "human majority label = yes"
    assert out["ensembles"]["results"]["logistic"]["metrics"]["spearman"]["value"] > 0.5
    assert set(out["calibration"]["judges"]) >= {"good", "noisy", "yesno", "ensemble:zmean"}
    assert (tmp_path / "run" / "report" / "report.html").exists()
    pairs_h = pd.DataFrame({"item_id": ["a|b", "a|c"], "rater": ["h", "h"], "choice": ["A", "B"]})
    pairs_j = pd.DataFrame({"item_id": ["a|b", "a|c"], "judge": ["j", "j"], "choice": ["A", "A"]})
    pairs_h.to_csv(tmp_path / "ph.csv", index=False)
    pairs_j.to_csv(tmp_path / "pj.csv", index=False)
    out = stage.run(EvalConfig(run_dir=tmp_path / "run2", human=tmp_path / "ph.csv", judgments=[tmp_path / "pj.csv"],
                               bootstrap=100, ensemble=["zmean"], html=False))
    assert out["ensembles"] is None and any("pairwise choices" in w for w in out["agreement"]["warnings"])


def test_judge_cli_several_judges_then_pairs_ensemble(tmp_path, server):
    """`judge --judge A --judge B` in one call keeps both judges' rows; `pairs --ensemble` combines them."""
    from autofeedback import tables
    from autofeedback.shapes.demo import make_rendered_run

    run = make_rendered_run(tmp_path / "run", n_prompts=4, per_prompt=3, seed=1)
    proc = cli("judge", run, "--judge", "shapes", "--judge", "openai:shapes-checker", "--base-url", server.base_url,
               "--timeout", "2", "--max-retries", "1")
    assert proc.returncode == 0, proc.stderr
    rows = tables.read(tables.table_path(run, "judgments"), "judgments").to_pylist()
    per_judge = {j: sum(r["judge"] == j and r["status"] == "ok" for r in rows)
                 for j in ("shapes", "openai:shapes-checker")}
    assert per_judge == {"shapes": 12, "openai:shapes-checker": 12}
    proc = cli("pairs", run, "--ensemble", "zmean", "--judge", "shapes", "--judge", "openai:shapes-checker",
               "--augment", "0")
    assert proc.returncode == 0, proc.stderr
    prefs = tables.read(tables.table_path(run, "preferences"), "preferences").to_pylist()
    assert prefs and {r["source"] for r in prefs} == {
        "judgments:zmean(openai:shapes-checker/pointwise+shapes/pointwise)"}
