"""eval: agreement of judges with human labels, and model before/after, with bootstrap 95% CIs.

Reads:   --human FILE (or RUN/human_labels.parquet)   human ratings in the long label format
         --judgments FILE ...                         judge / metric / reward-model ratings, same format
         RUN/judgments.parquet                        the run's own judgments (pointwise: item = image_ids[0],
                                                      score = score, else label; pairwise: item = the pair)
         RUN/images.parquet, RUN/prompts.parquet      models, prompts, categories, splits, images for the grids
Writes:  RUN/report/metrics.json   keys `agreement`, `judge_health`, `before_after`, `eval` (merged: other
                                   top-level keys, e.g. `alignment` from `autofeedback run`, are kept)
         RUN/report/report.html    self-contained report (inline CSS, plots and images as base64 PNG)
Columns: the long label format (docs/eval.md). One row per rating:
         item_id   what was rated: an image (pointwise) or a pair (pairwise)       (or image_ids / image_id)
         rater     who rated: annotator or judge name          (or annotator / judge / worker_id / worker)
         score | label | choice    a number (Likert, probability, reward) | a yes/no | for pairs: A / B / tie,
                   first / second, or the chosen image id when image_ids holds the pair in the order shown
         optional: category, prompt_id (pairwise accuracy compares images of the same prompt), mode,
                   status (only `ok` rows are scored), details (JSON; {"consistent": bool} for pairs)
         `--map item_id=image` uses column `image` as item_id, for any input file.

metrics.json, key reference (every metric is {"value", "ci95": [lo, hi], "n"}; null when undefined):
  agreement                      null when there are no human labels
    human          {source, kind (score|label|choice), n_items, n_raters, n_ratings, ratings_per_item,
                    values (distinct rating values, <= 20), categories,
                    alpha {nominal, ordinal, interval}          Krippendorff's alpha among the human raters
                    ceiling {method, n_raters, metrics, per_rater, per_category}   each rater vs the mean
                    (majority for accuracy/kappa) of the other raters, averaged over raters (leave-one-rater-out),
                    answers4 (pairwise sets: A / B / tie / both_bad counts), n_prompts}
    reference      how the human reference is built: mean of raters (correlations, pairwise, interval /
                   ordinal alpha), majority (accuracy, kappa, nominal alpha)
    primary_metric spearman (ratings) or pairwise_accuracy (pairwise choices)
    tie_policy     half | wrong | drop | match (autofeedback.stats)
    pairwise_unit  which pairs pairwise_accuracy counts
    bootstrap      {n, seed, level, unit (prompt_id: whole prompts resampled | item), n_units, method, note}
    failed_policy  pairwise sets: a judge's failed answers count wrong | tie | drop (autofeedback.eval.protocol)
    judges         {name: {source, kind, n_items, n_unmatched, metrics, metrics_loo, per_category
                    {cat: {n_items, metrics}}, scale, scale_status, n_failed, confusion4}}
                   metrics: spearman, kendall_tau_b, kendall_tau_c, pairwise_accuracy (+ pairs counts),
                   *_per_prompt (mean over prompts of the within-prompt statistic), accuracy_4way (pairwise
                   sets), and when judge and humans use the same discrete scale (or --judge-threshold /
                   --judge-scale make them): accuracy, cohen_kappa, alpha_nominal, alpha_ordinal, alpha_interval
                   (judge vs the human reference as two raters). metrics_loo: the same vs each left-out
                   rater's mean of the other raters, averaged over raters (the ceiling's target)
    baselines      random {metrics}, constant {value, metrics} (pointwise sets: always the most common
                   human value) or always_first {metrics} (pairwise sets), clip_score {judge, metrics}
                   (a judge whose name contains "clip", when present)
    warnings       list of strings
  judge_health   {judge: {source, n_rows, status {ok: n, ...}, ok_rate, refusal_rate, parse_error_rate,
                  error_rate, position_consistency (metric; pairwise, from details.consistent or from the
                  pair asked in both orders), first_position_rate (metric; share of decided pairwise
                  choices that picked the image shown first)}}
  before_after   null unless RUN has pointwise judgments of >= 2 models on the same prompts; see
                 autofeedback.eval.before_after.before_after()
  ensembles      null unless --ensemble: judge ensembles (zmean, rankmean, vote; learned and logistic
                 cross-fitted, out-of-fold) next to the member judges and the ceiling, a greedy
                 cost-budgeted judge selection (in-sample), and `nested`: members and weights chosen inside
                 each training fold (the honest numbers) (autofeedback/eval/ensembles.py, the math in
                 autofeedback/ensemble.py; docs/eval.md)
  calibration    null unless --ensemble / --calibration: cross-fitted P(aligned) per judge, ECE, Brier,
                 reliability bins
  eval           {created_at, run_dir, inputs, config}

Modules (each step of run() is one of them; no module reaches into another's private names):
  stage          run(cfg), format_summary(); the report's image grids; write_metrics(), the one writer of
                 metrics.json (also used by `autofeedback run`)
  ratings        reading label files and the run's tables, --map, normalize() to one row per rating
  protocol       what is compared to what: leave-one-rater-out targets, four-way answers, failed answers,
                 scales, --map and --labels parsing
  scoring        one rating vector vs the human reference: compare() -> RawMetrics, finish(), average_raws();
                 ScoringContext (the bootstrap and the reference kind the comparisons share)
  agreement      compute_agreement() -> AgreementResult (the `agreement` section + ItemVectors, the item-level
                 arrays), the ceiling, baselines, alpha; judge_health()
  ensembles      evaluate_ensembles(): the `ensembles` and `calibration` keys (math in autofeedback.ensemble)
  before_after   before_after() and the before/after image grid
"""

from .stage import EVAL_STEPS, OWN_KEYS, format_summary, run, write_metrics

__all__ = ["EVAL_STEPS", "OWN_KEYS", "format_summary", "run", "write_metrics"]
