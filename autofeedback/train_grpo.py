"""train grpo: online RL of an SD-family pipeline's UNet (and text encoder) where the reward is any judge.

Reads:   --prompts (a file or suite; --split train), the reward judges (--reward JUDGE[=WEIGHT], repeatable)
Writes:  RUN/prompts.parquet     the training prompts
         RUN/images.parquet      every training sample: model = "<model>+grpo:<out>/epoch-N", seed, steps, guidance,
                                 sampler "DDIM eta=E" (or "FlowSDE eta=E")
         RUN/judgments.parquet   every reward judge's answer for every sample (the judge stage's rows and request_ids:
                                 `judge`, `pairs`, `eval`, `export`, `publish` use them as they are)
         RUN/<out>/lora/ or pipeline/, checkpoints/step-N/ (N epochs done; as train dpo: `generate --lora`)
         RUN/<out>/metrics.jsonl  one record per epoch: reward per judge, gold at eta=0 and the training eta, KL,
                                 clip fraction, loss, seconds spent sampling / waiting for rewards / training / gold,
                                 the reward server's concurrency achieved
         RUN/<out>/train.json, RUN/<out>/report.png (train reward, gold reward, KL and clip fraction per epoch)

Every epoch: --prompts-per-epoch prompts, --group-size samples each from the stochastic sampler (DDIM at eta > 0, or
a flow-matching pipeline's SDE; autofeedback.policy), keeping every step's latent and exact log-probability. The
images go to the reward judges while the next batch is drawn (autofeedback.rewards). Advantages are normalized within
each prompt's group; the loss is PPO's clipped policy ratio on --train-fraction of each chain's steps (random, or a
window) + --kl-weight x the KL to the reference (LoRA: the same UNet with adapters disabled; full: a frozen copy,
and the text encoder's copy with --train-text-encoder). --guidance <= 1 trains without guidance.
A held-out --gold judge is scored at the start of every epoch (and after the last) on held-out prompts at eta=0 with
--eval-guidance, the sampler users generate with, and at the training sampler: the gap between the train reward and
the gold is reward hacking.
Resume: a checkpoint after every epoch (the epoch's images and judgments are written before it trains). Every
sample's noise comes from its own seed (seed, epoch, prompt, index), so a rerun redraws a killed epoch's images
exactly and their answers come from the judgments table and the judge's reply cache: no paid request repeats.
A non-finite loss stops the run (exit code 3) and keeps the last good checkpoint. Runs under `accelerate launch`:
the groups are dealt to the processes, each rewards its own.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import numpy as np
import torch

from . import policy, progress, rewards, tables, training
from . import prompts as prompts_mod
from .config import TrainGRPOConfig
from .errors import InputError
from .generate import image_seed, model_fingerprint, png_bytes
from .training import NonFiniteLoss

# fields that do not change what the policy draws (so not part of the samples' identity; --epochs extends a run)
NOT_IDENTITY = {"run_dir", "out", "epochs", "resume", "keep_checkpoints", "progress", "gold", "gold_prompts",
                "gold_split", "gold_limit", "gold_images_per_prompt", "gold_every", "gold_train_eta", "eval_steps",
                "eval_guidance", "base_url", "api_key_env", "concurrency", "rpm", "tpm", "timeout", "max_retries",
                "max_cost", "sample_batch"}


def load_prompts(source, split, limit) -> tuple[list[dict], dict, dict]:
    rows = prompts_mod.load(source, split=split, limit=limit).to_pylist()
    return rows, {r["prompt_id"]: prompts_mod.metadata(r) for r in rows}, {r["prompt_id"]: r["suite"] for r in rows}


def epoch_prompts(n: int, per_epoch: int, seed: int, epoch: int) -> list[int]:
    """The prompts of an epoch: without replacement (whole permutations when there are fewer than asked)."""
    rng = np.random.default_rng([seed, epoch, 20])
    order = np.concatenate([rng.permutation(n) for _ in range(-(-per_epoch // n))])
    return [int(i) for i in order[:per_epoch]]


def sample_seed(seed: int, epoch: int, prompt_id: str, k: int) -> int:
    return int(tables.content_id("grpo-seed", seed, epoch, prompt_id, k), 16) % (2**31 - 1)


def run(cfg: TrainGRPOConfig) -> dict:
    # 1. Check inputs: prompts, gold prompts, the judges (before the model is loaded).
    train_rows, meta, suite = load_prompts(cfg.prompts, cfg.split, cfg.limit)
    gold_rows, gold_meta, gold_suite = ([], {}, {}) if not cfg.gold else load_prompts(
        cfg.gold_prompts or cfg.prompts, cfg.gold_split, None)
    if cfg.gold_limit and len(gold_rows) > cfg.gold_limit:  # spread evenly: a suite's file order groups concepts
        gold_rows = [gold_rows[int(i)] for i in np.linspace(0, len(gold_rows) - 1, cfg.gold_limit).round()]
    if cfg.window_start >= cfg.sample_steps:
        raise InputError(f"--window-start {cfg.window_start}: the chain has only {cfg.sample_steps} steps")
    policy_id = tables.content_id("grpo", model_fingerprint(cfg.model),
                                  cfg.model_dump(mode="json", exclude=NOT_IDENTITY))
    rw = rewards.RewardJudges(cfg, meta, suite)  # an unknown judge or a missing API key fails here
    stopped = None
    try:
        # 2. Load the pipeline (LoRA or full + reference), resume from the latest checkpoint (= epochs done).
        s = training.setup(cfg, need_reference=True)
        rank, world = s.accelerator.process_index, s.accelerator.num_processes
        if cfg.prompts_per_epoch % world:
            raise InputError(f"--prompts-per-epoch {cfg.prompts_per_epoch} must be a multiple of the {world} processes")
        if not hasattr(s.accelerator.unwrap_model(s.unet).config, "in_channels"):
            raise InputError(f"{cfg.model}: train grpo trains a UNet (SD-family pipelines); this one has none")
        chain = policy.Chain(s.pipe.scheduler, cfg.sample_steps)
        history = _read_history(s.out_dir, s.step)
        main = s.accelerator.is_main_process
        gold = rewards.GoldJudge(cfg, gold_meta, gold_suite) if cfg.gold and main else None
        with tables.run_lock(cfg.run_dir) if main else nullcontext():
            if main:
                for name in ("images", "judgments"):
                    tables.clean_temp(tables.table_path(cfg.run_dir, name))
                known = tables.read_keys(tables.table_path(cfg.run_dir, "prompts"), "prompts")
                tables.append(tables.table_path(cfg.run_dir, "prompts"),
                              [r for r in train_rows if r["prompt_id"] not in known], "prompts")
            s.accelerator.wait_for_everyone()
            s.bar = bar = progress.bar(cfg.epochs, "train grpo", unit="epoch", enabled=cfg.progress and main,
                                       initial=min(s.step, cfg.epochs))
            # 3. Epochs: gold -> sample (rewards asked meanwhile) -> advantages -> train -> checkpoint.
            while s.step < cfg.epochs:
                epoch = s.step
                rec = {"epoch": epoch, "step": epoch}
                if gold is not None and epoch % cfg.gold_every == 0:
                    rec.update(_gold(s, cfg, gold, gold_rows, policy_id, epoch))
                rec.update(_epoch(s, cfg, chain, rw, train_rows, policy_id, epoch))
                if rec.get("stopped"):
                    stopped = rec["stopped"]
                    s.log(f"epoch {epoch}: {rec['stopped']}; not trained. Run again (with a larger --max-cost) "
                          f"to go on")
                    break
                s.step = epoch + 1
                history = [h for h in history if h["epoch"] != epoch] + [rec]
                training.log_step(s, rec, 1, cfg.epochs, _line(rec))
                training.checkpoint(s, cfg.keep_checkpoints)
                bar.update(1)
            # 4. Gold after the last epoch; weights, train.json, report.png.
            if gold is not None and s.step >= cfg.epochs and not any(h["epoch"] == cfg.epochs for h in history):
                rec = {"epoch": cfg.epochs, "step": cfg.epochs, **_gold(s, cfg, gold, gold_rows, policy_id, cfg.epochs)}
                history.append(rec)
                training.log_step(s, rec, 1, cfg.epochs, _line(rec))
            rw.close(timeout=cfg.timeout)
            s.accelerator.wait_for_everyone()
            if main:  # one shard per sampling batch while training; merged at the end
                for name in ("images", "judgments"):
                    tables.compact(tables.table_path(cfg.run_dir, name), name)
    finally:
        rw.close(timeout=cfg.timeout)
    summary = training.finish(cfg, s, [h for h in history if "loss" in h])
    summary.update(epochs=s.step, curves=history, stopped=stopped)
    if main:
        from .grpo_report import plot

        path = s.out_dir / "train.json"
        data = json.loads(path.read_text())
        data.update(epochs_done=s.step, stopped=stopped, curves=history)
        tables.write_atomic(path, json.dumps(data, indent=2))
        summary["report"] = plot(history, s.out_dir / "report.png")
    return summary


def _read_history(out_dir: Path, done: int) -> list[dict]:
    """Epoch records of a resumed run (metrics.jsonl; the last record of an epoch wins, none past the checkpoint)."""
    path = out_dir / "metrics.jsonl"
    recs: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if r.get("epoch", 1 << 30) < done or (r.get("epoch") == done and "loss" not in r):
                    recs[r["epoch"]] = r
    return [recs[k] for k in sorted(recs)]


def _line(rec: dict) -> str:
    parts = [f"epoch {rec['epoch']}"]
    if "reward" in rec:
        parts.append(f"reward {rec['reward']:.3f}")
    for k, name in (("gold_aligned", "gold eta=0 aligned"), ("gold_score", "gold eta=0 score"),
                    ("gold_train_aligned", "gold train-eta aligned")):
        if rec.get(k) is not None:
            parts.append(f"{name} {rec[k]:.3f}")
    if "kl" in rec:
        parts.append(f"kl {rec['kl']:.2e} clipfrac {rec['clipfrac']:.2f} loss {rec['loss']:+.4f}")
    if "seconds" in rec:
        parts.append(f"({rec['sample_s']:.0f}s sampling, {rec['reward_wait_s']:.0f}s reward wait, "
                     f"{rec['train_s']:.0f}s training)")
    return " ".join(parts)


def _embed(s, prompts: list[str], grad: bool):
    with nullcontext() if grad else torch.no_grad():
        return s.embed(prompts)


def _epoch(s, cfg, chain, rw, train_rows, policy_id: str, epoch: int) -> dict:
    """Sample this process's groups, write them, get their rewards, train on them."""
    acc = s.accelerator
    rank, world, device = acc.process_index, acc.num_processes, acc.device
    chosen = epoch_prompts(len(train_rows), cfg.prompts_per_epoch, cfg.seed, epoch)[rank::world]
    items = [(g, k, train_rows[i], sample_seed(cfg.seed, epoch, train_rows[i]["prompt_id"], k))
             for g, i in enumerate(chosen) for k in range(cfg.group_size)]
    unet = acc.unwrap_model(s.unet)
    shape = _latent_shape(unet)
    model_name = f"{cfg.model}+grpo:{cfg.out}/epoch-{epoch}"
    sampler = f"{'FlowSDE' if chain.flow else 'DDIM'} eta={cfg.eta:g}"
    settings = {"steps": cfg.sample_steps, "guidance": cfg.guidance, "eta": cfg.eta}
    images_path = tables.table_path(cfg.run_dir, "images")
    have = tables.read_keys(images_path, "images")
    guided = cfg.guidance > 1
    for m in s.models:
        acc.unwrap_model(m).eval()
    # 1. Sample in batches; each batch's images are written and handed to the reward judges at once.
    t0 = time.perf_counter()
    lats, lps, ids = [], [], []
    for b in range(0, len(items), cfg.sample_batch):
        batch = items[b:b + cfg.sample_batch]
        prompts = [it[2]["prompt"] for it in batch]
        cond = _embed(s, prompts, False)
        uncond = _embed(s, [""] * len(batch), False) if guided else None
        gens = [torch.Generator().manual_seed(it[3]) for it in batch]
        with acc.autocast():
            x, lat, lp = policy.sample(unet, chain, cond, uncond, cfg.guidance, cfg.eta, gens, shape)
            arrays = policy.decode(s.pipe.vae, x)
        lats.append(lat.cpu())
        lps.append(lp.cpu())
        rows, now = [], tables.now()
        for (g, k, p, seed), arr in zip(batch, arrays):
            image_id = tables.content_id("image", "grpo", policy_id, epoch, p["prompt_id"], seed, settings)
            ids.append(image_id)
            rows.append({"image_id": image_id, "prompt_id": p["prompt_id"], "prompt": p["prompt"], "model": model_name,
                         "seed": seed, "steps": cfg.sample_steps, "guidance": cfg.guidance,
                         "height": int(arr.shape[0]), "width": int(arr.shape[1]), "sampler": sampler, "lora": None,
                         "image": {"bytes": png_bytes(arr), "path": f"{image_id}.png"}, "created_at": now})
        tables.append(images_path, [r for r in rows if r["image_id"] not in have], "images", tag=f"r{rank}")
        rw.submit(rows)
    t_sample = time.perf_counter() - t0
    # 2. Every reward (written before training: a killed run re-asks nothing), group advantages.
    t1 = time.perf_counter()
    answers = rw.collect()
    t_wait = time.perf_counter() - t1
    n_groups = len(chosen)
    per_judge = {}
    for spec, rows in answers.items():
        vals = [rewards.reward_value(rows.get(i, {}), cfg.reward_value) for i in ids]
        per_judge[spec] = np.array([np.nan if v is None else v for v in vals], dtype=np.float64).reshape(
            n_groups, cfg.group_size)
    statuses = [r["status"] for rows in answers.values() for r in rows.values()]
    rec = {"samples": len(items) * world, "reward_stats": rw.stats()}
    sums = torch.tensor([[np.nansum(r), np.sum(~np.isnan(r))] for r in per_judge.values()] +
                        [[float("budget" in statuses), 0.0]], dtype=torch.float64, device=device)
    sums = acc.reduce(sums, "sum") if world > 1 else sums
    for (spec, _), (total, n) in zip(per_judge.items(), sums[:-1].tolist()):
        rec[f"reward/{spec}"] = total / n if n else None
        rec[f"rewarded/{spec}"] = int(n)
    means = [(cfg.reward[j], rec[f"reward/{j}"]) for j in per_judge if rec[f"reward/{j}"] is not None]
    rec["reward"] = sum(w * m for w, m in means) / sum(w for w, _ in means) if means else None
    if float(sums[-1, 0]) > 0:
        return {**rec, "stopped": f"--max-cost {cfg.max_cost} reached"}
    adv = policy.combined_advantages(per_judge, cfg.reward, cfg.std_normalize, cfg.adv_clip).reshape(-1)
    rec["groups_with_signal"] = round(float(np.mean(np.abs(adv.reshape(n_groups, -1)).sum(1) > 0)), 4)
    # 3. Train: the clipped ratio (+ KL to the reference) on a share of each chain's steps.
    t2 = time.perf_counter()
    rec.update(_train(s, cfg, chain, torch.cat(lats), torch.cat(lps), torch.tensor(adv, dtype=torch.float32),
                      [it[2]["prompt"] for it in items], epoch))
    rec.update(sample_s=round(t_sample, 2), reward_wait_s=round(t_wait, 2), train_s=round(time.perf_counter() - t2, 2),
               seconds=round(time.perf_counter() - t0, 2))
    return rec


def _latent_shape(unet) -> tuple:
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (unet.config.in_channels, h, w)


def train_steps(cfg, rng: np.random.Generator) -> list[int]:
    """The chain steps trained for one minibatch: a random subset, or the window."""
    n = max(1, round(cfg.train_fraction * cfg.sample_steps))
    if cfg.step_choice == "window":
        return list(range(cfg.window_start, min(cfg.window_start + n, cfg.sample_steps)))
    return sorted(int(j) for j in rng.choice(cfg.sample_steps, n, replace=False))


def step_terms(s, cfg, chain, x, t_index: int, prompts: list[str], reference: bool):
    """The policy's step statistics at chain step t_index (with gradients), and the reference's mean."""
    guided = cfg.guidance > 1
    grad = s.train_text_encoder
    cond = _embed(s, prompts, grad)
    uncond = _embed(s, [""] * len(prompts), grad) if guided else None
    t = chain.timesteps[t_index].to(x.device)
    mean, std = chain.stats(policy.predict(s.unet, x, t, cond, uncond, cfg.guidance), t_index, x, cfg.eta)
    ref_mean = None
    if reference:
        ref_c = s.reference_embed(prompts, cond)
        if guided:
            ref_u = s.reference_embed([""] * len(prompts), uncond)
            out_u, out_c = s.reference_pred(torch.cat([x, x]), t, torch.cat([ref_u, ref_c])).chunk(2)
            ref_pred = out_u + cfg.guidance * (out_c - out_u)
        else:
            ref_pred = s.reference_pred(x, t, ref_c)
        ref_mean, _ = chain.stats(ref_pred, t_index, x, cfg.eta)
    return mean, std, ref_mean


def _train(s, cfg, chain, lats, old_lp, adv, prompts: list[str], epoch: int) -> dict:
    acc = s.accelerator
    rank, world, device = acc.process_index, acc.num_processes, acc.device
    # groups with no signal only add KL: skipped when there is none to add (and one process: equal work per process)
    keep = np.arange(len(prompts)) if (cfg.kl_weight > 0 or world > 1) else np.flatnonzero(adv.numpy() != 0)
    s.train_mode()
    losses, pgs, kls, fracs, kl_start = [], [], [], [], None
    n_opt = micro = 0
    for inner in range(cfg.inner_epochs):
        rng = np.random.default_rng([cfg.seed, epoch, inner, rank, 21])
        order = keep[rng.permutation(len(keep))]
        batches = [order[b:b + cfg.batch_size] for b in range(0, len(order), cfg.batch_size)]
        for bi, idx in enumerate(batches):
            steps = train_steps(cfg, rng)
            last_micro = (micro + 1) % cfg.grad_accum == 0 or (inner == cfg.inner_epochs - 1 and bi == len(batches) - 1)
            batch_prompts = [prompts[i] for i in idx]
            a = adv[idx].to(device)
            for n, j in enumerate(steps):
                sync = last_micro and n == len(steps) - 1
                with ExitStack() as stack:
                    if not sync and world > 1:
                        for m in s.models:
                            stack.enter_context(acc.no_sync(m))
                    x, x_next = lats[idx, j].to(device), lats[idx, j + 1].to(device)
                    with_ref = cfg.kl_weight > 0 or n == 0  # KL is logged on one step per minibatch when not trained
                    mean, std, ref_mean = step_terms(s, cfg, chain, x, j, batch_prompts, with_ref)
                    lp = policy.step_logprob(x_next, mean, std)
                    pg, ratio = policy.clipped_objective(lp, old_lp[idx, j].to(device), a, cfg.clip_range)
                    kl = policy.kl_to_reference(mean, ref_mean, std).mean() if with_ref else None
                    loss = (pg + cfg.kl_weight * kl if cfg.kl_weight > 0 else pg) / len(steps)
                    if not torch.isfinite(loss):
                        last = training.latest_checkpoint(s.out_dir)
                        raise NonFiniteLoss(f"loss is {loss.item()} in epoch {epoch}; stopped. The last good "
                                            f"checkpoint is {last or 'none (no epoch finished yet)'}; lower --lr")
                    acc.backward(loss)
                losses.append(float(loss.detach()) * len(steps))
                pgs.append(float(pg.detach()))
                fracs.append(float(((ratio.detach() - 1).abs() > cfg.clip_range).float().mean()))
                if kl is not None:
                    kls.append(float(kl.detach()))
                    if kl_start is None:
                        kl_start = float(kl.detach())
            micro += 1
            if last_micro:
                if cfg.max_grad_norm:
                    acc.clip_grad_norm_(s.params, cfg.max_grad_norm)
                s.opt.step()
                s.opt.zero_grad(set_to_none=True)
                if s.ema is not None:
                    s.ema.step(s.params)
                n_opt += 1
    stats = torch.tensor([np.sum(losses), np.sum(pgs), np.sum(kls), np.sum(fracs), len(losses), len(kls)],
                         dtype=torch.float64, device=device)
    stats = (acc.reduce(stats, "sum") if world > 1 else stats).tolist()
    n, nk = max(stats[4], 1), max(stats[5], 1)
    return {"loss": round(stats[0] / n, 6), "policy_loss": round(stats[1] / n, 6), "kl": stats[2] / nk,
            "kl_start": kl_start, "clipfrac": round(stats[3] / n, 4), "optimizer_steps": n_opt,
            "trained_samples": int(len(keep)) * cfg.inner_epochs}


def _gold(s, cfg, gold, gold_rows, policy_id: str, epoch: int) -> dict:
    """The gold judge on the held-out prompts, at eta=0 (--eval-steps, --eval-guidance) and the training sampler."""
    t0 = time.perf_counter()
    unet = s.accelerator.unwrap_model(s.unet)
    shape = _latent_shape(unet)
    samplers = [("gold", policy.Chain(s.pipe.scheduler, cfg.eval_steps), 0.0, cfg.eval_guidance)]
    if cfg.gold_train_eta:
        samplers.append(("gold_train", policy.Chain(s.pipe.scheduler, cfg.sample_steps), cfg.eta,
                         cfg.guidance))
    items = [(p, image_seed(cfg.seed, p["prompt_id"], k)) for p in gold_rows for k in range(cfg.gold_images_per_prompt)]
    out = {}
    was_training = unet.training
    unet.eval()
    for name, chain, eta, guidance in samplers:
        images = []
        for b in range(0, len(items), cfg.sample_batch):
            batch = items[b:b + cfg.sample_batch]
            cond = _embed(s, [p["prompt"] for p, _ in batch], False)
            uncond = _embed(s, [""] * len(batch), False) if guidance > 1 else None
            gens = [torch.Generator().manual_seed(seed) for _, seed in batch]
            with s.accelerator.autocast():
                x, _, _ = policy.sample(unet, chain, cond, uncond, guidance, eta, gens, shape)
                arrays = policy.decode(s.pipe.vae, x)
            for (p, seed), arr in zip(batch, arrays):
                images.append({"image_id": tables.content_id("image", "grpo-gold", policy_id, epoch, p["prompt_id"],
                                                             seed, name, chain.steps, guidance, eta),
                               "prompt_id": p["prompt_id"], "prompt": p["prompt"],
                               "image": {"bytes": png_bytes(arr), "path": None}})
        rows = gold.score(images)
        labels = [float(r["label"]) for r in rows if r.get("status") == "ok" and r.get("label") is not None]
        scores = [rewards.reward_value(r, "score") for r in rows]
        scores = [v for v in scores if v is not None]
        out[f"{name}_aligned"] = round(float(np.mean(labels)), 4) if labels else None
        out[f"{name}_score"] = round(float(np.mean(scores)), 4) if scores else None
        out[f"{name}_n"] = len(rows)
    unet.train(was_training)
    out["gold_s"] = round(time.perf_counter() - t0, 2)
    return out


def format_summary(s: dict, cfg: TrainGRPOConfig | None = None) -> str:
    curves = [h for h in s.get("curves", []) if h.get("reward") is not None]
    golds = [h for h in s.get("curves", []) if h.get("gold_aligned") is not None]
    parts = [f"train grpo: {s.get('epochs', s['steps'])} epochs"]
    if curves:
        first, last = curves[0], curves[-1]
        parts.append(f"train reward {first['reward']:.3f} (epoch {first['epoch']}) -> {last['reward']:.3f} "
                     f"(epoch {last['epoch']})")
    if golds:
        parts.append(f"gold eta=0 aligned {golds[0]['gold_aligned']:.3f} -> {golds[-1]['gold_aligned']:.3f}")
    return ", ".join(parts) + f" -> {s['lora'] or s.get('pipeline') or s['out']}"


__all__ = ["run", "format_summary", "NonFiniteLoss", "step_terms", "train_steps", "epoch_prompts"]
