"""Model before/after: the alignment of two (or more) models on the same prompts from the run's own pointwise
judgments, with paired bootstrap CIs over prompts (the `before_after` key of metrics.json), and the side-by-side
image grid report/before_after.png.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .. import stats, tables
from ..errors import InputError
from ..images import decode_image
from .ratings import is_null


def to_pandas(t):
    import pandas as pd

    if t is None:
        return None
    if isinstance(t, pd.DataFrame):
        return t
    if hasattr(t, "to_pandas"):
        return t.to_pandas()
    return pd.DataFrame(list(t))


def before_after(images, judgments, prompts=None, judge: str | None = None, models: list[str] | None = None,
                 split: str | None = None, n_boot: int = 2000, seed: int = 0, why: list[str] | None = None
                 ) -> dict | None:
    """Alignment of two (or more) models on the same prompts, from pointwise judgments.

    images: image_id, prompt_id, model (created_at orders the models when `models` is not given:
            the model whose first image is oldest is the baseline, "before").
    judgments: judge, mode, image_ids, label, score, answers (list of {question, correct}), status.
    prompts: prompt_id, split (only needed with `split`).

    Only ok pointwise rows count; only prompts judged for every model count. Returns None when there
    are fewer than two models or no prompt judged for all of them (then the reason is appended to `why`). Returns
      {judge, models, baseline, split, n_prompts, n_prompts_dropped,
       per_model: {model: {n_images, alignment, concepts {concept: metric}, mean_score}},
       comparisons: [{a, b, n_prompts, alignment_diff, concept_diffs {concept: metric}, score_diff,
                      win_rate (+ wins, ties, losses)}]}
    Each metric is {"value", "ci95", "n"}; rates are image-weighted (sum over prompts / images), CIs
    from a bootstrap over prompts (one resample shared by all models, so differences are paired).
    win_rate: per prompt, model b's mean score vs model a's: 1 if higher, 1/2 if equal, 0 if lower.
    """
    images, judgments, prompts = to_pandas(images), to_pandas(judgments), to_pandas(prompts)
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
        if why is not None and order:
            why.append(f"one model judged by {judge!r}" + (f" on split {split!r}" if split else "")
                       + f" ({order[0]}): a before/after needs two models' images of the same prompts")
        return None
    j = j[j["model"].isin(order)]
    per_prompt_models = j.groupby("prompt_id")["model"].nunique()
    shared = sorted(per_prompt_models[per_prompt_models == len(order)].index)
    n_all = int(j["prompt_id"].nunique())
    if not shared:
        if why is not None:
            counts = j.groupby("model")["prompt_id"].nunique()
            why.append(f"no prompt was judged by {judge!r} for every model ("
                       + ", ".join(f"{m}: {int(counts.get(m, 0))} prompts" for m in order)
                       + "): generate every model on the same prompts, or compare within a split (--split heldout)"
                       + " or fewer models (--models)")
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
        if not is_null(label):
            cell["aligned"][:, k] += (float(bool(label)), 1)
            cell["best"][:, k] = (max(cell["best"][0, k], float(bool(label))), 1)
        s = score if not is_null(score) else (float(bool(label)) if not is_null(label) else None)
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
    from ..alignment import short_names

    return {"judge": judge, "models": order, "labels": short_names(order), "baseline": base, "split": split,
            "n_prompts": P, "n_prompts_dropped": n_all - P, "per_model": per_model, "comparisons": comparisons}


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
    j = to_pandas(judgments)
    j = j[(j["judge"] == judge) & (j["mode"] == "pointwise") & (j["status"] == "ok")]
    verdict = {list(ids)[0]: bool(label) for ids, label in zip(j["image_ids"], j["label"])
               if ids is not None and len(ids) and not is_null(label)}
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
