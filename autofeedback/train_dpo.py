"""train dpo: Diffusion-DPO (Wallace et al. 2023) on the UNet of an SD-family diffusers pipeline.

Reads:   RUN/preferences.parquet (prompt, chosen_image_id, rejected_image_id), RUN/images.parquet (image)
Writes:  RUN/<out>/lora/pytorch_lora_weights.safetensors   (LoRA: `pipe.load_lora_weights`, `generate --lora`)
         RUN/<out>/pipeline/                                (full fine-tune: the whole pipeline, tuned UNet)
         RUN/<out>/checkpoints/step-N/                      (accelerate state + step; resume picks the latest)
         RUN/<out>/metrics.jsonl, RUN/<out>/train.json      (loss, implicit accuracy, reward margins)

Winner and loser are the two halves of one batch sharing noise and timestep. With LoRA the reference
is the same UNet with its adapters disabled (no second copy in memory); a full fine-tune keeps a
frozen copy. With h = (mse_w - ref_w) - (mse_l - ref_l) and z = -beta/2 * h:
    sigmoid: loss = -log sigmoid(z)          ipo: loss = (-h/2 - 1/(2 beta))^2   (Azar et al.'s IPO)
implicit accuracy = fraction of pairs with z > 0. A non-finite loss stops the run with a clear
message; the last good checkpoint is kept. Runs under `accelerate launch` (multi-GPU / multi-node /
CPU gloo) without code changes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import tables, training
from .config import TrainDPOConfig
from .errors import InputError
from .training import NonFiniteLoss, latest_checkpoint


def load_pairs(run_dir: Path, limit: int | None, source: str | None = None) -> tuple[list[dict], dict[str, bytes]]:
    ppath = tables.table_path(run_dir, "preferences")
    if not tables.exists(ppath):
        raise InputError(f"{ppath}: no preferences table; run `autofeedback pairs {run_dir}` first")
    prefs = tables.read(ppath, "preferences", columns=["pair_id", "prompt", "chosen_image_id",
                                                       "rejected_image_id", "margin", "source"]).to_pylist()
    if source:
        prefs = [p for p in prefs if p["source"] and p["source"].startswith(source)]
    prefs = [p for p in prefs if p["margin"] is None or p["margin"] > 0]  # ties (margin 0) carry no preference
    if not prefs:
        raise InputError(f"{ppath}: no strict preference pairs" + (f" from source {source!r}" if source else ""))
    prefs.sort(key=lambda r: r["pair_id"])
    if limit:
        prefs = prefs[:limit]
    needed = {r["chosen_image_id"] for r in prefs} | {r["rejected_image_id"] for r in prefs}
    return prefs, tables.images_by_id(run_dir, needed, "preference")


def _loss(model_w, model_l, ref_w, ref_l, beta: float, kind: str):
    import torch.nn.functional as F

    h = (model_w - ref_w) - (model_l - ref_l)
    z = -0.5 * beta * h
    if kind == "sigmoid":
        losses = -F.logsigmoid(z)
    else:  # IPO: regress the implicit log-ratio margin (-h/2) to 1/(2 beta) instead of pushing it to infinity
        losses = (-0.5 * h - 1.0 / (2.0 * beta)) ** 2
    return losses.mean(), z


def run(cfg: TrainDPOConfig) -> dict:
    # 1. Check inputs.
    prefs, images = load_pairs(Path(cfg.run_dir), cfg.max_pairs, cfg.pairs_source)
    # 2. Load the pipeline (LoRA or full + frozen reference), resume from the latest checkpoint.
    s = training.setup(cfg, need_reference=True)
    if s.step >= cfg.steps:
        s.log(f"already trained {s.step} steps (asked for {cfg.steps}); nothing to do")
        return training.finish(cfg, s, [])
    # 3. Train: winner and loser halves share noise and timestep.
    history: list[dict] = []
    rank, world = s.accelerator.process_index, s.accelerator.num_processes
    t0 = time.perf_counter()
    training.start_progress(s, cfg, "train dpo")
    s.train_mode()
    micro = 0  # micro-batch within the optimizer step (--grad-accum)
    while s.step < cfg.steps:
        rng = training.batch_rng(cfg.seed, s.step, rank, micro)  # the same batches after a resume
        with s.accelerator.accumulate(*s.models):
            idx = rng.choice(len(prefs), size=cfg.batch_size, replace=len(prefs) < cfg.batch_size)
            batch = [prefs[i] for i in idx]
            flip = training.flips(cfg, rng, len(batch))  # a pair's two images mirrored together
            lat = s.encode([images[b["chosen_image_id"]] for b in batch] + [images[b["rejected_image_id"]] for b in batch],
                           None if flip is None else np.concatenate([flip, flip]))
            prompts = s.drop([b["prompt"] for b in batch], cfg.uncond_prob, rng)
            emb = s.embed(prompts).repeat(2, 1, 1)  # the same for winner and loser
            noisy, t, target = s.noised(lat, rng, share_halves=True, t_min=cfg.timestep_min)
            mse = s.mse(s.unet, noisy, t, emb, target)
            ref = s.reference_mse(noisy, t, s.reference_embed(prompts + prompts, emb), target)
            mw, ml = mse.chunk(2)
            rw, rl = ref.chunk(2)
            loss, z = _loss(mw, ml, rw, rl, cfg.beta, cfg.loss)
            if cfg.sft_weight:
                loss = loss + cfg.sft_weight * mw.mean()
            training.optimize(s, loss, cfg)
        micro += 1
        if s.accelerator.sync_gradients:
            s.step += 1
            micro = 0
            rec = {"step": s.step, "loss": round(loss.item(), 6),
                   "implicit_acc": round(float((z.detach() > 0).float().mean()), 4),
                   "reward_margin": round(float(z.detach().mean()), 6),
                   "mse_w": round(float(mw.detach().mean()), 6), "mse_l": round(float(ml.detach().mean()), 6),
                   "seconds": round(time.perf_counter() - t0, 2), "processes": world}
            training.end_step(s, cfg, rec, history, f"dpo step {s.step}/{cfg.steps} loss {rec['loss']:.4f} implicit "
                                                    f"acc {rec['implicit_acc']:.2f} margin {rec['reward_margin']:+.4f}")
    # 4. Save LoRA weights (or the pipeline) and train.json.
    return training.finish(cfg, s, history)


def format_summary(s: dict, cfg: TrainDPOConfig | None = None) -> str:
    extra = ""
    if "final_loss" in s:
        extra = f", last-20-step loss {s['final_loss']:.4f}, implicit accuracy {s['final_implicit_acc']:.2f}"
    return f"train dpo: {s['steps']} steps{extra} -> {s['lora'] or s.get('pipeline') or s['out']}"


__all__ = ["run", "format_summary", "NonFiniteLoss", "latest_checkpoint"]
