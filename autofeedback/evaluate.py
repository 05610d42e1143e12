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
    failed_policy  pairwise sets: a judge's failed answers count wrong | tie | drop (autofeedback.protocol)
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
                 `before_after()`
  ensembles      null unless --ensemble: judge ensembles (zmean, rankmean, vote; learned and logistic
                 cross-fitted, out-of-fold) next to the member judges and the ceiling, a greedy
                 cost-budgeted judge selection (in-sample), and `nested`: members and weights chosen inside
                 each training fold (the honest numbers) (autofeedback/ensemble.py; docs/eval.md)
  calibration    null unless --ensemble / --calibration: cross-fitted P(aligned) per judge, ECE, Brier,
                 reliability bins
  eval           {created_at, run_dir, inputs, config}
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from . import progress, protocol, stats, tables
from .config import EvalConfig
from .errors import InputError
from .images import decode_image
from .labels import FIRST, NO, SECOND, TIE, YES  # one answer vocabulary with import-labels

RATER_COLUMNS = ("rater", "annotator", "judge", "worker_id", "worker")
MAPPABLE = ("item_id", "rater", "score", "label", "choice", "category", "prompt_id", "image_ids", "image_id",
            "mode", "status", "details")
MAX_DISCRETE = 20          # a rating scale with at most this many values counts as categorical
OWN_KEYS = ("agreement", "judge_health", "before_after", "eval", "ensembles", "calibration")


# =============================================================================== the stage
EVAL_STEPS = ("inputs", "read tables", "read ratings", "judge health", "agreement", "ensembles", "before/after",
              "report")


def _stepper(bar):
    """step(): the previous eval step is done; the bar names the next one."""
    done = [0]

    def step() -> None:
        if done[0]:
            bar.update(1)
        if done[0] < len(EVAL_STEPS):
            bar.set_postfix_str(EVAL_STEPS[done[0]])
        done[0] += 1

    step()
    return step


def run(cfg: EvalConfig, echo=None) -> dict:
    """Compute agreement and before/after metrics, write metrics.json and report.html.

    Returns this command's keys of metrics.json (agreement, judge_health, before_after, eval)."""
    run_dir = Path(cfg.run_dir)
    bar = progress.bar(len(EVAL_STEPS), "eval", unit="step", enabled=cfg.progress)
    step = _stepper(bar)
    # 1. Check inputs: which files exist, column mapping.
    mapping = parse_map(cfg.column_map)
    label_map = protocol.parse_labels(cfg.labels)
    human_path = cfg.human
    if human_path is None and tables.exists(tables.table_path(run_dir, "human_labels")):
        human_path = tables.table_path(run_dir, "human_labels")
    judgment_paths = list(cfg.judgments)
    run_judgments = tables.table_path(run_dir, "judgments")
    has_run_judgments = cfg.run_judgments and tables.exists(run_judgments)
    for p in [human_path, *judgment_paths]:
        if p is not None and not Path(p).exists():
            raise InputError(f"file not found: {p}")
    if human_path is None and not judgment_paths and not has_run_judgments:
        raise InputError(f"{run_dir}: nothing to evaluate: no judgments.parquet in the run and no --human "
                         f"or --judgments file given")
    _check_map_used(mapping, {"human": [human_path] if human_path is not None else [], "judgments": judgment_paths})

    # 2. Read the run's tables (images without pixels, prompts).
    step()
    images = _read_run_table(run_dir, "images", ["image_id", "prompt_id", "prompt", "model", "seed", "created_at"])
    prompts = _read_run_table(run_dir, "prompts", ["prompt_id", "prompt", "category", "split"])

    # 3. Read and normalize the ratings.
    step()
    judge_rows = []
    for p in judgment_paths:
        judge_rows.append(normalize(read_ratings(p, mapping, role="judgments"), p,
                                    default_rater=Path(p).stem.split(".")[0],
                                    prefer_item_id=_maps(mapping, "item_id", "judgments"), role="judge",
                                    label_map=label_map))
    if has_run_judgments:
        judge_rows.append(normalize(read_run_judgments(run_dir), run_judgments, default_rater="judge", role="judge",
                                    label_map=label_map))
    judges = _merge_sources(judge_rows)
    human = None
    if human_path is not None:
        human = normalize(read_ratings(human_path, mapping, role="human"), human_path, default_rater="human",
                          prefer_item_id=_maps(mapping, "item_id", "human"), label_map=label_map)
        human = human[human["status"] == "ok"]
        if human.empty:
            raise InputError(f"{human_path}: no usable ratings (every row has a non-ok status or no value)")

    # 4. Judge health: statuses, refusals, position consistency.
    step()
    health = judge_health(judges, cfg.bootstrap, cfg.seed) if judges is not None else {}

    # 5. Agreement with the humans.
    step()
    agreement = None
    if human is not None:
        agreement = compute_agreement(human, judges, tie_policy=cfg.tie_policy, n_boot=cfg.bootstrap,
                                      seed=cfg.seed, min_rater_items=cfg.min_rater_items, images=images,
                                      prompts=prompts, human_source=str(human_path), failed=cfg.failed,
                                      bootstrap_unit=cfg.bootstrap_unit,
                                      judge_threshold=protocol.parse_thresholds(cfg.judge_threshold),
                                      judge_scale=protocol.parse_scales(cfg.judge_scale),
                                      aligned_threshold=cfg.aligned_threshold)

    # 5b. Judge ensembles (cross-fitted), calibration to P(aligned), cost-aware selection (issue #10).
    step()
    ensembles = calibration = None
    if agreement is not None and (cfg.ensemble or cfg.calibration):
        from . import ensemble

        costs, cost_source = judge_costs(judges, cfg.judge_cost)
        ensembles, calibration, notes = ensemble.evaluate(
            agreement, cfg.ensemble, members=cfg.ensemble_judges, folds=cfg.folds, seed=cfg.seed, ridge=cfg.ridge,
            threshold=cfg.aligned_threshold, calibration=cfg.calibration or "isotonic", bins=cfg.ece_bins,
            costs=costs, cost_source=cost_source, budget=cfg.budget, repeats=cfg.fold_repeats)
        agreement["warnings"].extend(notes)

    # 6. Model before/after on the run's own pointwise judgments.
    step()
    ba = None
    if has_run_judgments and images is not None:
        jt = tables.read(run_judgments, "judgments", columns=["judge", "mode", "prompt_id", "image_ids", "label",
                                                             "score", "answers", "status"])
        ba = before_after(images, jt, prompts, judge=cfg.judge, models=cfg.models, split=cfg.split,
                          n_boot=cfg.bootstrap, seed=cfg.seed)

    # 7. Write metrics.json (merged, atomic) and the HTML report.
    step()
    metrics = {
        "agreement": agreement, "judge_health": health, "before_after": ba,
        "ensembles": ensembles, "calibration": calibration,
        "eval": {"created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "run_dir": str(run_dir),
                 "inputs": {"human": None if human_path is None else str(human_path),
                            "judgments": [str(p) for p in judgment_paths]
                            + ([str(run_judgments)] if has_run_judgments else [])},
                 "config": json.loads(cfg.model_dump_json())},
    }
    report_dir = run_dir / "report"
    with tables.run_lock(run_dir, wait=cfg.wait, hint="wait for it to finish, or pass --wait"):
        merged = write_metrics(report_dir / "metrics.json", metrics)
        grid_path = None
        if ba is not None:
            grid_path = before_after_grid(run_dir, images, prompts, jt, ba, report_dir / "before_after.png")
        html_path = None
        if cfg.html:
            from . import report

            grids = image_grids(run_dir, images, judges, agreement, ba, cfg)
            html_path = report.write_html(report_dir / "report.html", merged, grids)
    step()
    bar.close()
    if echo is not None:
        from . import report

        echo(report.format_terminal(metrics))
        written = [str(p) for p in (html_path, grid_path) if p]
        echo(f"\nwrote {report_dir / 'metrics.json'}" + (f" and {' and '.join(written)}" if written else ""))
    return _public(metrics)


def format_summary(s: dict, cfg: EvalConfig | None = None) -> str:
    """What a pipeline's eval step prints: the same tables as `autofeedback eval`."""
    from . import report

    return "eval:\n" + report.format_terminal(s)


# ============================================================================ reading inputs
def parse_map(items) -> list[dict]:
    """['item_id=image', 'mode=pairwise', 'judgments:rater=\'gpt4o\'', ...] or {'item_id': 'image'} -> the
    --map entries (autofeedback.protocol.parse_map: columns, constants, joins, per-file roles)."""
    return protocol.parse_map(items, MAPPABLE)


def _maps(mapping: list[dict], target: str, role: str) -> bool:
    return any(m["target"] == target and m["role"] in (None, role) for m in mapping)


def _check_map_used(mapping: list[dict], paths_by_role: dict[str, list]) -> None:
    if not mapping:
        return
    protocol.check_map(mapping, {role: [_columns_of(Path(p)) for p in paths] for role, paths in paths_by_role.items()})


def _columns_of(path: Path) -> list[str]:
    if path.is_dir() or path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        shards = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        try:
            return sorted({n for s in shards for n in pq.read_schema(s).names})
        except Exception:  # unreadable: read_ratings() reports it properly
            return []
    return list(read_ratings(path, None, nrows=5).columns)


def read_ratings(path, mapping=None, nrows: int | None = None, role: str = "human"):
    """A label file (Parquet file or folder, CSV/TSV, JSONL, JSON) as a DataFrame, with the --map entries
    of this role ("human" or "judgments") applied."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if path.is_dir() and path.name == "human_labels.parquet":
            # a run's own table: one row per label_id, the newest (a re-label or an undo supersedes)
            from . import tables

            df = tables.read(path, "human_labels").to_pandas()
        elif path.is_dir() or suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", nrows=nrows)
        elif suffix == ".json":  # a JSON array of records (e.g. GenAI-Bench's pairwise.json), else JSON lines
            try:
                df = pd.read_json(path)
            except ValueError:
                df = pd.read_json(path, lines=True, nrows=nrows)
        elif suffix in (".jsonl", ".ndjson"):
            try:
                df = pd.read_json(path, lines=True, nrows=nrows)
            except ValueError:
                df = pd.read_json(path)
        else:
            raise InputError(f"{path}: unknown label file type {suffix!r}; use .parquet, .csv, .tsv or .jsonl")
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise InputError(f"{path}: could not read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if nrows is not None:
        df = df.head(nrows)
    if mapping:
        specs = mapping if isinstance(mapping, list) else parse_map(mapping)
        df = protocol.apply_map(df, specs, role)
    return df


def read_run_judgments(run_dir):
    path = tables.table_path(run_dir, "judgments")
    t = tables.read(path, "judgments", columns=["judge", "mode", "prompt_id", "image_ids", "label", "score",
                                                "choice", "status", "details", "cost_usd"])
    return t.to_pandas()


def _read_run_table(run_dir: Path, name: str, columns: list[str]):
    path = tables.table_path(run_dir, name)
    if not tables.exists(path):
        return None
    return tables.read(path, name, columns=columns).to_pandas()


def _is_null(v) -> bool:
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN
    except (TypeError, ValueError):
        return False


def _as_list(v) -> list | None:
    if v is None:
        return None
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x) for x in v]
    if _is_null(v):
        return None
    s = str(v).strip()
    if s.startswith("["):
        try:
            return [str(x) for x in json.loads(s)]
        except json.JSONDecodeError:
            pass
    return [x.strip() for x in s.split("|")] if "|" in s else [s]


def _text(v):
    return None if _is_null(v) else str(v)


def normalize(df, where, default_rater: str = "rater", prefer_item_id: bool = False, role: str = "human",
              label_map: dict[str, float] | None = None):
    """Long ratings -> one row per rating: item_id, rater, kind, value, c4, category, prompt_id, status,
    consistent, first_chosen, first_sign, shown (the pair in the order shown), source.

    kind is score (a number), label (1/0) or choice (+1 = first image of the pair in sorted-id order,
    -1 = second, 0 = tie). c4 is the four-way answer of a choice (autofeedback.protocol: A, B, tie,
    both bad, a judge's undifferentiated tie). The item is image_ids when the file has it (item_id is then
    taken for a row id, as `import-labels` reads it) unless item_id was mapped explicitly (prefer_item_id),
    else item_id, else image_id. Without a prompt_id column, a prompt column (the prompt text) groups the
    items. role "judge": a choice no vocabulary knows is a failed answer (status `unparsed`), not an error.
    label_map (--labels): label words -> numbers; with a value other than 0/1 the labels become scores.
    Raises InputError naming the file, column and value for bad input.
    """
    import pandas as pd

    where = str(where)
    cols = set(df.columns)
    if len(df) == 0:
        raise InputError(f"{where}: no rows")
    if "prompt_id" not in cols and "prompt" in cols:
        df = df.assign(prompt_id=df["prompt"])
        cols.add("prompt_id")
    if label_map and "label" in cols and any(v not in (0.0, 1.0) for v in label_map.values()):
        # three-level (or more) word labels are an ordinal score: yes=1, partly=0.5, no=0
        df = df.copy()
        words = df["label"]
        mapped = [float("nan") if _is_null(v) else label_map.get(str(v).strip().lower()) for v in words]
        for i, (v, m) in enumerate(zip(words, mapped)):
            if m is None:
                raise InputError(f"{where}: row {i}: column 'label' value {v!r} is not in --labels "
                                 f"({', '.join(f'{k}={g:g}' for k, g in label_map.items())})")
        if "score" in cols:
            df["score"] = [sc if not _is_null(sc) else m for sc, m in zip(df["score"], mapped)]
        else:
            df["score"] = mapped
            cols.add("score")
        df = df.drop(columns=["label"])
        cols.discard("label")
    if "mode" in cols:  # rankings (listwise) are not compared with labels here
        df = df[~df["mode"].astype(str).str.lower().isin(["listwise"])].reset_index(drop=True)
        if len(df) == 0:
            raise InputError(f"{where}: only listwise rows; eval compares scores, labels and pairwise choices")
    n = len(df)
    # rater
    rater_col = next((c for c in RATER_COLUMNS if c in cols), None)
    raters = (df[rater_col].astype(str) if rater_col else pd.Series([default_rater] * n, index=df.index))
    if rater_col and df[rater_col].isna().any():
        row = int(np.flatnonzero(df[rater_col].isna())[0])
        raise InputError(f"{where}: column {rater_col!r} has empty values (row {row})")
    modes = df["mode"].astype(str).str.lower() if "mode" in cols else pd.Series([None] * n, index=df.index)
    # item ids and the pair shown
    id_lists = [_as_list(v) for v in df["image_ids"]] if "image_ids" in cols else [None] * n
    if "item_id" in cols and (prefer_item_id or "image_ids" not in cols):
        if df["item_id"].isna().any():
            row = int(np.flatnonzero(df["item_id"].isna())[0])
            raise InputError(f"{where}: column 'item_id' has empty values (row {row})")
        items = df["item_id"].astype(str).tolist()
    elif "image_ids" in cols:
        items = []
        for i, ids in enumerate(id_lists):
            if not ids:
                raise InputError(f"{where}: row {i}: empty image_ids")
            items.append(ids[0] if len(ids) == 1 else "|".join(sorted(ids)))
    elif "image_id" in cols:
        items = df["image_id"].astype(str).tolist()
    else:
        raise InputError(f"{where}: no item column: need item_id (or image_ids / image_id); it has: "
                         f"{', '.join(map(str, df.columns))}. Map one with --map item_id=COLUMN")
    status = (df["status"].fillna("ok").astype(str).str.lower() if "status" in cols
              else pd.Series(["ok"] * n, index=df.index))
    consistent = [None] * n
    if "details" in cols:
        for i, d in enumerate(df["details"]):
            if isinstance(d, str) and d.strip():
                try:
                    obj = json.loads(d)
                except json.JSONDecodeError:
                    raise InputError(f"{where}: row {i}: column 'details' is not JSON: {d[:80]!r}") from None
                if isinstance(obj, dict) and isinstance(obj.get("consistent"), bool):
                    consistent[i] = obj["consistent"]
            elif isinstance(d, dict) and isinstance(d.get("consistent"), bool):
                consistent[i] = d["consistent"]
    score = df["score"] if "score" in cols else None
    label = df["label"] if "label" in cols else None
    choice = df["choice"] if "choice" in cols else None
    if score is None and label is None and choice is None:
        raise InputError(f"{where}: no rating column: need score, label or choice; it has: "
                         f"{', '.join(map(str, df.columns))}. Map one with --map score=COLUMN")
    # per rater: which value column to use for pointwise rows
    kinds, values, first_chosen, first_sign, shown, alt_label, c4s = [], [], [], [], [], [], []
    unparsed = np.zeros(n, dtype=bool)
    empty = np.zeros(n, dtype=bool)   # no score, label or choice at all: takes the kind of the rater's other rows
    score_raters = set(raters[score.notna()]) if score is not None else set()
    for i in range(n):
        r = raters.iat[i]
        mode = modes.iat[i]
        ids = id_lists[i]
        c = None if choice is None else choice.iat[i]
        empty[i] = _is_null(c) and (score is None or _is_null(score.iat[i])) and (
            label is None or _is_null(label.iat[i]))
        is_pair = mode == "pairwise" or (ids is not None and len(ids) == 2 and not _is_null(c)) or (
            not _is_null(c) and (score is None or _is_null(score.iat[i])) and (label is None or _is_null(label.iat[i])))
        fc, fs, sh, c4 = None, 1.0, None, float("nan")
        if is_pair:
            kind = "choice"
            val, fc, fs, sh, c4 = _parse_choice(c, ids, where, i, strict=role != "judge")
            unparsed[i] = not _is_null(c) and not np.isfinite(val)
        elif r in score_raters:
            kind = "score"
            val = _parse_score(score.iat[i], where, "score", i)
        elif label is not None:
            kind = "label"
            val = _parse_label(label.iat[i], where, i)
        else:
            kind = "score"
            val = float("nan")
        kinds.append(kind)
        values.append(val)
        c4s.append(c4)
        alt_label.append(_parse_label(label.iat[i], where, i) if kind == "score" and label is not None
                         else float("nan"))
        first_chosen.append(fc)
        first_sign.append(fs)
        shown.append(sh)
    # a row without any answer (a failed request) belongs to its rater's kind: one judge, whatever its failures
    # look like, not a second "pointwise" judge made of its pairwise failures (issue #22)
    if empty.any() and (~empty).any():
        main = pd.Series(kinds)[~empty].groupby(raters[~empty].to_numpy()).agg(lambda k: k.value_counts().index[0])
        for i in np.flatnonzero(empty):
            kinds[i] = main.get(raters.iat[i], kinds[i])
    out = pd.DataFrame({
        "item_id": items, "rater": raters.tolist(), "kind": kinds, "value": np.asarray(values, dtype=np.float64),
        "c4": np.asarray(c4s, dtype=np.float64),
        "category": [_text(v) for v in df["category"]] if "category" in cols else [None] * n,
        "prompt_id": [_text(v) for v in df["prompt_id"]] if "prompt_id" in cols else [None] * n,
        "status": status.tolist(), "consistent": consistent,
        "cost_usd": (pd.to_numeric(df["cost_usd"], errors="coerce").to_numpy(dtype=np.float64) if "cost_usd" in cols
                     else np.full(n, np.nan)), "alt_label": alt_label, "first_chosen": first_chosen,
        "first_sign": first_sign, "shown": shown, "source": where,
    })
    # a judge used in several modes (pointwise, pairwise, vqa...) is one rater per mode
    out["mode"] = [m if m not in (None, "none", "nan") else ("pairwise" if k == "choice" else "pointwise")
                   for m, k in zip(modes.tolist(), kinds)]
    mixed = out.groupby("rater")["mode"].nunique()
    for r in mixed[mixed > 1].index:
        sel = out["rater"] == r
        out.loc[sel, "rater"] = r + "/" + out.loc[sel, "mode"]
    ok = out["status"] == "ok"
    out.loc[ok & unparsed, "status"] = "unparsed"
    missing = (out["status"] == "ok") & out["value"].isna()
    if (missing | (ok & unparsed)).all():
        raise InputError(f"{where}: every row lacks a usable value in score/label/choice")
    out.loc[missing, "status"] = "no_value"
    return out


def _parse_score(v, where, col, i) -> float:
    if _is_null(v):
        return float("nan")
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InputError(f"{where}: row {i}: column {col!r} value {v!r} is not a number") from None


def _parse_label(v, where, i) -> float:
    if _is_null(v):
        return float("nan")
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    s = str(v).strip().lower()
    if s in YES:
        return 1.0
    if s in NO:
        return 0.0
    raise InputError(f"{where}: row {i}: column 'label' value {v!r} is not a yes/no label "
                     f"(use true/false, yes/no or 1/0)")


def _parse_choice(c, ids, where, i, strict: bool = True):
    """-> (canonical sign, first_chosen, first_sign, shown, four-way code). sign +1 = sorted-first image
    preferred. Arena answers (leftvote, [[A>B]], bothbad_vote, [[A=B=Good]]...) are read too; both-bad is a
    tie for the sign and stays distinct in the four-way code. A plain "tie" is a human's tie (both good) and a
    judge's undifferentiated tie. strict=False (judges): an unknown answer is NaN (a failed answer)."""
    nan = float("nan")
    if _is_null(c):
        return nan, None, 1.0, None, nan
    s = str(c).strip()
    low = s.lower()
    arena = protocol.arena_answer(s)
    tie_code = stats.C4_TIE if strict else stats.C4_TIE_ANY
    pos = "A" if (low in FIRST or arena == "A") else "B" if (low in SECOND or arena == "B") else None
    tie = arena if arena in ("tie", "both_bad", "tie_any") else ("tie" if low in TIE else None)
    if ids is not None and len(ids) == 2:
        canon = sorted(ids)
        fs = 1.0 if ids[0] == canon[0] else -1.0
        shown = "|".join(ids)
        if s in ids:
            chosen = s
        elif pos is not None:
            chosen = ids[0] if pos == "A" else ids[1]
        elif tie is not None:
            return 0.0, None, fs, shown, (protocol.CODE[tie] if arena else tie_code)
        elif not strict:
            return nan, None, fs, shown, nan
        else:
            raise InputError(f"{where}: row {i}: column 'choice' value {c!r} is neither image of the pair "
                             f"{ids} nor A/B, first/second, 0/1 (position), tie or both-bad")
        sign = 1.0 if chosen == canon[0] else -1.0
        return sign, chosen == ids[0], fs, shown, (stats.C4_A if sign > 0 else stats.C4_B)
    if pos == "A":
        return 1.0, True, 1.0, None, stats.C4_A
    if pos == "B":
        return -1.0, False, 1.0, None, stats.C4_B
    if tie is not None:
        return 0.0, None, 1.0, None, (protocol.CODE[tie] if arena else tie_code)
    if not strict:
        return nan, None, 1.0, None, nan
    raise InputError(f"{where}: row {i}: column 'choice' value {c!r} is not A/B, first/second, 0/1 (position), "
                     f"tie or both-bad (or give the pair in image_ids and the chosen image id)")


def _merge_sources(frames):
    import pandas as pd

    if not frames:
        return None
    seen: dict[str, str] = {}
    fixed = []
    for f in frames:
        f = f.copy()
        for r in f["rater"].unique():
            src = f["source"].iat[0]
            if r in seen and seen[r] != src:
                f.loc[f["rater"] == r, "rater"] = f"{r}@{Path(src).name}"
            else:
                seen[r] = src
        fixed.append(f)
    return pd.concat(fixed, ignore_index=True)


def judge_costs(judges, option: dict[str, float] | None) -> tuple[dict[str, float], dict[str, str]]:
    """USD per judge: --judge-cost NAME=USD when given, else the sum of its rows' cost_usd (every row,
    ok or not: failed calls cost too), else free (0)."""
    costs: dict[str, float] = {}
    source: dict[str, str] = {}
    if judges is not None and "cost_usd" in judges:
        for name, c in judges.groupby("rater")["cost_usd"]:
            if c.notna().any():
                costs[name] = float(c.sum())
                source[name] = "judgments.cost_usd"
    for name, usd in (option or {}).items():
        costs[name] = float(usd)
        source[name] = "--judge-cost"
    return costs, source


# ============================================================================ judge health
def judge_health(judges, n_boot: int = 2000, seed: int = 0) -> dict:
    out = {}
    for name, g in judges.groupby("rater", sort=True):
        counts = Counter(g["status"])
        n = len(g)
        h = {"source": g["source"].iat[0], "n_rows": n, "status": dict(sorted(counts.items())),
             "ok_rate": round(counts.get("ok", 0) / n, 6),
             "refusal_rate": round(counts.get("refused", 0) / n, 6),
             "parse_error_rate": round(counts.get("parse_error", 0) / n, 6),
             "error_rate": round(1 - counts.get("ok", 0) / n, 6),
             "position_consistency": None, "first_position_rate": None}
        pair = g[(g["kind"] == "choice") & (g["status"] == "ok")]
        if len(pair):
            flags = pair["consistent"].dropna()
            if len(flags):
                cons = flags.astype(float).to_numpy()
            else:
                cons = _derived_consistency(pair)
            if len(cons):
                rs = stats.Resampler(len(cons), n_boot, seed)
                h["position_consistency"] = stats.estimate(lambda w, c=cons: (w @ c) / w.sum(1), rs)
            decided = pair["first_chosen"].dropna().astype(float).to_numpy()
            if len(decided):
                rs = stats.Resampler(len(decided), n_boot, seed)
                h["first_position_rate"] = stats.estimate(lambda w, d=decided: (w @ d) / w.sum(1), rs)
        out[name] = h
    return out


def _derived_consistency(pair) -> np.ndarray:
    """Pairs asked in both orders: consistent iff the canonical choice is the same in every order."""
    res = []
    for _, g in pair.dropna(subset=["shown"]).groupby("item_id"):
        if g["shown"].nunique() >= 2:
            res.append(float(g["value"].nunique() == 1))
    return np.asarray(res, dtype=np.float64)


# ============================================================================ agreement
class _Reference:
    """The human side on the item index: ratings matrix, mean, majority, groups, categories."""

    def __init__(self, human, items: list[str], kind: str):
        self.items = items
        self.kind = kind
        agg = _aggregate(human, kind)
        self.raters = sorted(agg["rater"].unique())
        mat = agg.pivot(index="item_id", columns="rater", values="value").reindex(index=items, columns=self.raters)
        self.matrix = mat.to_numpy(dtype=np.float64)
        self.mean = np.nanmean(np.where(np.isfinite(self.matrix), self.matrix, np.nan), axis=1) \
            if self.matrix.size else np.zeros(0)
        self.majority = _majority(self.matrix)
        vals = np.unique(self.matrix[np.isfinite(self.matrix)])
        if kind == "choice":
            vals = np.array([-1.0, 0.0, 1.0])
        elif kind == "label":
            vals = np.array([0.0, 1.0])
        self.values = vals
        self.discrete = len(vals) <= MAX_DISCRETE
        self.first_sign = (human.groupby("item_id")["first_sign"].first().reindex(items).fillna(1.0)
                           .to_numpy(dtype=np.float64))
        # four-way answers (pairwise sets): one code per (item, rater), the raters' majority per item
        self.matrix4 = self.ref4 = None
        if kind == "choice":
            a4 = _aggregate4(human, "human")
            self.matrix4 = (a4.pivot(index="item_id", columns="rater", values="c4")
                            .reindex(index=items, columns=self.raters).to_numpy(dtype=np.float64))
            self.ref4 = protocol.majority4(self.matrix4)
            self.both_bad = bool((self.matrix4 == stats.C4_BOTH_BAD).any())


def _aggregate4(rows, role: str):
    """One four-way code per (item, rater) (protocol.aggregate4)."""
    g = rows.groupby(["item_id", "rater"], sort=False)["c4"].agg(lambda c: protocol.aggregate4(c.to_numpy(), role))
    return g.reset_index()


def _aggregate(rows, kind: str):
    """One value per (item, rater): mean of repeats; labels by majority (a 50/50 split is dropped);
    choices by the sign of the mean (orders that disagree become a tie)."""
    g = rows.groupby(["item_id", "rater"], sort=False)["value"].mean().reset_index()
    if kind == "label":
        g["value"] = np.where(g["value"] > 0.5, 1.0, np.where(g["value"] < 0.5, 0.0, np.nan))
    elif kind == "choice":
        g["value"] = np.sign(g["value"])
    return g.dropna(subset=["value"])


def _majority(matrix: np.ndarray) -> np.ndarray:
    """Most common value per row; NaN when there is no rating or no unique mode."""
    out = np.full(matrix.shape[0], np.nan)
    for i, row in enumerate(matrix):
        row = row[np.isfinite(row)]
        if row.size == 0:
            continue
        vals, counts = np.unique(row, return_counts=True)
        top = counts == counts.max()
        if top.sum() == 1:
            out[i] = vals[top][0]
    return out


def compute_agreement(human, judges, tie_policy: str = "half", n_boot: int = 2000, seed: int = 0,
                      min_rater_items: int = 10, images=None, prompts=None, human_source: str = "",
                      failed: str = "wrong", bootstrap_unit: str = "auto", judge_threshold=None, judge_scale=None,
                      aligned_threshold: float | None = None) -> dict:
    """Agreement of every judge with the human reference, baselines and the human ceiling.

    Every judge is scored twice: against the mean (majority) of all raters (`metrics`), and against the
    mean of the other n-1 raters for each left-out rater, averaged over raters (`metrics_loo`) - the
    target of the human ceiling (issue #22). The bootstrap resamples prompts when every item has a
    prompt_id (bootstrap_unit auto|prompt), else items."""
    kinds = set(human["kind"])
    if len(kinds) > 1:
        raise InputError(f"{human_source}: human ratings mix kinds {sorted(kinds)}; use one of score, label "
                         f"or choice per file")
    kind = kinds.pop()
    items = sorted(human["item_id"].unique())
    index = {it: i for i, it in enumerate(items)}
    ref = _Reference(human, items, kind)
    n = len(items)
    notes: list[str] = []

    # item metadata: category and prompt group, from the human file, else the judges, else the run.
    category = _item_attr(items, human, judges, "category")
    group = _item_attr(items, human, judges, "prompt_id")
    if images is not None and len(images):
        by_image = images.set_index("image_id")
        for i, it in enumerate(items):
            if group[i] is None and it in by_image.index:
                group[i] = by_image.at[it, "prompt_id"]
        if prompts is not None and len(prompts):
            pcat = dict(zip(prompts["prompt_id"], prompts["category"]))
            for i in range(n):
                if category[i] is None and group[i] is not None:
                    category[i] = pcat.get(group[i])
    has_prompts = n > 0 and all(g is not None for g in group)
    prompt_codes = None
    if has_prompts:
        codes = {g: k for k, g in enumerate(sorted(set(group)))}
        prompt_codes = np.array([codes[g] for g in group], dtype=np.float64)
    groups = prompt_codes if kind != "choice" else None
    pairwise_unit = ("pairs (the items themselves) of pairwise choices" if kind == "choice" else
                     "pairs of items with the same prompt_id" if groups is not None else "all pairs of items")
    cats = sorted({c for c in category if c is not None})
    cat_masks = {c: np.array([x == c for x in category], dtype=np.float64) for c in cats} if len(cats) > 1 else {}

    # the bootstrap unit: prompts (clusters) when every item has one, else items
    if bootstrap_unit not in ("auto", "prompt", "item"):
        raise InputError(f"--bootstrap-unit {bootstrap_unit!r}: use auto, prompt or item")
    if bootstrap_unit == "prompt" and not has_prompts:
        raise InputError("--bootstrap-unit prompt: not every item has a prompt_id (map one with --map prompt_id=COL)")
    by_prompt = has_prompts and bootstrap_unit != "item"
    rs = stats.Resampler(n, n_boot, seed, clusters=prompt_codes if by_prompt else None)
    rs_prompts = None
    if has_prompts:  # within-prompt statistics: CI over prompts, the same draws as rs when it resamples prompts
        rs_prompts = rs if by_prompt else stats.Resampler(n, n_boot, seed, clusters=prompt_codes)
    ctx = {"ref_kind": kind, "groups": groups, "tie_policy": tie_policy, "rs": rs, "rs_prompts": rs_prompts,
           "prompt_codes": prompt_codes}
    loo = protocol.LooTargets(ref.matrix, ref.raters, kind, _majority, min_rater_items, ref.matrix4)

    # judges
    judge_out: dict = {}
    judge_vectors: dict[str, np.ndarray] = {}
    if judges is not None:
        ok = judges[judges["status"] == "ok"]
        tried = judges.groupby("rater")["item_id"].agg(lambda s: set(s))
        for name, g in ok.groupby("rater", sort=True):
            jkind = g["kind"].iat[0]
            if kind == "label" and jkind == "score" and g["alt_label"].notna().any():
                g = g.assign(value=g["alt_label"], kind="label")  # yes/no humans: compare the judge's yes/no
                jkind = "label"
            agg = _aggregate(g, jkind)
            x = np.full(n, np.nan)
            hit = agg["item_id"].map(index)
            x[hit.dropna().astype(int).to_numpy()] = agg["value"].to_numpy()[hit.notna().to_numpy()]
            n_items = int(np.isfinite(x).sum())
            entry = {"source": g["source"].iat[0], "kind": jkind, "n_items": n_items,
                     "n_unmatched": int(hit.isna().sum())}
            if n_items == 0:
                notes.append(f"judge {name!r}: none of its {len(agg)} item ids matches a human item id "
                                f"(e.g. judge {agg['item_id'].iat[0]!r} vs human {items[0]!r}); use --map")
                entry["metrics"] = {}
                judge_out[name] = entry
                continue
            if not _comparable(jkind, kind):
                notes.append(f"judge {name!r} gives {jkind} ratings, humans give {kind}: not comparable")
                entry["metrics"] = {}
                judge_out[name] = entry
                continue
            x4 = None
            if kind == "choice":
                a4 = _aggregate4(g, "judge")
                x4 = np.full(n, np.nan)
                h4 = a4["item_id"].map(index)
                x4[h4.dropna().astype(int).to_numpy()] = a4["c4"].to_numpy()[h4.notna().to_numpy()]
                # failed answers: rows for the item (any status), no usable choice
                asked = np.array([it in tried.get(name, set()) for it in items])
                failed_items = asked & ~np.isfinite(x)
                entry["n_failed"] = int(failed_items.sum())
                entry["failed_policy"] = failed
                x, x4 = protocol.apply_failed(x, x4, failed_items, failed)
            judge_vectors[name] = x
            view = protocol.categorical_view(x, jkind, kind, ref.values, ref.mean, ref.majority, name,
                                             judge_threshold, judge_scale, aligned_threshold)
            xcat, rmaj, rvals, scale_note = view
            if scale_note:
                entry["scale"] = scale_note
                entry["scale_status"] = "skipped" if xcat is None else "converted"
            entry["metrics"] = _finish(_compare(x, jkind, ref.mean, ref.majority, ref.values, ctx, x4=x4,
                                                ref4=ref.ref4, cat=view))
            if loo:
                entry["metrics_loo"] = _average_raws(protocol.loo_raws(x, jkind, loo, ref.values, ctx, _compare,
                                                                       x4=x4))
            entry["per_category"] = {
                c: {"n_items": int((np.isfinite(x) * m).sum()),
                    "metrics": _finish(_compare(x, jkind, ref.mean, ref.majority, ref.values, ctx, mask=m, x4=x4,
                                                ref4=ref.ref4, cat=view, per_prompt=False))}
                for c, m in cat_masks.items()}
            if kind == "choice":
                entry["confusion4"] = protocol.confusion4(x4, ref.ref4)
            judge_out[name] = entry
        if judge_out and all(j["n_items"] == 0 for j in judge_out.values()):
            raise InputError("no judge rated any of the human-labeled items: "
                             + "; ".join(notes[:3]))

    # the human side: alpha among raters, leave-one-rater-out ceiling
    human_out = {"source": human_source, "kind": kind, "n_items": n, "n_raters": len(ref.raters),
                 "n_ratings": int(np.isfinite(ref.matrix).sum()),
                 "ratings_per_item": round(float(np.isfinite(ref.matrix).sum(1).mean()), 3) if n else 0,
                 "values": [float(v) for v in ref.values] if ref.discrete else None,
                 "categories": cats, "alpha": None, "ceiling": None,
                 "n_prompts": int(len(set(group))) if has_prompts else None}
    if kind == "choice":
        human_out["answers4"] = {protocol.NAMES4[float(c)]: int(k) for c, k in
                                 zip(*np.unique(ref.ref4[np.isfinite(ref.ref4)], return_counts=True))}
    pairable = (np.isfinite(ref.matrix).sum(1) >= 2)
    if pairable.any():
        human_out["alpha"] = _alphas(ref.matrix, kind, ref.discrete, rs)
        human_out["ceiling"] = _ceiling(ref, ctx, cat_masks, min_rater_items, loo)
    else:
        notes.append("one rating per item: no human-human agreement or ceiling")

    # baselines
    baselines = _baselines(ref, ctx, seed)
    clip = [j for j in judge_vectors if "clip" in j.lower()]
    if clip:
        baselines["clip_score"] = {"judge": clip[0], "metrics": judge_out[clip[0]]["metrics"]}

    unit = ("prompt_id" if by_prompt else "item")
    return {
        "human": human_out,
        "reference": {"correlations": "mean of the human raters per item",
                      "categorical": "majority of the human raters per item (items without one are left out)",
                      "loo": "metrics_loo and the ceiling: against the mean (majority) of the other n-1 raters on "
                             "the items the left-out rater rated, averaged over the left-out raters"},
        "primary_metric": "pairwise_accuracy" if kind == "choice" else "spearman",
        "tie_policy": tie_policy,
        "failed_policy": failed if kind == "choice" else None,
        "pairwise_unit": pairwise_unit,
        "bootstrap": {"n": n_boot, "seed": seed, "level": 0.95, "unit": unit, "method": "percentile",
                      "n_units": rs.n_units,
                      "note": ("cluster bootstrap: whole prompts are resampled" if by_prompt else
                               "items are resampled" + ("" if has_prompts else " (no prompt_id on every item)"))},
        "judges": judge_out,
        "baselines": baselines,
        "warnings": notes,
        "_items": {"ids": items, "mean": ref.mean, "vectors": judge_vectors,  # for the report; not written
                   "majority": ref.majority, "values": ref.values, "ctx": ctx,   # for autofeedback.ensemble
                   "loo": loo},
    }


def _item_attr(items, human, judges, col):
    vals = {}
    for frame in (human, judges):
        if frame is None or col not in frame:
            continue
        sub = frame.dropna(subset=[col])
        for it, v in zip(sub["item_id"], sub[col]):
            vals.setdefault(it, v)
    return [vals.get(it) for it in items]


def _comparable(jkind: str, hkind: str) -> bool:
    if "choice" in (jkind, hkind):
        return jkind == hkind
    return True


def _compare(x, xkind, ref_mean, ref_major, ref_values, ctx, mask=None, x4=None, ref4=None, cat=None,
             per_prompt: bool = True) -> dict:
    """Raw metric estimates of x vs a reference: {name: (point, boot array, n)}.

    x4 / ref4: four-way answers (pairwise sets): accuracy_4way. cat: protocol.categorical_view() of a judge
    on another scale (binarized or rescaled values for accuracy, kappa, alpha). per_prompt: the mean over
    prompts of the within-prompt correlations (CI over prompts)."""
    rs: stats.Resampler = ctx["rs"]
    hkind, groups, policy = ctx["ref_kind"], ctx["groups"], ctx["tie_policy"]
    m = np.ones(len(x)) if mask is None else mask
    valid = np.isfinite(x) & np.isfinite(ref_mean) & (m > 0)
    nv = int(valid.sum())
    out: dict = {}

    def boot(fn):
        return rs.apply(lambda w: fn(w * m))

    def point(fn):
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(fn(m[None, :])[0])

    if nv == 0:
        return out
    if hkind == "choice":
        fn = lambda w: stats.w_choice_accuracy(x, ref_mean, w, policy)  # noqa: E731
        out["pairwise_accuracy"] = (point(fn), boot(fn), nv)
        out["_pairs"] = {"items": nv}
        if x4 is not None and ref4 is not None:
            v4 = np.isfinite(x4) & np.isfinite(ref4) & (m > 0)
            if v4.any():
                f4 = lambda w: stats.w_choice4_accuracy(x4, ref4, w)  # noqa: E731
                out["accuracy_4way"] = (point(f4), boot(f4), int(v4.sum()))
    else:
        xs, ys = x[valid], ref_mean[valid]
        out["spearman"] = (stats.spearman(xs, ys),
                           boot(lambda w: stats.w_spearman(x, ref_mean, w)), nv)
        taus = np.concatenate([stats.w_kendall_taus(x, ref_mean, w * m) for w in rs.weights()]) \
            if rs.n else np.full((rs.n_boot, 2), np.nan)
        out["kendall_tau_b"] = (stats.kendall_tau_b(xs, ys), taus[:, 0], nv)
        out["kendall_tau_c"] = (stats.kendall_tau_c(xs, ys), taus[:, 1], nv)
        g = None if groups is None else groups[valid]
        rp = ctx.get("rs_prompts")
        gs = None
        if groups is not None and (rs.clusters is not None or (per_prompt and rp is not None)):
            gs = stats.group_stats(np.where(m > 0, x, np.nan), ref_mean, groups, correlations=per_prompt)
        if groups is not None and rs.clusters is not None:
            # whole prompts resampled: each prompt's pairs count once per draw of the prompt
            terms = stats.group_pair_terms(gs)
            fn = lambda wg: stats.w_grouped_pairwise_accuracy(terms, wg, policy)  # noqa: E731
            with np.errstate(invalid="ignore", divide="ignore"):
                pt = float(fn(np.ones((1, len(terms["total"]))))[0])
            out["pairwise_accuracy"] = (pt, rs.apply_units(fn), nv)
        else:
            fn = lambda w: stats.w_pairwise_accuracy(x, ref_mean, w, groups, policy)  # noqa: E731
            out["pairwise_accuracy"] = (point(fn), boot(fn), nv)
        out["_pairs"] = stats.pairwise_counts(xs, ys, g)
        if per_prompt and rp is not None and gs is not None:
            for name in ("spearman", "kendall_tau_b", "kendall_tau_c"):
                v = gs[name]
                nd = int(np.isfinite(v).sum())
                if nd == 0:
                    continue
                with np.errstate(invalid="ignore", divide="ignore"):
                    pt = float(stats.w_group_mean(v)[0])
                out[f"{name}_per_prompt"] = (pt, rp.apply_units(lambda wg, v=v: stats.w_group_mean(v, wg)), nd)
            out["_per_prompt"] = {"prompts": int((gs["n"] > 0).sum()),
                                  "defined": int(np.isfinite(gs["spearman"]).sum())}
    # same discrete scale: categorical agreement and alpha
    xc, rmaj, rvals = x, ref_major, ref_values
    if cat is not None and cat[0] is not None:
        xc, rmaj, rvals = cat[0], cat[1], cat[2]
    xv = np.unique(xc[np.isfinite(xc)])
    if hkind == "choice":
        xv = xv[np.abs(xv) <= 1]  # 2 = a failed answer counted wrong (--failed wrong)
    same_scale = (xkind == hkind or {xkind, hkind} <= {"score", "label"}) and len(rvals) <= MAX_DISCRETE \
        and np.isin(xv, rvals).all()
    if same_scale:
        vm = np.isfinite(xc) & np.isfinite(rmaj) & (m > 0)
        if vm.any():
            fa = lambda w: stats.w_accuracy(xc, rmaj, w)  # noqa: E731
            fk = lambda w: stats.w_cohen_kappa(xc, rmaj, w)  # noqa: E731
            out["accuracy"] = (point(fa), boot(fa), int(vm.sum()))
            out["cohen_kappa"] = (point(fk), boot(fk), int(vm.sum()))
            pair_major = np.column_stack([xc, rmaj])
            fn = lambda w: stats.w_krippendorff_alpha(pair_major, w, "nominal")  # noqa: E731
            out["alpha_nominal"] = (point(fn), boot(fn), int(vm.sum()))
        binary = cat is not None and cat[0] is not None and len(rvals) == 2 and hkind == "score"
        if hkind == "score" and not binary:
            pair_mean = np.column_stack([xc, ref_mean])
            for level in ("ordinal", "interval"):
                try:
                    fn = lambda w, lv=level: stats.w_krippendorff_alpha(pair_mean, w, lv)  # noqa: E731
                    out[f"alpha_{level}"] = (point(fn), boot(fn), nv)
                except ValueError:
                    pass
    return out


def _finish(raw: dict) -> dict:
    """Raw (point, boot, n) -> {"value", "ci95", "n"} (+ pair counts for pairwise_accuracy)."""
    out = {}
    pairs = raw.get("_pairs")
    for name, val in raw.items():
        if name.startswith("_"):
            continue
        point, boot, n = val
        lo, hi = stats.percentile_ci(boot)
        out[name] = {"value": stats.round_or_none(point, 6), "ci95": [stats.round_or_none(lo, 6), stats.round_or_none(hi, 6)], "n": n}
        if name == "pairwise_accuracy" and pairs is not None:
            out[name]["pairs"] = pairs
        if name.endswith("_per_prompt") and raw.get("_per_prompt"):
            out[name]["prompts"] = raw["_per_prompt"]["prompts"]
    return out


def _alphas(matrix, kind, discrete, rs) -> dict:
    levels = ("nominal",) if kind in ("label", "choice") else ("nominal", "ordinal", "interval")
    out = {}
    for level in levels:
        if level != "interval" and not discrete:
            out[level] = None
            continue
        fn = lambda w, lv=level: stats.w_krippendorff_alpha(matrix, w, lv)  # noqa: E731
        n_units = int((np.isfinite(matrix).sum(1) >= 2).sum())
        out[level] = stats.estimate(fn, rs, n=n_units)
    return out


def _ceiling(ref: _Reference, ctx, cat_masks, min_rater_items: int, loo: protocol.LooTargets) -> dict | None:
    """Leave-one-rater-out: each rater vs the mean (majority) of the others, averaged over raters; the
    per-rater values are kept (`per_rater`), so one deviant rater is visible."""
    raws, per_rater = [], {}
    per_cat_raws: dict[str, list] = {c: [] for c in cat_masks}
    for e in loo.entries:
        raw = _compare(e["x"], ref.kind, e["mean"], e["majority"], ref.values, ctx, x4=e["x4"], ref4=e["ref4"])
        raws.append(raw)
        per_rater[e["rater"]] = {"n_items": int(e["mask"].sum()), "metrics": _finish(raw)}
        for c, m in cat_masks.items():
            per_cat_raws[c].append(_compare(e["x"], ref.kind, e["mean"], e["majority"], ref.values, ctx, mask=m,
                                            x4=e["x4"], ref4=e["ref4"], per_prompt=False))
    if not raws:
        return None
    return {"method": f"leave-one-rater-out: each rater with >= {min_rater_items} items vs the mean of the "
                      f"other raters (majority for accuracy, kappa, nominal alpha), averaged over raters",
            "n_raters": len(raws), "raters": loo.raters[:50],
            "metrics": _average_raws(raws),
            "per_rater": per_rater,
            "per_category": {c: {"metrics": _average_raws(v)} for c, v in per_cat_raws.items() if v}}


def _average_raws(raws: list[dict]) -> dict:
    """Metrics averaged over raters (point and each resample); a rater where a metric is undefined is left out."""
    names = list(dict.fromkeys(k for r in raws for k in r if not k.startswith("_")))
    out = {}
    for name in names:
        vals = [r[name] for r in raws if name in r]
        if not vals:
            continue
        with warnings.catch_warnings():  # a resample where every rater is undefined stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            point = float(np.nanmean([v[0] for v in vals]))
            boot = np.nanmean(np.vstack([v[1] for v in vals]), axis=0)
        lo, hi = stats.percentile_ci(boot)
        out[name] = {"value": stats.round_or_none(point, 6), "ci95": [stats.round_or_none(lo, 6), stats.round_or_none(hi, 6)],
                     "n": int(max(v[2] for v in vals))}
    return out


def _baselines(ref: _Reference, ctx, seed: int) -> dict:
    n = len(ref.items)
    has = np.isfinite(ref.mean)
    rng = np.random.default_rng([seed, 1])
    out = {}
    if ref.kind == "choice":
        rand = rng.choice([-1.0, 1.0], size=n)
        rand4 = rng.choice([stats.C4_A, stats.C4_B, stats.C4_TIE, stats.C4_BOTH_BAD], size=n)
        out["random"] = {"description": "picks one image of each pair at random (four-way: one of the four answers)",
                         "metrics": _finish(_compare(np.where(has, rand, np.nan), "choice", ref.mean, ref.majority,
                                                     ref.values, ctx, x4=np.where(has, rand4, np.nan),
                                                     ref4=ref.ref4))}
        first = np.where(has, ref.first_sign, np.nan)
        first4 = np.where(has, np.where(ref.first_sign > 0, stats.C4_A, stats.C4_B), np.nan)
        out["always_first"] = {"description": "always picks the image shown first",
                               "metrics": _finish(_compare(first, "choice", ref.mean, ref.majority, ref.values, ctx,
                                                           x4=first4, ref4=ref.ref4))}
        return out
    if ref.discrete:
        rand = rng.choice(ref.values, size=n)
        desc = "a rating drawn uniformly from the human rating values"
    else:
        rand = rng.uniform(ref.values.min(), ref.values.max(), size=n)
        desc = "a rating drawn uniformly between the lowest and highest human rating"
    out["random"] = {"description": desc,
                     "metrics": _finish(_compare(np.where(has, rand, np.nan), ref.kind, ref.mean, ref.majority,
                                                 ref.values, ctx))}
    maj = ref.majority[np.isfinite(ref.majority)]
    if maj.size:
        vals, counts = np.unique(maj, return_counts=True)
        const = float(vals[np.argmax(counts)])
        out["constant"] = {"description": "always the most common human rating", "value": const,
                           "metrics": _finish(_compare(np.where(has, const, np.nan), ref.kind, ref.mean,
                                                       ref.majority, ref.values, ctx))}
    return out


# ============================================================================ before / after
def _to_pandas(t):
    import pandas as pd

    if t is None:
        return None
    if isinstance(t, pd.DataFrame):
        return t
    if hasattr(t, "to_pandas"):
        return t.to_pandas()
    return pd.DataFrame(list(t))


def before_after(images, judgments, prompts=None, judge: str | None = None, models: list[str] | None = None,
                 split: str | None = None, n_boot: int = 2000, seed: int = 0) -> dict | None:
    """Alignment of two (or more) models on the same prompts, from pointwise judgments.

    images: image_id, prompt_id, model (created_at orders the models when `models` is not given:
            the model whose first image is oldest is the baseline, "before").
    judgments: judge, mode, image_ids, label, score, answers (list of {question, correct}), status.
    prompts: prompt_id, split (only needed with `split`).

    Only ok pointwise rows count; only prompts judged for every model count. Returns None when there
    are fewer than two models. Returns
      {judge, models, baseline, split, n_prompts, n_prompts_dropped,
       per_model: {model: {n_images, alignment, concepts {concept: metric}, mean_score}},
       comparisons: [{a, b, n_prompts, alignment_diff, concept_diffs {concept: metric}, score_diff,
                      win_rate (+ wins, ties, losses)}]}
    Each metric is {"value", "ci95", "n"}; rates are image-weighted (sum over prompts / images), CIs
    from a bootstrap over prompts (one resample shared by all models, so differences are paired).
    win_rate: per prompt, model b's mean score vs model a's: 1 if higher, 1/2 if equal, 0 if lower.
    """
    images, judgments, prompts = _to_pandas(images), _to_pandas(judgments), _to_pandas(prompts)
    if images is None or judgments is None or images.empty or judgments.empty:
        return None
    j = judgments[(judgments["mode"] == "pointwise") & (judgments["status"] == "ok")]
    if j.empty:
        return None
    if judge is None:
        judge = j["judge"].value_counts().index[0]
    elif judge not in set(j["judge"]):
        raise InputError(f"--judge {judge!r}: no ok pointwise judgments by it; judges: "
                         f"{', '.join(sorted(set(j['judge'])))}")
    j = j[j["judge"] == judge].copy()
    j["image_id"] = [list(ids)[0] if ids is not None and len(ids) else None for ids in j["image_ids"]]
    img = images.drop_duplicates("image_id").set_index("image_id")
    j = j[j["image_id"].isin(img.index)]
    j["model"] = img.loc[j["image_id"], "model"].to_numpy()
    j["prompt_id"] = img.loc[j["image_id"], "prompt_id"].to_numpy()
    if split is not None:
        if prompts is None or "split" not in prompts:
            raise InputError(f"--split {split!r}: the run has no prompts table with a split column")
        keep = set(prompts.loc[prompts["split"] == split, "prompt_id"])
        if not keep:
            raise InputError(f"--split {split!r}: no prompts of that split; splits: "
                             f"{', '.join(sorted(set(prompts['split'].dropna())))}")
        j = j[j["prompt_id"].isin(keep)]
    present = list(j["model"].dropna().unique())
    if models:
        missing = [m for m in models if m not in present]
        if missing:
            raise InputError(f"--models: no ok judgments by {judge!r} for model(s) {missing}; models: {present}")
        order = list(models)
    else:
        if "created_at" in images and images["created_at"].notna().any():
            first = images[images["model"].isin(present)].groupby("model")["created_at"].min()
            order = sorted(present, key=lambda m: (first.get(m), m))
        else:
            order = sorted(present)
    if len(order) < 2:
        return None
    j = j[j["model"].isin(order)]
    per_prompt_models = j.groupby("prompt_id")["model"].nunique()
    shared = sorted(per_prompt_models[per_prompt_models == len(order)].index)
    n_all = int(j["prompt_id"].nunique())
    if not shared:
        return None
    pidx = {p: i for i, p in enumerate(shared)}
    j = j[j["prompt_id"].isin(pidx)]
    P = len(shared)

    # per (model, prompt): sums and counts of aligned, each concept, score
    concepts = sorted({a["question"] for ans in j["answers"] if ans is not None for a in ans})
    has_label = j["label"].notna().any()
    cells = {m: {"aligned": np.zeros((2, P)), "score": np.zeros((2, P)), "best": np.zeros((2, P)),
                 **{c: np.zeros((2, P)) for c in concepts}}
             for m in order}
    for m, p, label, score, ans in zip(j["model"], j["prompt_id"], j["label"], j["score"], j["answers"]):
        k = pidx[p]
        cell = cells[m]
        if not _is_null(label):
            cell["aligned"][:, k] += (float(bool(label)), 1)
            cell["best"][:, k] = (max(cell["best"][0, k], float(bool(label))), 1)
        s = score if not _is_null(score) else (float(bool(label)) if not _is_null(label) else None)
        if s is not None:
            cell["score"][:, k] += (float(s), 1)
        for a in ans if ans is not None else []:
            if a.get("correct") is not None:
                cell[a["question"]][:, k] += (float(bool(a["correct"])), 1)
    rs = stats.Resampler(P, n_boot, seed)

    def rate(arr):
        return lambda w: (w @ arr[0]) / (w @ arr[1])

    def metric(fn, n):
        return stats.estimate(fn, rs, n=n)

    per_model = {}
    for m in order:
        c = cells[m]
        entry = {"n_images": int(c["score"][1].sum()), "n_prompts": P,
                 "alignment": metric(rate(c["aligned"]), int(c["aligned"][1].sum())) if has_label else None,
                 "concepts": {q: metric(rate(c[q]), int(c[q][1].sum())) for q in concepts if c[q][1].sum()},
                 "mean_score": metric(rate(c["score"]), int(c["score"][1].sum())) if c["score"][1].sum() else None}
        if has_label:  # best-of-n: a prompt counts when any of its n images is aligned (the judge picking one)
            n = c["aligned"][1]
            entry["best_of_n"] = {**metric(rate(c["best"]), P), "n": int(np.median(n[n > 0])) if (n > 0).any() else 0}
        per_model[m] = entry
    comparisons = []
    base = order[0]
    for m in order[1:]:
        a, b = cells[base], cells[m]

        def diff(key, a=a, b=b):
            return lambda w: rate(b[key])(w) - rate(a[key])(w)

        with np.errstate(invalid="ignore", divide="ignore"):
            ma = a["score"][0] / a["score"][1]
            mb = b["score"][0] / b["score"][1]
        ok = np.isfinite(ma) & np.isfinite(mb)
        win = np.where(mb > ma, 1.0, np.where(mb == ma, 0.5, 0.0))
        okf = ok.astype(np.float64)
        wr = metric(lambda w, win=win, okf=okf: (w @ (win * okf)) / (w @ okf), int(ok.sum()))
        wr.update({"wins": int(((mb > ma) & ok).sum()), "ties": int(((mb == ma) & ok).sum()),
                   "losses": int(((mb < ma) & ok).sum())})
        comparisons.append({
            "a": base, "b": m, "n_prompts": P,
            "alignment_diff": metric(diff("aligned"), P) if has_label else None,
            "concept_diffs": {q: metric(diff(q), P) for q in concepts if a[q][1].sum() and b[q][1].sum()},
            "score_diff": metric(diff("score"), P),
            "win_rate": wr,
        })
    from .alignment import short_names

    return {"judge": judge, "models": order, "labels": short_names(order), "baseline": base, "split": split,
            "n_prompts": P, "n_prompts_dropped": n_all - P, "per_model": per_model, "comparisons": comparisons}


# ============================================================================ image grids
def image_grids(run_dir: Path, images, judges, agreement, ba, cfg, k: int | None = None) -> list[dict]:
    """Best / worst images by the judge, and the worst judge-human disagreements, when the run has images.

    Returns [{title, note, items: [{image_id, png (bytes), caption}]}]."""
    if images is None or images.empty:
        return []
    k = k or cfg.grid
    grids: list[dict] = []
    meta = images.drop_duplicates("image_id").set_index("image_id")
    wanted: list[tuple[str, str, list[tuple[str, str]]]] = []
    if judges is not None:
        pw = judges[(judges["status"] == "ok") & (judges["kind"] != "choice") & judges["item_id"].isin(meta.index)]
        name = (ba or {}).get("judge") or cfg.judge
        if name is None and not pw.empty:
            name = pw["rater"].value_counts().index[0]
        sel = pw[pw["rater"].isin([name, f"{name}/pointwise"])]
        if not sel.empty:
            s = sel.groupby("item_id")["value"].mean().sort_index(kind="stable")
            s = s.sort_values(kind="stable")
            best = s.iloc[::-1][:k]
            worst = s.iloc[:k]
            cap = lambda it, v: f"{meta.at[it, 'model']} · {name} {v:.3g} · {meta.at[it, 'prompt']}"  # noqa: E731
            wanted.append((f"Best by {name}", "highest-scored images of the run",
                           [(it, cap(it, v)) for it, v in best.items()]))
            wanted.append((f"Worst by {name}", "lowest-scored images of the run",
                           [(it, cap(it, v)) for it, v in worst.items()]))
    if agreement is not None:
        items = agreement["_items"]
        ids = np.array(items["ids"])
        in_run = np.isin(ids, meta.index.to_numpy())
        if in_run.any() and items["vectors"]:
            name = cfg.judge if cfg.judge in items["vectors"] else max(
                items["vectors"], key=lambda j: ((agreement["judges"][j]["metrics"].get(
                    agreement["primary_metric"]) or {}).get("value") or -9))
            x, y = items["vectors"][name], items["mean"]
            ok = np.isfinite(x) & np.isfinite(y) & in_run
            if ok.sum() >= 2:
                from scipy.stats import rankdata

                rx = np.full(len(x), np.nan)
                ry = np.full(len(x), np.nan)
                rx[ok] = (rankdata(x[ok]) - 0.5) / ok.sum()
                ry[ok] = (rankdata(y[ok]) - 0.5) / ok.sum()
                gap = np.where(ok, np.abs(rx - ry), -1)
                top = np.argsort(-gap, kind="stable")[:k]
                caps = [(ids[i], f"{name} {x[i]:.3g} (rank {rx[i]:.0%}) · humans {y[i]:.3g} (rank {ry[i]:.0%}) · "
                                 f"{meta.at[ids[i], 'prompt']}") for i in top if gap[i] >= 0]
                wanted.append((f"Judge–human disagreements ({name})",
                               "largest gaps between the judge's rank and the human rank of an image", caps))
    if not wanted:
        return []
    need = sorted({it for _, _, lst in wanted for it, _ in lst})
    png = tables.images_by_id(run_dir, need, strict=False)
    for title, note, lst in wanted:
        grids.append({"title": title, "note": note,
                      "items": [{"image_id": it, "png": png.get(it), "caption": c} for it, c in lst]})
    return grids


def before_after_grid(run_dir: Path, images, prompts, judgments, ba: dict, path: Path, rows: int = 12,
                      cell: int = 96) -> Path | None:
    """report/before_after.png: for `rows` prompts of the comparison (spread evenly over them), the
    image of each model at the same seed side by side, framed green when the judge says aligned and
    red when not (grey: no verdict). None when no prompt has an image of every model at one seed."""
    from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

    models, judge = ba["models"], ba["judge"]
    img = images[images["model"].isin(models) & images["seed"].notna()].drop_duplicates("image_id")
    if ba.get("split") is not None and prompts is not None:
        img = img[img["prompt_id"].isin(set(prompts.loc[prompts["split"] == ba["split"], "prompt_id"]))]
    j = _to_pandas(judgments)
    j = j[(j["judge"] == judge) & (j["mode"] == "pointwise") & (j["status"] == "ok")]
    verdict = {list(ids)[0]: bool(label) for ids, label in zip(j["image_ids"], j["label"])
               if ids is not None and len(ids) and not _is_null(label)}
    # (prompt, seed) cells that every model has, the lowest seed per prompt
    full = img.groupby(["prompt_id", "seed"])["model"].nunique()
    full = full[full == len(models)].reset_index().sort_values(["prompt_id", "seed"]).drop_duplicates("prompt_id")
    if full.empty:
        return None
    prompt_of = dict(zip(img["prompt_id"], img["prompt"]))
    full["prompt"] = full["prompt_id"].map(prompt_of)
    full = full.sort_values("prompt", kind="stable")
    pick = full.iloc[np.unique(np.linspace(0, len(full) - 1, min(rows, len(full))).round().astype(int))]
    # one image per (prompt, seed, model): the latest, if a model was retrained in place under the same name
    key = img.sort_values("created_at", kind="stable") if "created_at" in img else img
    key = key.drop_duplicates(["prompt_id", "seed", "model"], keep="last").set_index(["prompt_id", "seed", "model"])
    key = key["image_id"]
    ids = [[key.loc[(r.prompt_id, r.seed, m)] for m in models] for r in pick.itertuples()]
    pngs = tables.images_by_id(run_dir, {i for row in ids for i in row}, strict=False)
    label_w, pad = 300, 4
    head_h = 14 * (len(models) + 2) + 8
    width = max(label_w + len(models) * (cell + pad), 640)
    canvas = Image.new("RGB", (width, head_h + len(ids) * (cell + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), f"same prompt and seed per row; frame: {judge} says aligned (green) / not (red)", fill="black")
    for c, m in enumerate(models):
        draw.text((4, 18 + 14 * c), f"column {c + 1}: {ba.get('labels', {}).get(m, m)}", fill="black")
        draw.text((label_w + c * (cell + pad) + cell // 2 - 4, head_h - 16), str(c + 1), fill="black")
    for r, (row, meta) in enumerate(zip(ids, pick.itertuples())):
        y = head_h + r * (cell + pad)
        draw.text((4, y + cell // 2 - 6), f"{meta.prompt} (seed {meta.seed})", fill="black")
        for c, image_id in enumerate(row):
            x = label_w + c * (cell + pad)
            frame = {True: (30, 160, 60), False: (210, 40, 40)}.get(verdict.get(image_id), (150, 150, 150))
            data = pngs.get(image_id)
            tile = Image.new("RGB", (cell - 8, cell - 8), (230, 230, 230))
            if data:
                try:
                    tile = decode_image(data).resize((cell - 8, cell - 8), Image.NEAREST)
                except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
                    pass  # an undecodable image stays a grey tile: the report still gets written
            canvas.paste(ImageOps.expand(tile, border=4, fill=frame), (x, y))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return tables.write_atomic(path, buf.getvalue())


# ============================================================================ metrics.json
def write_metrics(path: Path, metrics: dict, keys=OWN_KEYS) -> dict:
    """Merge `keys` of `metrics` into an existing metrics.json (other top-level keys kept); atomic write.

    The one writer of RUN/report/metrics.json: `eval` owns OWN_KEYS, `autofeedback run` its own keys."""
    path = Path(path)
    merged: dict = {}
    if path.exists():
        try:
            merged = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: existing metrics.json is not valid JSON ({exc}); move it away") from None
        if not isinstance(merged, dict):
            raise InputError(f"{path}: existing metrics.json is not a JSON object; move it away")
    for key in keys:
        merged[key] = _public(metrics.get(key))
    tables.write_atomic(path, json.dumps(merged, indent=2, allow_nan=False, default=_json_default) + "\n")
    return merged


def _public(obj):
    """Drop private keys (leading underscore) and make floats JSON-safe."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(obj, (list, tuple)):
        return [_public(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (_dt.datetime, _dt.date)):
        return o.isoformat()
    return str(o)
