"""autofeedback.stats against hand-computed values, Krippendorff's published example, scipy, and
brute-force resampling (the vectorized bootstrap must equal the statistic on the resampled data)."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from autofeedback import stats
from autofeedback.stats import ranks

NAN = float("nan")


# ------------------------------------------------------------------------------ Cohen's kappa
def test_cohen_kappa_two_by_two_by_hand():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = 35/50 = 0.7;
    # rater A says yes 25/50, rater B 30/50 -> p_e = 0.5*0.6 + 0.5*0.4 = 0.5 -> kappa = 0.2/0.5 = 0.4
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert stats.cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    assert stats.accuracy(a, b) == pytest.approx(0.7, abs=1e-12)


def test_cohen_kappa_three_categories_by_hand():
    # confusion (rows x = 1,2,3; cols y): [[2,1,0],[0,2,0],[1,0,1]]; n = 7, p_o = 5/7
    # x margins 3,2,2; y margins 3,3,1 -> p_e = (9 + 6 + 2)/49 = 17/49; kappa = (5/7 - 17/49)/(1 - 17/49) = 18/32
    x = [1, 1, 1, 2, 2, 3, 3]
    y = [1, 1, 2, 2, 2, 1, 3]
    assert stats.cohen_kappa(x, y) == pytest.approx(18 / 32, abs=1e-12)
    assert stats.cohen_kappa(x, x) == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------- rank correlations
def test_spearman_by_hand():
    # no ties: d = (-1, 1, -1, 1, 0), rho = 1 - 6*4/(5*24) = 0.8
    assert stats.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8, abs=1e-12)
    # ties: mid-ranks x = (1, 2.5, 2.5, 4), y = (1, 3, 2, 4): cov 4.5, var 4.5 and 5 -> sqrt(0.9)
    assert stats.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9), abs=1e-12)
    assert stats.w_spearman([1, 2, 2, 3], [1, 3, 2, 4])[0] == pytest.approx(math.sqrt(0.9), abs=1e-12)


def test_kendall_tau_b_by_hand():
    # 10 pairs, 2 discordant -> (8 - 2)/10
    assert stats.kendall_tau_b([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.6, abs=1e-12)
    # x = (1,2,2,3), y = (1,3,2,4): 5 concordant, 0 discordant, one pair tied in x only:
    # tau-b = 5 / sqrt((6 - 1) * (6 - 0)) = 5/sqrt(30)   (tau-a would be 5/6)
    assert stats.kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(5 / math.sqrt(30), abs=1e-12)
    assert stats.w_kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 4])[0] == pytest.approx(5 / math.sqrt(30), abs=1e-12)


def test_nan_pairs_are_dropped():
    assert stats.spearman([1, 2, NAN, 3, 4, 5], [2, 1, 7, 4, 3, 5]) == pytest.approx(0.8)
    assert stats.kendall_tau_b([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 5, NAN]) == pytest.approx(0.6)


# --------------------------------------------------------------------------- pairwise accuracy
# judge x = (1, 2, 2, 3), humans y = (1, 3, 2, 2). The 6 pairs:
#   (1,2) (1,3) (1,4) concordant; (2,3) judge ties, humans order; (2,4) discordant; (3,4) humans tie.
HAND = {"half": (3 + 0.5) / 5, "wrong": 3 / 5, "drop": 3 / 4, "match": 3 / 6}


@pytest.mark.parametrize("policy", stats.TIE_POLICIES)
def test_pairwise_accuracy_tie_policies_by_hand(policy):
    x, y = [1, 2, 2, 3], [1, 3, 2, 2]
    assert stats.pairwise_accuracy(x, y, tie_policy=policy) == pytest.approx(HAND[policy], abs=1e-12)


def test_pairwise_accuracy_within_groups_by_hand():
    # groups (a, a, b, b): only pairs (1,2) concordant and (3,4) humans tie
    x, y, g = [1, 2, 2, 3], [1, 3, 2, 2], [0, 0, 1, 1]
    assert stats.pairwise_accuracy(x, y, g, "half") == 1.0
    assert stats.pairwise_accuracy(x, y, g, "match") == 0.5
    counts = stats.pairwise_counts(x, y, g)
    assert counts == {"pairs": 2, "ref_untied": 1, "concordant": 1, "discordant": 0, "judge_tied": 0, "both_tied": 0}
    assert stats.pairwise_counts(x, y) == {"pairs": 6, "ref_untied": 5, "concordant": 3, "discordant": 1,
                                           "judge_tied": 1, "both_tied": 0}


def test_choice_accuracy_by_hand():
    # +1 first, -1 second, 0 tie. Humans order items 0-2; judge right on 0, wrong on 1, ties on 2.
    x, y = [1, -1, 0, 1, 0], [1, 1, 1, 0, 0]
    assert stats.choice_accuracy(x, y, "half") == pytest.approx(1.5 / 3)
    assert stats.choice_accuracy(x, y, "wrong") == pytest.approx(1 / 3)
    assert stats.choice_accuracy(x, y, "drop") == pytest.approx(1 / 2)
    assert stats.choice_accuracy(x, y, "match") == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="tie_policy"):
        stats.choice_accuracy(x, y, "ignore")


# ------------------------------------------------------------------------------ Krippendorff
def test_alpha_nominal_by_hand():
    # units (a,a) (a,b) (b,b): o = [[2,1],[1,2]], n_a = n_b = 3, n = 6
    # alpha = 1 - (n-1) * (o_ab + o_ba) / (2 n_a n_b) = 1 - 5*2/18 = 4/9
    r = np.array([[0, 0], [0, 1], [1, 1]], dtype=float)
    assert stats.krippendorff_alpha(r, "nominal") == pytest.approx(4 / 9, abs=1e-12)


def test_alpha_interval_and_ordinal_by_hand():
    # units (1,2) (3,3) (1,3); pooled values 1,2,3,3,1,3: n = 6, sum 13, sum of squares 33
    # interval: within-unit sum_{i!=j} (vi-vj)^2 = 2 + 0 + 8 = 10; pooled 2(n*33 - 13^2) = 58
    #           alpha = 1 - 5*10/58 = 4/29
    # ordinal: n_1=2, n_2=1, n_3=3; d2_12 = (3 - 1.5)^2 = 2.25, d2_13 = (6 - 2.5)^2 = 12.25, d2_23 = (4 - 2)^2 = 4
    #          sum o d2 = 2*2.25 + 2*12.25 = 29; sum n_c n_k d2 = 2*(2*2.25 + 6*12.25 + 3*4) = 180
    #          alpha = 1 - 5*29/180 = 7/36
    r = np.array([[1, 2], [3, 3], [1, 3]], dtype=float)
    assert stats.krippendorff_alpha(r, "interval") == pytest.approx(4 / 29, abs=1e-12)
    assert stats.krippendorff_alpha(r, "ordinal") == pytest.approx(7 / 36, abs=1e-12)


def test_alpha_reproduces_krippendorffs_published_example():
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", 4 observers x 12 units with
    missing values: alpha nominal .743, ordinal .815, interval .849, ratio .797."""
    n = NAN
    obs = np.array([
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]).T
    published = {"nominal": 0.743, "ordinal": 0.815, "interval": 0.849, "ratio": 0.797}
    for level, value in published.items():
        assert round(stats.krippendorff_alpha(obs, level), 3) == value, level
    # the nominal value as an exact fraction (n = 40 pairable values): 113/152 = 0.74342...
    assert stats.krippendorff_alpha(obs, "nominal") == pytest.approx(113 / 152, abs=1e-12)


def test_alpha_interval_sums_equal_coincidence_matrix():
    rng = np.random.default_rng(3)
    r = rng.integers(1, 6, size=(40, 4)).astype(float)
    r[rng.random(r.shape) < 0.3] = np.nan
    # interval alpha from the coincidence matrix = ratio-free delta (c-k)^2 on the value grid
    values = np.unique(r[np.isfinite(r)])
    counts = np.stack([(r == v).sum(1) for v in values], 1).astype(float)
    m = counts.sum(1)
    keep = m >= 2
    counts, m = counts[keep], m[keep]
    o = sum((np.outer(c, c) - np.diag(c)) / (mm - 1) for c, mm in zip(counts, m))
    nc = o.sum(1)
    d2 = (values[:, None] - values[None, :]) ** 2
    expected = 1 - (nc.sum() - 1) * (o * d2).sum() / (np.outer(nc, nc) * d2).sum()
    assert stats.krippendorff_alpha(r, "interval") == pytest.approx(expected, abs=1e-12)


def test_alpha_perfect_agreement_and_errors():
    r = np.array([[1, 1, 1], [2, 2, NAN], [3, 3, 3]], dtype=float)
    for level in stats.LEVELS:
        assert stats.krippendorff_alpha(r, level) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="level"):
        stats.krippendorff_alpha(r, "cardinal")
    assert math.isnan(stats.krippendorff_alpha(np.array([[1.0, NAN], [2.0, NAN]]), "nominal"))


# ---------------------------------------------------------------- weighted forms = resampled data
def _resample(seed, n):
    idx = np.random.default_rng(seed).integers(0, n, n)
    return idx, np.bincount(idx, minlength=n).astype(float)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_statistics_equal_the_statistic_on_resampled_data(seed):
    rng = np.random.default_rng(seed)
    n = 60
    x = rng.integers(0, 5, n).astype(float)                  # many ties
    y = x + rng.integers(-2, 3, n)
    idx, w = _resample(seed + 10, n)
    assert stats.w_spearman(x, y, w)[0] == pytest.approx(sps.spearmanr(x[idx], y[idx]).statistic, abs=1e-12)
    assert stats.w_kendall_tau_b(x, y, w)[0] == pytest.approx(
        sps.kendalltau(x[idx], y[idx], variant="b").statistic, abs=1e-12)
    assert stats.w_cohen_kappa(x, y, w)[0] == pytest.approx(stats.cohen_kappa(x[idx], y[idx]), abs=1e-12)
    assert stats.w_accuracy(x, y, w)[0] == pytest.approx(np.mean(x[idx] == y[idx]), abs=1e-12)
    ratings = np.column_stack([x, y, np.where(rng.random(n) < 0.5, np.nan, x)])
    for level in stats.LEVELS:
        assert stats.w_krippendorff_alpha(ratings, w, level)[0] == pytest.approx(
            stats.krippendorff_alpha(ratings[idx], level), abs=1e-12)


def _brute_pairwise(x, y, g, idx, policy):
    """Pairs of draws of different items (a draw paired with a copy of its own item is no pair)."""
    right = total = 0.0
    for a in range(len(idx)):
        for b in range(a + 1, len(idx)):
            i, j = idx[a], idx[b]
            if i == j or g[i] != g[j]:
                continue
            sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if policy == "match":
                total += 1
                right += sx == sy
                continue
            if sy == 0 or (policy == "drop" and sx == 0):
                continue
            total += 1
            right += 1.0 if sx == sy else (0.5 if sx == 0 and policy == "half" else 0.0)
    return right / total


@pytest.mark.parametrize("policy", stats.TIE_POLICIES)
def test_weighted_pairwise_accuracy_equals_brute_force(policy):
    rng = np.random.default_rng(7)
    n = 40
    x = rng.integers(0, 4, n).astype(float)
    y = rng.integers(0, 4, n).astype(float)
    g = rng.integers(0, 5, n).astype(float)
    ident = np.arange(n)
    assert stats.pairwise_accuracy(x, y, g, policy) == pytest.approx(_brute_pairwise(x, y, g, ident, policy))
    idx, w = _resample(3, n)
    assert stats.w_pairwise_accuracy(x, y, w, g, policy)[0] == pytest.approx(_brute_pairwise(x, y, g, idx, policy))


def test_point_estimates_match_scipy_on_continuous_data():
    rng = np.random.default_rng(11)
    x = rng.normal(size=300)
    y = x + rng.normal(size=300)
    assert stats.w_spearman(x, y)[0] == pytest.approx(stats.spearman(x, y), abs=1e-12)
    assert stats.w_kendall_tau_b(x, y)[0] == pytest.approx(stats.kendall_tau_b(x, y), abs=1e-12)
    # all-pairs pairwise accuracy without ties = (1 + tau) / 2
    assert stats.pairwise_accuracy(x, y) == pytest.approx((1 + stats.kendall_tau_b(x, y)) / 2, abs=1e-12)


# ------------------------------------------------------------------------------------ bootstrap
def test_resampler_is_deterministic_shared_and_chunked():
    a = np.concatenate(list(stats.Resampler(50, 300, seed=5, max_cells=50 * 64).weights()))
    b = np.concatenate(list(stats.Resampler(50, 300, seed=5, max_cells=50 * 64).weights()))
    assert a.shape == (300, 50) and (a == b).all()
    assert (a.sum(1) == 50).all()                       # every resample draws n items
    rs = stats.Resampler(50, 300, seed=5)
    assert (np.concatenate(list(rs.weights())) == np.concatenate(list(rs.weights()))).all()
    assert not (np.concatenate(list(stats.Resampler(50, 300, seed=6).weights())) == b).all()


def test_estimate_interval_covers_point_and_shrinks_with_n():
    rng = np.random.default_rng(0)

    def ci_width(n):
        x = rng.normal(size=n)
        y = x + rng.normal(size=n)
        rs = stats.Resampler(n, 500, seed=1)
        e = stats.estimate(lambda w: stats.w_spearman(x, y, w), rs, point=stats.spearman(x, y))
        assert e["ci95"][0] <= e["value"] <= e["ci95"][1] and e["n"] == n
        return e["ci95"][1] - e["ci95"][0]

    assert ci_width(400) < ci_width(50)


def test_percentile_ci_ignores_undefined_resamples():
    lo, hi = stats.percentile_ci(np.r_[np.full(10, np.nan), np.linspace(0, 1, 101)])
    assert lo == pytest.approx(0.025) and hi == pytest.approx(0.975)
    assert all(math.isnan(v) for v in stats.percentile_ci(np.full(5, np.nan)))


def test_pair_kernel_chunking_does_not_change_results():
    rng = np.random.default_rng(4)
    x, y, g = rng.integers(0, 6, 90).astype(float), rng.normal(size=90), rng.integers(0, 4, 90).astype(float)
    w = np.concatenate(list(stats.Resampler(90, 20, seed=2).weights()))
    whole = ranks._sign_quadratic_form(x, y, w, g)
    assert np.array_equal(whole, ranks._sign_quadratic_form(x, y, w, g, max_cells=90 * 16))
    assert np.array_equal(whole, ranks._sign_quadratic_form(x, y, w, g, max_cells=1))


# ---------------------------------------------------------------------------- issue #22 additions
def test_kendall_tau_c_by_hand_and_on_resampled_data():
    # x has 3 distinct values, y 2 (m = 2); concordant (0,2) (0,3) (1,2) (1,3), discordant (2,4):
    # tau-c = 2 (4 - 1) / (5^2 (2 - 1) / 2) = 0.48
    x = np.array([1, 1, 2, 3, 3], dtype=float)
    y = np.array([0, 0, 1, 1, 0], dtype=float)
    concordant = sum(1 for i in range(5) for j in range(i + 1, 5) if (x[i] - x[j]) * (y[i] - y[j]) > 0)
    discordant = sum(1 for i in range(5) for j in range(i + 1, 5) if (x[i] - x[j]) * (y[i] - y[j]) < 0)
    assert (concordant, discordant) == (4, 1)
    assert stats.kendall_tau_c(x, y) == pytest.approx(0.48)
    assert stats.kendall_tau_c(x, y) == pytest.approx(sps.kendalltau(x, y, variant="c").statistic)
    assert stats.w_kendall_tau_c(x, y)[0] == pytest.approx(0.48)
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 4, 50).astype(float), rng.integers(0, 6, 50).astype(float)
    for seed in range(3):
        idx, w = _resample(seed, 50)
        tb, tc = stats.w_kendall_taus(a, b, w)[0]
        assert tc == pytest.approx(sps.kendalltau(a[idx], b[idx], variant="c").statistic, abs=1e-12)
        assert tb == pytest.approx(sps.kendalltau(a[idx], b[idx], variant="b").statistic, abs=1e-12)


def test_group_stats_equal_scipy_per_group():
    # prompt 0: ranks agree; prompt 1: one swap; prompt 2: y constant -> undefined; prompt 3: one item
    x = np.array([1, 2, 3, 1, 2, 3, 4, 1, 2, 5], dtype=float)
    y = np.array([1, 2, 3, 2, 1, 3, 4, 3, 3, 1], dtype=float)
    g = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 3])
    gs = stats.group_stats(x, y, g)
    assert gs["spearman"][0] == pytest.approx(1.0) and gs["kendall_tau_b"][0] == pytest.approx(1.0)
    # prompt 1 by hand: 6 pairs, one discordant -> tau-b = (5 - 1) / 6
    assert gs["kendall_tau_b"][1] == pytest.approx(4 / 6) and gs["s"][1] == 4
    assert gs["spearman"][1] == pytest.approx(sps.spearmanr(x[3:7], y[3:7]).statistic)
    assert gs["kendall_tau_c"][1] == pytest.approx(sps.kendalltau(x[3:7], y[3:7], variant="c").statistic)
    assert np.isnan(gs["spearman"][2]) and np.isnan(gs["spearman"][3]) and gs["n"].tolist() == [3, 4, 2, 1]
    # the mean over defined prompts, and its weighted (cluster-resampled) form
    assert stats.w_group_mean(gs["spearman"])[0] == pytest.approx((1.0 + gs["spearman"][1]) / 2)
    assert stats.w_group_mean(gs["spearman"], np.array([[2, 1, 5, 0]]))[0] == pytest.approx(
        (2 * 1.0 + gs["spearman"][1]) / 3)


def test_cluster_resampler_draws_whole_clusters():
    clusters = np.repeat(np.arange(6), 3)
    rs = stats.Resampler(18, 50, seed=1, clusters=clusters)
    assert rs.unit == "cluster" and rs.n_units == 6
    for w, wc in zip(rs.weights(), rs.unit_weights()):
        assert (w == wc[:, clusters]).all() and (wc.sum(1) == 6).all()
    # subsets take turns: together they are the whole set of resamples
    full = np.concatenate(list(rs.unit_weights()))
    parts = [np.concatenate(list(rs.subset(r, 3).unit_weights())) for r in range(3)]
    assert sorted(map(tuple, np.vstack(parts))) == sorted(map(tuple, full))
    assert [len(p) for p in parts] == [17, 17, 16] and rs.subset(0, 3).n_boot == 17


@pytest.mark.parametrize("policy", stats.TIE_POLICIES)
def test_grouped_pairwise_accuracy_equals_resampled_prompts_brute_force(policy):
    """Whole prompts resampled: each copy of a prompt is its own group (no pairs across copies)."""
    rng = np.random.default_rng(5)
    G, K = 6, 4
    g = np.repeat(np.arange(G), K)
    x = rng.integers(0, 3, G * K).astype(float)
    y = rng.integers(0, 3, G * K).astype(float)
    terms = stats.group_pair_terms(stats.group_stats(x, y, g, correlations=False))
    draw = np.array([0, 0, 2, 3, 3, 3])                    # prompt 0 twice, 3 three times
    wg = np.bincount(draw, minlength=G)[None, :].astype(float)
    xs, ys, gs = [], [], []
    for copy, p in enumerate(draw):
        xs.append(x[g == p]), ys.append(y[g == p]), gs.append(np.full(K, copy))
    xs, ys, gs = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
    expected = _brute_pairwise(xs, ys, gs, np.arange(len(xs)), policy)
    assert stats.w_grouped_pairwise_accuracy(terms, wg, policy)[0] == pytest.approx(expected)
    assert stats.w_grouped_pairwise_accuracy(terms, None, policy)[0] == pytest.approx(
        stats.pairwise_accuracy(x, y, g, policy))


def test_choice_accuracy_counts_a_failed_answer_wrong():
    x = np.array([1, -1, 2, 0], dtype=float)       # 2: failed, counted wrong
    y = np.array([1, 1, 1, -1], dtype=float)
    assert stats.choice_accuracy(x, y, "half") == pytest.approx(1.5 / 4)
    assert stats.choice_accuracy(x, y, "drop") == pytest.approx(1 / 3)
