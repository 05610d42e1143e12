"""Prompt alignment of a model's images, per concept, with 95% confidence intervals.

Reads pointwise judgments with per-concept answers (e.g. the shapes checker) and the prompts table.
Images of one prompt are not independent, so intervals come from a cluster bootstrap over prompts
(resample prompts with replacement, keep all of each prompt's images), percentile method.
Only rows with status=ok count; other statuses are reported beside the table, never scored as 0.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from . import tables
from .errors import InputError


def cluster_bootstrap(values_by_cluster: list[list[float]], n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """Mean of all values and a percentile CI from resampling clusters. Returns (mean, lo, hi)."""
    sums = np.array([np.sum(v) for v in values_by_cluster], dtype=np.float64)
    counts = np.array([len(v) for v in values_by_cluster], dtype=np.float64)
    if counts.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    mean = sums.sum() / counts.sum()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    boot = sums[idx].sum(1) / np.maximum(counts[idx].sum(1), 1e-12)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return float(mean), float(lo), float(hi)


def summarize(run_dir: str | Path, group_by: list[str] | None = None, judge: str | None = None,
              n_boot: int = 2000, seed: int = 0) -> dict:
    """Per-group, per-concept alignment rates with CIs, from RUN/judgments.parquet."""
    group_by = list(group_by or [])
    jpath = tables.table_path(run_dir, "judgments")
    judged = tables.read(jpath, "judgments", columns=["judge", "mode", "prompt_id", "image_ids", "label",
                                                       "answers", "status", "details"])
    prompts = {r["prompt_id"]: r for r in tables.read(tables.table_path(run_dir, "prompts"), "prompts").to_pylist()}
    rows = [r for r in judged.to_pylist() if r["mode"] == "pointwise" and (judge is None or r["judge"] == judge)]
    if not rows:
        raise InputError(f"{jpath}: no pointwise judgments" + (f" by judge {judge!r}" if judge else ""))
    for col in group_by:
        if col not in ("split", "category", "suite", "model"):
            raise InputError(f"cannot group by {col!r}: use split, category, suite or model")
    models = _model_names(run_dir) if "model" in group_by else {}
    out: dict = {"judges": sorted({r["judge"] for r in rows}), "group_by": group_by, "groups": {}}
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        p = {**prompts.get(r["prompt_id"], {}), "model": models.get((r["image_ids"] or [None])[0])}
        key = "/".join(str(p.get(c)) for c in group_by) if group_by else "all"
        groups[key].append(r)
    if group_by and len(groups) > 1 and "model" not in group_by:  # no "all" that pools different models
        groups["all"] = rows
    for key in sorted(groups, key=lambda k: (k == "all", k)):
        out["groups"][key] = _group(groups[key], n_boot, seed)
    return out


def short_name(model: str) -> str:
    """A model's label for tables and plots: its folder's name (RUN/rwr/pipeline -> rwr), + the LoRA's training
    folder for `generate --lora` images (MODEL+lora:RUN/dpo/lora -> shapes-tiny+dpo). Full paths stay in JSON."""
    base, sep, lora = model.partition("+lora:")
    path = Path(base)
    name = (path.parent.name if path.name == "pipeline" else path.name) or base
    if sep:
        lpath = Path(lora)
        name += "+" + ((lpath.parent.name if lpath.name == "lora" else lpath.name) or lora)
    return name


def short_names(models: list[str]) -> dict[str, str]:
    """model -> short_name(model); models whose short names collide keep their full names."""
    names = {m: short_name(m) for m in models}
    taken = Counter(names.values())
    return {m: n if taken[n] == 1 else m for m, n in names.items()}


def _model_names(run_dir) -> dict[str, str]:
    """image_id -> a short model name: the model folder's name, + the LoRA's training folder (base+dpo)."""
    out = {}
    images = tables.read(tables.table_path(run_dir, "images"), "images", columns=["image_id", "model", "lora"])
    for r in images.to_pylist():
        model = Path(r["model"].split("+lora:")[0])  # generate names a LoRA's images MODEL+lora:PATH
        name = model.parent.name if model.name == "pipeline" else model.name  # RUN/rwr/pipeline -> rwr
        if r["lora"]:
            lora = Path(r["lora"])
            name += "+" + (lora.parent.name if lora.name == "lora" else lora.name)  # RUN/dpo/lora -> +dpo
        out[r["image_id"]] = name
    return out


def _group(rows: list[dict], n_boot: int, seed: int) -> dict:
    statuses = Counter(r["status"] for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    by_prompt: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in ok:
        cell = by_prompt[r["prompt_id"]]
        cell["aligned"].append(float(bool(r["label"])))
        for a in r["answers"] or []:
            cell[a["question"]].append(float(bool(a["correct"])))
        details = json.loads(r["details"]) if r["details"] else {}
        if "readable" in details:
            cell["readable"].append(float(bool(details["readable"])))
    by_prompt = {k: by_prompt[k] for k in sorted(by_prompt)}  # same clusters, same order: same CI everywhere
    concepts = sorted({c for cell in by_prompt.values() for c in cell}, key=lambda c: (c != "aligned", c))
    metrics = {}
    for c in concepts:
        mean, lo, hi = cluster_bootstrap([cell.get(c, []) for cell in by_prompt.values()], n_boot, seed)
        metrics[c] = {"rate": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)],
                      "n": sum(len(cell.get(c, [])) for cell in by_prompt.values())}
    return {"n_images": len(ok), "n_prompts": len(by_prompt), "status": dict(statuses), "metrics": metrics}


def format_table(summary: dict) -> str:
    groups = summary["groups"]
    concepts: list[str] = []
    for g in groups.values():
        for c in g["metrics"]:
            if c not in concepts:
                concepts.append(c)
    width = max([len(name) + 2 for name in groups] + [12])
    header = f"{'group':<{width}}{'images':>7}  " + "  ".join(f"{c:>19}" for c in concepts)
    lines = [header, "-" * len(header)]
    for name, g in groups.items():
        cells = []
        for c in concepts:
            m = g["metrics"].get(c)
            cells.append(f"{'-':>19}" if m is None else
                         f"{100 * m['rate']:5.1f} [{100 * m['ci95'][0]:4.1f},{100 * m['ci95'][1]:5.1f}]".rjust(19))
        lines.append(f"{name:<{width}}{g['n_images']:>7}  " + "  ".join(cells))
    lines.append("rates in %, [95% CI] from a cluster bootstrap over prompts")
    return "\n".join(lines)
