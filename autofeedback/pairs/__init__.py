"""pairs: judgments (or human labels) -> preference pairs, pointwise labels and prompt augmentations.

Reads:   RUN/judgments.parquet      judge, mode, template, prompt_id, image_ids, label, score, choice, ranking,
                                    status (ok rows vote; the other rows only tell which orders were asked)
         or RUN/human_labels.parquet (--source human_labels; annotator plays the judge, every row is ok)
         RUN/prompts.parquet        prompt text and metadata (augmentations); RUN/images.parquet as a fallback
Writes:  RUN/preferences.parquet    pair_id, prompt_id, prompt, chosen_image_id, rejected_image_id, margin,
                                    agreement, source, created_at
         RUN/labels.parquet         label_id, image_id, prompt_id, prompt, label, score, agreement, judges, source,
                                    created_at (one row per image judged pointwise; for reward training)
         RUN/augmentations.parquet  aug_id, image_id, prompt_id, prompt, perturbed, changed, created_at
                                    (N-1 prompts with one concept changed, Lee et al.; from the
                                    prompt's suite hook, autofeedback.suites)
         RUN/report/pairs.json      the config, the summary and every judge's templates (provenance for export)
Columns: margin     strength of the preference in the judge's units: score difference (pointwise), 1 (pairwise),
                    rank distance (listwise); several judges: mean over those that agree (majority) or the mean
                    signed margin (mean). A kept tie (--tie-policy keep) has margin 0.
         agreement  one judge: the share of its votes (the two orders of a pairwise pair, or the rankings that hold
                    the pair) that agree with the verdict; several judges: the share of judges that agree.
         source     "TABLE:JUDGE/MODE[+JUDGE/MODE...]" - which table and judges the pair comes from.

How each mode votes (a voter = one judge, mode and template):
  pointwise, vqa, caption  images of one prompt, compared two by two on their label (aligned vs not aligned) or
                           score; equal values are ties; an image labeled both ways by one judge is dropped
  pairwise                 the pair's verdict: with --orders consistent, a pair asked in both orders counts only when
                           both answered ok, and is a tie when they disagree (judge.combine_orders); with --orders any,
                           every order is a vote
  listwise                 all pairs of a ranking; tied images (human rankings, "a=b") are ties, kept apart
Then the votes of several voters on one pair are combined (--combine), ties dropped or kept, --min-margin applied,
and at most --max-pairs-per-prompt pairs kept per prompt (a seeded sample). Everything is vectorized (numpy,
pyarrow): a million judgment rows take seconds (bench/pairs.py).

Re-running is idempotent: pair_id = content_id(source table, prompt_id, chosen, rejected), and the rows this
command derived from the same source table are replaced, so a changed option never leaves stale pairs behind.

Modules: stage (run, format_summary: the source table in, the tables out), votes (each mode's votes, combining
voters; --ensemble through autofeedback.ensemble), augment (prompt augmentations).
"""

from .augment import perturbations
from .stage import content_ids, format_summary, run
from .votes import POINTWISE_MODES

__all__ = ["POINTWISE_MODES", "content_ids", "format_summary", "perturbations", "run"]
