"""Agreement statistics and a vectorized bootstrap (pure numpy/scipy; no torch, no pandas).

Point estimates of the rank correlations come from scipy (`spearmanr`, `kendalltau(variant="b")`).
Confidence intervals come from a percentile bootstrap over items. A bootstrap resample is written as
*weights*: w[i] = how many times item i was drawn (multinomial counts). Every statistic here has a
weighted form `f(..., w)` that takes a (B, n) matrix of such weights and returns B values at once,
so 2,000 resamples cost a few matrix products instead of 2,000 Python calls. With w = 1 the
weighted form equals the plain statistic (tests check this against scipy).

    Resampler(n, n_boot, seed)      the resamples; the same seed gives the same resamples for every
                                    statistic, so intervals of different judges are coupled
    estimate(stat, rs, point)       {"value", "ci95", "n"} from a weighted statistic

Statistics (x = judge or rater, y = reference; NaN = missing, dropped pairwise):
    accuracy, cohen_kappa           categorical agreement (kappa: Cohen 1960, unweighted)
    spearman, kendall_tau_b         rank correlations (tau-b: ties corrected in both variables)
    pairwise_accuracy               pairs of items (optionally only pairs with the same group, e.g. the
                                    same prompt) ordered the same way, with an explicit TIE POLICY
    choice_accuracy                 the same tie policies for pairwise choices coded +1 / -1 / 0 (tie)
    krippendorff_alpha              several raters, missing values allowed; nominal / ordinal /
                                    interval / ratio metric (Krippendorff 2011, coincidence matrix)
    kendall_tau_c, w_kendall_taus   Stuart's tau-c (scipy variant="c"), and tau-b / tau-c sharing one pass
    group_stats, w_group_mean       per-group (per-prompt) Spearman / tau-b / tau-c and pair counts; the mean
                                    over groups, for groups resampled whole
    w_grouped_pairwise_accuracy     pairwise accuracy within groups when groups are resampled whole
    w_choice4_accuracy              four-way pairwise answers (A, B, tie, both bad) as arena benchmarks count them

Cluster bootstrap: Resampler(..., clusters=codes) draws whole clusters (e.g. prompts); an item's weight is
its cluster's draw count (unit_weights() gives the cluster counts themselves).

Tie policies (TIE_POLICIES), for pairs the reference orders (y_i != y_j) and the judge ties:
    half   counts 1/2 (the judge's expected score if it broke ties at random); pairs the reference
           ties are left out. The default.
    wrong  counts 0; reference ties left out.
    drop   pairs tied by the judge or by the reference are left out.
    match  every pair counts; right iff sign(x_i - x_j) == sign(y_i - y_j), so a tie is right only
           when the reference ties too (Deutsch et al. 2023, "Ties Matter", acc_eq).

Modules: bootstrap (Resampler, estimate, percentile_ci; complete_cases / weight_rows / round_or_none, the
helpers of every weighted statistic), ranks (rank correlations, per-group statistics, pairwise and choice
accuracy with the tie policies), categorical (accuracy, kappa, Krippendorff's alpha, four-way answers).
Everything public is importable from autofeedback.stats itself.
"""

from .bootstrap import Resampler, complete_cases, estimate, percentile_ci, round_or_none, weight_rows
from .categorical import (C4_A, C4_B, C4_BOTH_BAD, C4_TIE, C4_TIE_ANY, C4_WRONG, LEVELS, MAX_CATEGORIES, accuracy,
                          cohen_kappa, krippendorff_alpha, w_accuracy, w_choice4_accuracy, w_cohen_kappa,
                          w_krippendorff_alpha)
from .ranks import (TIE_POLICIES, choice_accuracy, group_pair_terms, group_stats, kendall_tau_b, kendall_tau_c,
                    pairwise_accuracy, pairwise_counts, policy_ratio, spearman, w_choice_accuracy, w_group_mean,
                    w_grouped_pairwise_accuracy, w_kendall_tau_b, w_kendall_tau_c, w_kendall_taus,
                    w_pairwise_accuracy, w_spearman)

__all__ = [
    "Resampler", "complete_cases", "estimate", "percentile_ci", "round_or_none", "weight_rows",
    "C4_A", "C4_B", "C4_BOTH_BAD", "C4_TIE", "C4_TIE_ANY", "C4_WRONG", "LEVELS", "MAX_CATEGORIES", "accuracy",
    "cohen_kappa", "krippendorff_alpha", "w_accuracy", "w_choice4_accuracy", "w_cohen_kappa", "w_krippendorff_alpha",
    "TIE_POLICIES", "choice_accuracy", "group_pair_terms", "group_stats", "kendall_tau_b", "kendall_tau_c",
    "pairwise_accuracy", "pairwise_counts", "policy_ratio", "spearman", "w_choice_accuracy", "w_group_mean",
    "w_grouped_pairwise_accuracy", "w_kendall_tau_b", "w_kendall_tau_c", "w_kendall_taus", "w_pairwise_accuracy",
    "w_spearman",
]
