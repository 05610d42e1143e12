"""train rwr: Lee et al.'s reward-weighted likelihood on the UNet of an SD-family diffusers pipeline.

Reads:   RUN/judgments.parquet (pointwise rows with status ok: label or score), RUN/images.parquet
Writes:  RUN/<out>/lora/ (or pipeline/), checkpoints/, metrics.jsonl, train.json   (as train dpo)

    loss = mean_i r_i * ||target - model(x_t, t, prompt_i)||^2   over the model's judged samples
         + reg_weight * mean_j ||target - model(...)||^2         over the regularizer set
         + anchor_weight * mean_j ||model(...) - reference(...)||^2   (KL to the reference, same set)

r is the judge's label (1 aligned, 0 not) or its score rescaled to [0, 1] (several judges: the mean).
--reward none sets r = 1 for every judged sample: the no-feedback control of a run (the same images, steps and
settings; only the judge's verdict is ignored), so a gain can be credited to the judge rather than to fine-tuning.
With --min-reward M only samples with r >= M are kept (rejection sampling: --reward label --min-reward 1
fine-tunes on the aligned samples, each weighing 1; the main job's recipe).
With --temperature T the weights are instead a softmax of r / T over each prompt's judged images,
used as sampling probabilities (every prompt weighs the same; T = 0: its best image(s) only), so a
prompt whose images are all misaligned still learns from the best of them -- with a graded judge
(`shapes:graded`, a VLM's 1-10 score) that is the squarest of four rounded squares.
The regularizer keeps the model close to its pre-training distribution: Lee et al. use the
pre-training data; by default here it is the run's own images (the base model's samples), unweighted,
or any images table given with --reg-images (e.g. a reference set). The anchor ties the model's
predictions on those images to the reference model's (--anchor-model, default the model itself).
--hindsight count also learns from the samples the judge rejected for their count alone, under its caption of what
they show (`relabel`; the main job's recipe).
--interpolate A saves base + A * (tuned - base) (WiSE-FT; training.blend): the main job saves A = 0.7.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from . import tables, training
from .config import TrainRWRConfig
from .errors import InputError


def load_rewards(cfg: TrainRWRConfig) -> list[dict]:
    run_dir = Path(cfg.run_dir)
    jpath = tables.table_path(run_dir, "judgments")
    if not tables.exists(jpath):
        raise InputError(f"{jpath}: no judgments; run `autofeedback judge {run_dir}` first")
    rows = tables.read(jpath, "judgments", columns=["judge", "mode", "prompt_id", "image_ids", "label", "score",
                                                    "status", "answers", "caption"]).to_pylist()
    rows = [r for r in rows if r["mode"] == "pointwise" and r["status"] == "ok"
            and (cfg.judge is None or r["judge"] == cfg.judge)]
    if not rows:
        raise InputError(f"{jpath}: no pointwise judgments with status ok" + (f" by {cfg.judge!r}" if cfg.judge else ""))
    by_image: dict[str, list[float]] = defaultdict(list)
    if cfg.reward == "none":  # the control: the same samples and steps, the judge's verdict ignored
        for r in rows:
            by_image[r["image_ids"][0]].append(1.0)
    elif cfg.reward == "label":
        rows = [r for r in rows if r["label"] is not None]
        if not rows:
            raise InputError(f"{jpath}: the judgments have no labels; use --reward score")
        for r in rows:
            by_image[r["image_ids"][0]].append(float(r["label"]))
    else:
        by_judge: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            if r["score"] is not None:
                by_judge[r["judge"]].append(r["score"])
        if not by_judge:
            raise InputError(f"{jpath}: the judgments have no scores; use --reward label")
        span = {j: (min(v), max(v)) for j, v in by_judge.items()}
        for r in rows:
            if r["score"] is None:
                continue
            lo, hi = span[r["judge"]]
            by_image[r["image_ids"][0]].append((r["score"] - lo) / (hi - lo) if hi > lo else 1.0)
    images = tables.read(tables.table_path(run_dir, "images"), "images",
                         columns=["image_id", "prompt", "prompt_id", "model"]).to_pylist()
    allowed = _allowed_images(run_dir, images, cfg.split, cfg.images_model)
    prompt = {r["image_id"]: r["prompt"] for r in images}
    out = [{"image_id": i, "prompt": prompt[i], "reward": float(np.mean(v))}
           for i, v in sorted(by_image.items()) if i in allowed]
    if not out:
        raise InputError(f"{jpath}: no judged images left after the filters (split={cfg.split!r}, "
                         f"images_model={cfg.images_model!r})")
    if cfg.hindsight:
        relabel(cfg, rows, out)
    if cfg.min_reward is not None:
        out = [x for x in out if x["reward"] >= cfg.min_reward]
        if not out:
            raise InputError(f"{jpath}: no judged image has a reward of at least {cfg.min_reward} (--min-reward)")
    if cfg.temperature is not None:
        prompt_weights(out, cfg.temperature)
    return out


def relabel(cfg: TrainRWRConfig, rows: list[dict], samples: list[dict]) -> None:
    """--hindsight CONCEPTS, in place: a sample the judge rejected only for these concepts is a right example of
    what it shows, so it is learned from under the judge's caption of it, at reward 1 (hindsight relabeling, as
    HER relabels goals; the judge as captioner, as DALL-E 3 recaptions). Only under a caption that is one of the
    run's prompts of the training split: held-out prompts stay unseen. Marks those samples "hindsight": True."""
    if cfg.reward != "label":
        raise InputError("--hindsight relabels the samples the judge rejected: it needs --reward label")
    judges = sorted({r["judge"] for r in rows})
    if len(judges) > 1:
        raise InputError(f"--hindsight: judgments from several judges ({', '.join(judges)}); name one with --judge")
    asked = {a["question"] for r in rows for a in r["answers"] or []}
    if not set(cfg.hindsight) <= asked:
        raise InputError(f"--hindsight {','.join(cfg.hindsight)}: judge {judges[0]!r} answers no such question "
                         f"(its answers: {', '.join(sorted(asked)) or 'none'})")
    if not any(r["caption"] for r in rows):
        raise InputError(f"--hindsight: judge {judges[0]!r} wrote no captions; it needs a judge that says what each "
                         "image shows (the shapes checker: --judge shapes; rows judged before it wrote captions: "
                         "judge again in a new run)")
    # a caption is trained on only when it is the text of one of the run's prompts in --split: the run's prompts
    # table need not hold the held-out prompts yet (the main job draws them after training), so barring those
    # would let a caption that *is* a held-out prompt through
    prompts = tables.read(tables.table_path(cfg.run_dir, "prompts"), "prompts", columns=["prompt", "split"])
    allowed = {p for p, s in zip(prompts.column("prompt").to_pylist(), prompts.column("split").to_pylist())
               if cfg.split is None or s == cfg.split}
    by_id, concepts = {x["image_id"]: x for x in samples}, set(cfg.hindsight)
    for r in rows:
        x = by_id.get(r["image_ids"][0])
        wrong = {a["question"] for a in r["answers"] or [] if not a["correct"]}
        if x is None or r["label"] or r["caption"] not in allowed or not wrong:
            continue
        if wrong <= concepts:
            x.update(prompt=r["caption"], reward=1.0, hindsight=True)


def prompt_weights(samples: list[dict], temperature: float) -> None:
    """Set each sample's "weight": a softmax of reward / temperature over its prompt's samples (summing to 1
    per prompt); temperature 0 shares the prompt's weight among its best-rewarded samples."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for x in samples:
        by_prompt[x["prompt"]].append(x)
    for group in by_prompt.values():
        r = np.array([x["reward"] for x in group])
        if temperature == 0:
            w = (r >= r.max() - 1e-12).astype(float)
        else:
            w = np.exp((r - r.max()) / temperature)
        w /= w.sum()
        for x, wi in zip(group, w):
            x["weight"] = float(wi)


def _allowed_images(run_dir: Path, images: list[dict], split: str | None, model: str | None) -> set[str]:
    if split is not None:
        prompts = tables.read(tables.table_path(run_dir, "prompts"), "prompts", columns=["prompt_id", "split"])
        in_split = {p for p, s in zip(prompts.column("prompt_id").to_pylist(), prompts.column("split").to_pylist())
                    if s == split}
        images = [r for r in images if r["prompt_id"] in in_split]
    if model is not None:
        images = [r for r in images if r["model"] == model]
    return {r["image_id"] for r in images}


def run(cfg: TrainRWRConfig) -> dict:
    # 1. Check inputs: rewards for the run's samples, and the regularizer set.
    samples = load_rewards(cfg)
    run_images = tables.table_path(cfg.run_dir, "images")
    reg_table = cfg.reg_images or run_images
    reg = tables.read(reg_table, "images", columns=["image_id", "prompt", "prompt_id", "model"]).to_pylist()
    if cfg.reg_images is None:  # the run's own images: the same filters as the rewarded samples
        keep = _allowed_images(Path(cfg.run_dir), reg, cfg.split, cfg.images_model)
        reg = [r for r in reg if r["image_id"] in keep]
    if not reg and (cfg.reg_weight or cfg.anchor_weight):
        raise InputError(f"{reg_table}: the regularizer set is empty")
    images = tables.images_by_id(run_images, {x["image_id"] for x in samples}, "rewarded")
    reg_bytes = {}
    use_reg = bool(cfg.reg_weight or cfg.anchor_weight)
    if use_reg:  # the regularizer set's images only (after the filters); those already read are shared, not reread
        reg_ids = {r["image_id"] for r in reg}
        shared = reg_ids & set(images) if Path(reg_table).resolve() == run_images.resolve() else set()
        reg_bytes = tables.images_by_id(reg_table, reg_ids - shared, "regularizer")
        reg_bytes.update((i, images[i]) for i in shared)
    mean_reward = float(np.mean([x["reward"] for x in samples]))
    # 2. Load the pipeline, resume.
    s = training.setup(cfg, need_reference=cfg.anchor_weight > 0)
    relabeled = sum(bool(x.get("hindsight")) for x in samples)
    s.log(f"rwr: {len(samples)} rewarded samples (mean reward {mean_reward:.3f})"
          + (f", {relabeled} of them under the judge's caption (--hindsight)" if cfg.hindsight else "")
          + (f", regularizer set {len(reg)} images" if use_reg else ", no regularizer"))
    probs = None
    if cfg.temperature is not None:  # sample by weight, every prompt equally; the loss is then unweighted
        probs = np.array([x["weight"] for x in samples])
        probs /= probs.sum()
    if s.step >= cfg.steps:
        return training.finish(cfg, s, [])
    # 3. Train.
    history: list[dict] = []
    rank = s.accelerator.process_index
    t0 = time.perf_counter()
    training.start_progress(s, cfg, "train rwr")
    s.train_mode()
    micro = 0  # micro-batch within the optimizer step (--grad-accum)
    while s.step < cfg.steps:
        rng = training.batch_rng(cfg.seed, s.step, rank, micro)  # the same batches after a resume
        with s.accelerator.accumulate(*s.models):
            batch = [samples[i] for i in rng.choice(len(samples), size=cfg.batch_size, p=probs)]
            pngs = [images[b["image_id"]] for b in batch]
            prompts = [b["prompt"] for b in batch]
            if use_reg:
                regb = [reg[i] for i in rng.choice(len(reg), size=cfg.batch_size)]
                pngs += [reg_bytes[b["image_id"]] for b in regb]
                prompts += [b["prompt"] for b in regb]
            lat = s.encode(pngs, training.flips(cfg, rng, len(pngs)))
            prompts = s.drop(prompts, cfg.uncond_prob, rng)
            emb = s.embed(prompts)
            noisy, t, target = s.noised(lat, rng, t_min=cfg.timestep_min)
            pred = s.unet(noisy, t, encoder_hidden_states=emb).sample
            mse = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
            r = torch.tensor([1.0 if probs is not None else b["reward"] for b in batch], device=mse.device)
            weighted = (r * mse[:cfg.batch_size]).mean()
            zero = torch.zeros((), device=mse.device)
            reg_loss = mse[cfg.batch_size:].mean() if cfg.reg_weight else zero
            anchor = zero
            if cfg.anchor_weight:
                n = cfg.batch_size
                ref = s.reference_pred(noisy[n:], t[n:], s.reference_embed(prompts[n:], emb[n:]))
                anchor = training.anchor_loss(pred[n:], ref).mean()
            loss = weighted + cfg.reg_weight * reg_loss + cfg.anchor_weight * anchor
            training.optimize(s, loss, cfg)
        micro += 1
        if s.accelerator.sync_gradients:
            s.step += 1
            micro = 0
            rec = {"step": s.step, "loss": round(loss.item(), 6), "weighted": round(weighted.item(), 6),
                   "reg": round(float(reg_loss.detach()), 6), "anchor": round(float(anchor.detach()), 8),
                   "seconds": round(time.perf_counter() - t0, 2)}
            training.end_step(s, cfg, rec, history, f"rwr step {s.step}/{cfg.steps} loss {rec['loss']:.4f} (weighted "
                                                    f"{rec['weighted']:.4f}, reg {rec['reg']:.4f})")
    return training.finish(cfg, s, history)


def format_summary(s: dict, cfg: TrainRWRConfig | None = None) -> str:
    extra = f", last-20-step loss {s['final_loss']:.4f}" if "final_loss" in s else ""
    return f"train rwr: {s['steps']} steps{extra} -> {s['lora'] or s.get('pipeline') or s['out']}"
