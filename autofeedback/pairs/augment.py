"""Prompt augmentations: for an image, N-1 prompts with one concept changed (Lee et al.), from the prompt's
suite hook (autofeedback.suites).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa

from .. import suites, tables

LOW_CARDINALITY_FIELDS = 50  # a metadata field with more distinct values than this is not perturbed


def augmentations_table(cfg, run_dir: Path, image_ids: set[str], summary) -> pa.Table | None:
    """For every image: N-1 prompts with one metadata field changed (other counts, colors, backgrounds...)."""
    images_path, prompts_path = tables.table_path(run_dir, "images"), tables.table_path(run_dir, "prompts")
    if not image_ids or not tables.exists(prompts_path):
        summary["augmentations"] = 0
        return None
    prompts = {r["prompt_id"]: r for r in tables.read(prompts_path, "prompts").to_pylist()}
    if tables.exists(images_path):
        img = tables.read(images_path, "images", columns=["image_id", "prompt_id"])
        img_prompt = dict(zip(img.column("image_id").to_pylist(), img.column("prompt_id").to_pylist()))
    else:
        img_prompt = {}
    vocab = _vocabulary([_meta(p) for p in prompts.values()])
    candidates: dict[str, list[tuple[str, str]]] = {}
    rows, no_meta, unsupported = [], 0, Counter()
    created = tables.now()
    for image_id in sorted(image_ids):
        pid = img_prompt.get(image_id)
        rec = prompts.get(pid) if pid else None
        if rec is None:
            no_meta += 1
            continue
        if not suites.has_perturbations(rec.get("suite")):
            unsupported[rec.get("suite")] += 1
            continue
        if pid not in candidates:
            candidates[pid] = perturbations(rec["prompt"], _meta(rec), rec.get("suite"), vocab)
        cands = candidates[pid]
        if not cands:
            no_meta += 1
            continue
        rng = random.Random(tables.content_id("augment", cfg.seed, image_id))  # per image: varied, reproducible
        picked = _spread(cands, cfg.augment - 1, rng)
        rows.append({"aug_id": tables.content_id("aug", image_id, cfg.augment, cfg.seed), "image_id": image_id,
                     "prompt_id": pid, "prompt": rec["prompt"], "perturbed": [p for p, _ in picked],
                     "changed": [f for _, f in picked], "created_at": created})
    summary["augmentations"] = len(rows)
    summary["augmentations_skipped"] = no_meta  # images whose prompt has no metadata to perturb
    if unsupported:  # images whose suite has no perturbations hook
        summary["augmentations_unsupported"] = dict(sorted(unsupported.items(), key=str))
    return tables.to_table(rows, "augmentations")


def _meta(rec: dict) -> dict:
    raw = rec.get("metadata")
    if not raw:
        return {}
    try:
        m = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return {}
    return m if isinstance(m, dict) else {}


def _spread(cands: list[tuple[str, str]], k: int, rng: random.Random) -> list[tuple[str, str]]:
    """k candidates, round-robin over the fields changed so that every field is represented."""
    by_field: dict[str, list] = {}
    for c in cands:
        by_field.setdefault(c[1], []).append(c)
    for lst in by_field.values():
        rng.shuffle(lst)
    fields = sorted(by_field)
    rng.shuffle(fields)
    out = []
    while len(out) < k and any(by_field.values()):
        for f in fields:
            if by_field[f] and len(out) < k:
                out.append(by_field[f].pop())
    return out


def _vocabulary(metas: list[dict]) -> dict[str, list]:
    vocab: dict[str, set] = {}
    for m in metas:
        for field, value in suites.leaves(m):
            vocab.setdefault(field, set()).add(value)
    return {f: sorted(v, key=str) for f, v in vocab.items() if 2 <= len(v) <= LOW_CARDINALITY_FIELDS}


def perturbations(prompt: str, meta: dict, suite: str | None, vocab: dict[str, list]) -> list[tuple[str, str]]:
    """Every prompt that differs from `prompt` in one concept: (text, field), from the prompt's suite hook
    (autofeedback.suites). The shapes world: the scene's prompt with another count, color or background. Suites
    without a hook: a metadata value that appears in the prompt as a word is replaced by another value the run's
    prompts use for that field."""
    return suites.perturbations(suite, prompt, meta, vocab)
