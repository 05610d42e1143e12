"""train dpo: Diffusion-DPO (Wallace et al. 2023) on the UNet of an SD-family diffusers pipeline.

Reads:   RUN/preferences.parquet (prompt, chosen_image_id, rejected_image_id), RUN/images.parquet (image)
Writes:  RUN/<out>/lora/pytorch_lora_weights.safetensors   (LoRA: `pipe.load_lora_weights`, `generate --lora`)
         RUN/<out>/unet/                                    (full fine-tune)
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

import io
import json
import time
from pathlib import Path

import numpy as np

from . import tables
from .config import TrainDPOConfig
from .errors import InputError


class NonFiniteLoss(RuntimeError):
    pass


def _load_pairs(run_dir: Path, limit: int | None) -> tuple[list[dict], dict[str, bytes]]:
    ppath = tables.table_path(run_dir, "preferences")
    if not tables.exists(ppath):
        raise InputError(f"{ppath}: no preferences table; run `autofeedback pairs {run_dir}` first")
    prefs = tables.read(ppath, "preferences", columns=["pair_id", "prompt", "chosen_image_id",
                                                       "rejected_image_id"]).to_pylist()
    if not prefs:
        raise InputError(f"{ppath}: the preferences table is empty")
    prefs.sort(key=lambda r: r["pair_id"])
    if limit:
        prefs = prefs[:limit]
    needed = {r["chosen_image_id"] for r in prefs} | {r["rejected_image_id"] for r in prefs}
    images = tables.read(tables.table_path(run_dir, "images"), "images", columns=["image_id", "image"])
    by_id = {i: im["bytes"] for i, im in zip(images.column("image_id").to_pylist(), images.column("image").to_pylist())
             if i in needed}
    missing = needed - set(by_id)
    if missing:
        raise InputError(f"{len(missing)} preference images are not in {run_dir}/images.parquet "
                         f"(e.g. {sorted(missing)[0]})")
    return prefs, by_id


def _to_tensor(png: bytes, size: tuple[int, int]):
    import torch
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def _loss(model_w, model_l, ref_w, ref_l, beta: float, kind: str):
    import torch.nn.functional as F

    h = (model_w - ref_w) - (model_l - ref_l)
    z = -0.5 * beta * h
    if kind == "sigmoid":
        losses = -F.logsigmoid(z)
    else:  # IPO: regress the implicit log-ratio margin (-h/2) to 1/(2 beta) instead of pushing it to infinity
        losses = (-0.5 * h - 1.0 / (2.0 * beta)) ** 2
    return losses.mean(), z


def latest_checkpoint(out_dir: Path) -> Path | None:
    ckpts = [p for p in (out_dir / "checkpoints").glob("step-*") if (p / "step.json").exists()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[1]), default=None)


def run(cfg: TrainDPOConfig) -> dict:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler, DiffusionPipeline

    # 1. Check inputs.
    run_dir = Path(cfg.run_dir)
    out_dir = run_dir / cfg.out
    prefs, image_bytes = _load_pairs(run_dir, cfg.max_pairs)
    from .generate import check_model_path

    check_model_path(cfg.model)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum,
                              mixed_precision=cfg.mixed_precision if cfg.mixed_precision != "no" else None,
                              cpu=cfg.device == "cpu")
    set_seed(cfg.seed + accelerator.process_index)
    log = print if accelerator.is_main_process else (lambda *a, **k: None)

    # 2. Load the pipeline; freeze what isn't trained.
    pipe = DiffusionPipeline.from_pretrained(cfg.model)
    pipe.set_progress_bar_config(disable=True)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    for m in (vae, text_encoder):
        m.requires_grad_(False)
        m.to(accelerator.device)
    ref_unet = None
    if cfg.lora_rank == 0 or cfg.reference == "copy":
        import copy

        ref_unet = copy.deepcopy(unet).requires_grad_(False).to(accelerator.device).eval()
    if cfg.lora_rank > 0:
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                    init_lora_weights="gaussian", target_modules=list(cfg.lora_targets)))
    params = [p for p in unet.parameters() if p.requires_grad]
    watch = _snapshot(unet) if cfg.lora_rank > 0 or sum(p.numel() for p in unet.parameters()) < 50e6 else None
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    unet, opt = accelerator.prepare(unet, opt)
    scale = vae.config.scaling_factor
    size = (vae.config.sample_size, vae.config.sample_size)
    size = tuple(size) if not isinstance(size[0], (list, tuple)) else tuple(size[0])

    # 3. Resume.
    step = 0
    ckpt = latest_checkpoint(out_dir) if cfg.resume else None
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        step = json.loads((ckpt / "step.json").read_text())["step"]
        log(f"resumed from {ckpt} at step {step}")
    if step >= cfg.steps:
        log(f"already trained {step} steps (asked for {cfg.steps}); nothing to do")
        return _finish(cfg, accelerator, unet, out_dir, step, [], None)

    # 4. Train.
    def embed(prompts: list[str]):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(accelerator.device)
        with torch.no_grad():
            return text_encoder(ids)[0]

    def encode(pngs: list[bytes]):
        x = torch.stack([_to_tensor(b, size) for b in pngs]).to(accelerator.device)
        with torch.no_grad():
            return vae.encode(x).latent_dist.sample() * scale

    history: list[dict] = []
    metrics_path = out_dir / "metrics.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    world, rank = accelerator.num_processes, accelerator.process_index
    t0 = time.perf_counter()
    unet.train()
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step, rank])  # the same batches after a resume
        with accelerator.accumulate(unet):
            idx = rng.choice(len(prefs), size=cfg.batch_size, replace=len(prefs) < cfg.batch_size)
            batch = [prefs[i] for i in idx]
            lat = encode([image_bytes[b["chosen_image_id"]] for b in batch] +
                         [image_bytes[b["rejected_image_id"]] for b in batch])
            emb = embed([b["prompt"] for b in batch]).repeat(2, 1, 1)
            gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
            noise = torch.randn(lat[:cfg.batch_size].shape, generator=gen).to(lat.device).repeat(2, 1, 1, 1)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
            t = t.to(lat.device).repeat(2)
            noisy = noise_sched.add_noise(lat, noise, t)
            target = noise_sched.get_velocity(lat, noise, t) if noise_sched.config.prediction_type == "v_prediction" \
                else noise
            pred = unet(noisy, t, encoder_hidden_states=emb).sample
            mse = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
            with torch.no_grad():
                if ref_unet is None:
                    base = accelerator.unwrap_model(unet)
                    base.disable_adapters()
                    ref_pred = unet(noisy, t, encoder_hidden_states=emb).sample
                    base.enable_adapters()
                else:
                    ref_pred = ref_unet(noisy, t, encoder_hidden_states=emb).sample
                ref_mse = ((ref_pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
            mw, ml = mse.chunk(2)
            rw, rl = ref_mse.chunk(2)
            loss, z = _loss(mw, ml, rw, rl, cfg.beta, cfg.loss)
            if cfg.sft_weight:
                loss = loss + cfg.sft_weight * mw.mean()
            if not torch.isfinite(loss):
                last = latest_checkpoint(out_dir)
                raise NonFiniteLoss(f"loss is {loss.item()} at step {step + 1}; stopped. The last good checkpoint "
                                    f"is {last or 'none (no checkpoint saved yet)'}; lower --lr or --beta")
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            step += 1
            rec = {"step": step, "loss": round(loss.item(), 6),
                   "implicit_acc": round(float((z > 0).float().mean()), 4),
                   "reward_margin": round(float(z.detach().mean()), 6),
                   "mse_w": round(float(mw.detach().mean()), 6), "mse_l": round(float(ml.detach().mean()), 6),
                   "seconds": round(time.perf_counter() - t0, 2), "processes": world}
            history.append(rec)
            if accelerator.is_main_process:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                if step % cfg.log_every == 0 or step == cfg.steps:
                    log(f"dpo step {step}/{cfg.steps} loss {rec['loss']:.4f} implicit acc {rec['implicit_acc']:.2f} "
                        f"margin {rec['reward_margin']:+.4f}")
            if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                _checkpoint(accelerator, out_dir, step, cfg.keep_checkpoints)
    return _finish(cfg, accelerator, unet, out_dir, step, history, watch)


def _snapshot(unet) -> dict:
    """Initial trainable values + a fingerprint of the frozen ones, to report what training changed."""
    import torch

    trainable = {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
    frozen = {n: float(p.detach().double().abs().sum()) for n, p in unet.named_parameters() if not p.requires_grad}
    return {"trainable": trainable, "frozen": frozen, "torch": torch}


def _changes(unet, watch: dict) -> dict:
    named = dict(unet.named_parameters())
    changed = [n for n, v in watch["trainable"].items() if not watch["torch"].equal(named[n].detach().cpu(), v.cpu())]
    frozen_changed = [n for n, v in watch["frozen"].items() if float(named[n].detach().double().abs().sum()) != v]
    return {"trainable_params": len(watch["trainable"]), "changed_params": len(changed),
            "unchanged_params": sorted(set(watch["trainable"]) - set(changed))[:10],
            "frozen_changed": len(frozen_changed),
            "trainable_names_sample": sorted(watch["trainable"])[:3]}


def _checkpoint(accelerator, out_dir: Path, step: int, keep: int) -> None:
    path = out_dir / "checkpoints" / f"step-{step}"
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "step.json").write_text(json.dumps({"step": step}))  # written last: marks it complete
        ckpts = sorted((p for p in (out_dir / "checkpoints").glob("step-*") if (p / "step.json").exists()),
                       key=lambda p: int(p.name.split("-")[1]))
        import shutil

        for old in ckpts[:-keep] if keep else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _finish(cfg, accelerator, unet, out_dir: Path, step: int, history: list[dict], watch) -> dict:
    accelerator.wait_for_everyone()
    summary = {"steps": step, "out": str(out_dir), "lora": None}
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(unet)
        if watch is not None and history:
            summary["parameters"] = _changes(model, watch)
        if cfg.lora_rank > 0:
            from diffusers import StableDiffusionPipeline
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            lora_dir = out_dir / "lora"
            StableDiffusionPipeline.save_lora_weights(
                lora_dir, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(model)),
                safe_serialization=True)
            summary["lora"] = str(lora_dir)
        else:
            model.save_pretrained(out_dir / "unet")
        if history:
            last = history[-min(len(history), 20):]
            summary.update({"final_loss": round(float(np.mean([h["loss"] for h in last])), 6),
                            "final_implicit_acc": round(float(np.mean([h["implicit_acc"] for h in last])), 4),
                            "seconds": history[-1]["seconds"]})
        tmp = out_dir / ".train.json.tmp"
        tmp.write_text(json.dumps({"config": json.loads(cfg.model_dump_json()), **summary}, indent=2))
        tmp.replace(out_dir / "train.json")
    accelerator.wait_for_everyone()
    return summary


def format_summary(s: dict, cfg: TrainDPOConfig) -> str:
    extra = ""
    if "final_loss" in s:
        extra = f", last-20-step loss {s['final_loss']:.4f}, implicit accuracy {s['final_implicit_acc']:.2f}"
    return f"train dpo: {s['steps']} steps{extra} -> {s['lora'] or s['out']}"


__all__ = ["run", "format_summary", "NonFiniteLoss", "latest_checkpoint"]
