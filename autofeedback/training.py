"""What the diffusion trainers (train dpo, train rwr) share: loading an SD-family pipeline for training
(LoRA via peft, or full), accelerate, encoding images/prompts, the denoising loss per sample,
checkpoints that resume, and saving weights that `generate --lora` loads.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .images import decode_image
from .model_paths import check_model_path


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class Setup:
    accelerator: object
    pipe: object
    unet: object
    ref_unet: object | None
    opt: object
    params: list
    watch: dict | None
    noise_sched: object
    out_dir: Path
    step: int
    ema: object | None = None
    latents: str = "mode"
    text_encoder: object | None = None  # the pipeline's, prepared by accelerate when it is trained
    train_text_encoder: bool = False
    ref_text_encoder: object | None = None  # frozen reference copy, only when the text encoder is trained
    bar: object | None = None  # progress bar (autofeedback.progress), started by start_progress

    def log(self, msg: str) -> None:
        if self.accelerator.is_main_process:
            if self.bar is not None:
                self.bar.say(msg)
            else:
                print(msg, flush=True)

    # ------------------------------------------------------------------ data
    def drop(self, prompts: list[str], uncond_prob: float, rng: np.random.Generator | None) -> list[str]:
        """Replace some prompts by "" (classifier-free guidance's unconditional branch is trained this often)."""
        if uncond_prob and rng is not None:
            return ["" if rng.random() < uncond_prob else p for p in prompts]
        return list(prompts)

    def embed(self, prompts: list[str]):
        """Prompt embeddings by the text encoder being trained (with gradients when it is); drop() first for
        classifier-free-guidance dropout."""
        import torch

        ids = self._ids(prompts)
        if self.train_text_encoder:
            return self.text_encoder(ids)[0]
        with torch.no_grad():
            return self.text_encoder(ids)[0]

    def reference_embed(self, prompts: list[str], emb):
        """The reference model's embeddings of the same prompts: `emb` itself unless the text encoder is trained,
        then its frozen copy's (or --anchor-model's)."""
        import torch

        if self.ref_text_encoder is None:
            return emb.detach()
        with torch.no_grad():
            return self.ref_text_encoder(self._ids(prompts))[0]

    def _ids(self, prompts: list[str]):
        tok = self.pipe.tokenizer
        return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(self.accelerator.device)

    @property
    def models(self) -> tuple:
        """The models being trained (for accelerator.accumulate, train())."""
        return (self.unet, self.text_encoder) if self.train_text_encoder else (self.unet,)

    def train_mode(self) -> None:
        for m in self.models:
            m.train()

    def encode(self, pngs: list[bytes], flip: np.ndarray | None = None):
        """Images -> latents; flip[i] True mirrors image i left-right first (--random-flip)."""
        import torch

        vae = self.pipe.vae
        size = vae.config.sample_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        x = torch.stack([to_tensor(b, size) for b in pngs])
        if flip is not None and flip.any():
            m = torch.from_numpy(np.asarray(flip, dtype=bool))
            x[m] = x[m].flip(-1)
        x = x.to(self.accelerator.device)
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
            z = posterior.mode() if self.latents == "mode" else posterior.sample()
            return z * vae.config.scaling_factor

    # ------------------------------------------------------------------ loss
    def noised(self, lat, rng: np.random.Generator, share_halves: bool = False, t_min: float = 0.0):
        """(noisy latents, timesteps, target). share_halves: both halves get the same noise and timestep;
        t_min: timesteps from this fraction of the schedule up."""
        import torch

        n = lat.shape[0] // 2 if share_halves else lat.shape[0]
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = torch.randn((n, *lat.shape[1:]), generator=gen)
        total = self.noise_sched.config.num_train_timesteps
        t = torch.randint(int(t_min * total), total, (n,), generator=gen)
        if share_halves:
            noise, t = noise.repeat(2, 1, 1, 1), t.repeat(2)
        noise, t = noise.to(lat.device), t.to(lat.device)
        noisy = self.noise_sched.add_noise(lat, noise, t)
        if self.noise_sched.config.prediction_type == "v_prediction":
            target = self.noise_sched.get_velocity(lat, noise, t)
        else:
            target = noise
        return noisy, t, target

    def mse(self, unet, noisy, t, emb, target):
        pred = unet(noisy, t, encoder_hidden_states=emb).sample
        return ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))

    def reference_pred(self, noisy, t, emb):
        """The reference model's prediction: the frozen copy, or (LoRA) the same UNet with adapters disabled."""
        import torch

        with torch.no_grad():
            if self.ref_unet is not None:
                return self.ref_unet(noisy, t, encoder_hidden_states=emb).sample
            base = self.accelerator.unwrap_model(self.unet)
            base.disable_adapters()
            try:
                return self.unet(noisy, t, encoder_hidden_states=emb).sample
            finally:
                base.enable_adapters()

    def reference_mse(self, noisy, t, emb, target):
        return ((self.reference_pred(noisy, t, emb).float() - target.float()) ** 2).mean(dim=(1, 2, 3))


def batch_rng(seed: int, step: int, rank: int, micro: int = 0) -> np.random.Generator:
    """The generator of one micro-batch: a function of (seed, optimizer step, process, micro-batch), so a resumed
    run draws the same batches, noise and timesteps, and with --grad-accum each micro-batch its own."""
    return np.random.default_rng([seed, step, rank] if micro == 0 else [seed, step, rank, micro])


def flips(cfg, rng: np.random.Generator, n: int) -> np.ndarray | None:
    """Which of n training images to mirror (--random-flip; None without it). Drawn from the batch's generator
    after the batch itself, so runs without the flag draw exactly the batches they drew before."""
    return rng.random(n) < 0.5 if getattr(cfg, "random_flip", False) else None


def anchor_loss(pred, ref_pred):
    """KL to the reference, per sample: the KL between two Gaussian denoising steps of equal variance is a
    constant times the squared difference of their means, i.e. of the two models' predictions at the same
    (x_t, t, prompt); averaged over latent elements like the denoising loss."""
    return ((pred.float() - ref_pred.float()) ** 2).mean(dim=(1, 2, 3))


def to_tensor(png: bytes, size: tuple[int, int]):
    import torch
    from PIL import Image

    img = decode_image(png)
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def setup(cfg, need_reference: bool) -> Setup:
    """Load the pipeline, add LoRA (or keep the full UNet trainable), build the optimizer, resume."""
    import copy

    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler, DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # loading bars: only the training bar is shown (as in generate)
    transformers_logging.disable_progress_bar()
    check_model_path(cfg.model)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum,
                              mixed_precision=cfg.mixed_precision if cfg.mixed_precision != "no" else None,
                              cpu=cfg.device == "cpu")
    set_seed(cfg.seed + accelerator.process_index)
    try:
        pipe = DiffusionPipeline.from_pretrained(cfg.model)
    except Exception as exc:
        raise InputError(f"could not load diffusers pipeline {cfg.model!r}: {str(exc).splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=True)
    unet, te = pipe.unet, pipe.text_encoder
    for m in (pipe.vae, te):
        m.requires_grad_(False)
        m.to(accelerator.device)
    ref_unet = ref_te = None
    ref_model = getattr(cfg, "anchor_model", None)
    if ref_model and cfg.lora_rank > 0:
        raise InputError("--anchor-model needs a full fine-tune (--lora-rank 0): with LoRA the reference is the "
                         "model with its adapters disabled")
    if cfg.train_text_encoder and cfg.lora_rank > 0:
        raise InputError("--train-text-encoder needs a full fine-tune (--lora-rank 0)")
    if cfg.text_encoder_lr is not None and not cfg.train_text_encoder:
        raise InputError("--text-encoder-lr sets the text encoder's learning rate: it needs --train-text-encoder")
    if cfg.interpolate < 1 and cfg.lora_rank > 0:
        raise InputError("--interpolate blends the tuned weights with the base's: it needs a full fine-tune "
                         "(--lora-rank 0)")
    if need_reference and ref_model:
        from diffusers import UNet2DConditionModel

        check_model_path(ref_model)
        ref_unet = UNet2DConditionModel.from_pretrained(ref_model, subfolder="unet")
        ref_unet = ref_unet.requires_grad_(False).to(accelerator.device).eval()
        if cfg.train_text_encoder:
            from transformers import CLIPTextModel

            ref_te = CLIPTextModel.from_pretrained(ref_model, subfolder="text_encoder")
    elif need_reference and (cfg.lora_rank == 0 or getattr(cfg, "reference", "adapters") == "copy"):
        ref_unet = copy.deepcopy(unet).requires_grad_(False).to(accelerator.device).eval()
    if need_reference and cfg.train_text_encoder:
        ref_te = (ref_te or copy.deepcopy(te)).requires_grad_(False).to(accelerator.device).eval()
    if cfg.lora_rank > 0:
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                    init_lora_weights="gaussian", target_modules=list(cfg.lora_targets)))
    small = sum(p.numel() for p in unet.parameters()) < 50e6
    watch = snapshot(unet) if cfg.lora_rank > 0 or small else None
    if cfg.train_text_encoder:  # where a prompt's words become conditioning: counts live here (docs/experiments.md)
        te.requires_grad_(True)
    params = [p for p in unet.parameters() if p.requires_grad] + [p for p in te.parameters() if p.requires_grad]
    te_params = [p for p in te.parameters() if p.requires_grad]
    groups = [{"params": params[:len(params) - len(te_params)]}]
    if te_params:
        groups.append({"params": te_params, "lr": cfg.text_encoder_lr or cfg.lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.train_text_encoder:
        unet, te, opt = accelerator.prepare(unet, te, opt)
    else:
        unet, opt = accelerator.prepare(unet, opt)
    ema = None
    if cfg.ema_decay:  # diffusers' EMAModel, saved and restored with the checkpoints
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=cfg.ema_decay)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    out_dir = Path(cfg.run_dir) / cfg.out
    s = Setup(accelerator, pipe, unet, ref_unet, opt, params, watch,
              DDPMScheduler.from_config(pipe.scheduler.config), out_dir, 0, ema, getattr(cfg, "vae_latents", "mode"),
              te, cfg.train_text_encoder, ref_te)
    ckpt = latest_checkpoint(out_dir) if cfg.resume else None
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        s.step = json.loads((ckpt / "step.json").read_text())["step"]
        s.log(f"resumed from {ckpt} at step {s.step}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return s


def latest_checkpoint(out_dir: Path) -> Path | None:
    ckpts = [p for p in (Path(out_dir) / "checkpoints").glob("step-*") if (p / "step.json").exists()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[1]), default=None)


def checkpoint(s: Setup, keep: int) -> None:
    path = s.out_dir / "checkpoints" / f"step-{s.step}"
    s.accelerator.wait_for_everyone()
    s.accelerator.save_state(str(path))
    if s.accelerator.is_main_process:
        (path / "step.json").write_text(json.dumps({"step": s.step}))  # written last: marks it complete
        ckpts = sorted((p for p in (s.out_dir / "checkpoints").glob("step-*") if (p / "step.json").exists()),
                       key=lambda p: int(p.name.split("-")[1]))
        for old in ckpts[:-keep] if keep else []:
            shutil.rmtree(old, ignore_errors=True)
    s.accelerator.wait_for_everyone()


def optimize(s: Setup, loss, cfg) -> None:
    """Stop on a non-finite loss; else backward, clip, step (accelerate handles accumulation)."""
    check_finite(loss, s)
    s.accelerator.backward(loss)
    if s.accelerator.sync_gradients and cfg.max_grad_norm:
        s.accelerator.clip_grad_norm_(s.params, cfg.max_grad_norm)
    s.opt.step()
    s.opt.zero_grad(set_to_none=True)
    if s.ema is not None and s.accelerator.sync_gradients:
        s.ema.step(s.params)


def start_progress(s: Setup, cfg, desc: str) -> None:
    """A progress bar over the optimizer steps with ETA (main process, stderr a terminal, cfg.progress)."""
    from . import progress

    s.bar = progress.bar(cfg.steps, desc, unit="step", enabled=cfg.progress and s.accelerator.is_main_process,
                         initial=s.step)


def end_step(s: Setup, cfg, rec: dict, history: list[dict], text: str) -> None:
    """After an optimizer step: record, log, and checkpoint every cfg.checkpoint_every steps and at the end."""
    history.append(rec)
    if s.bar is not None:
        s.bar.update(1)
    log_step(s, rec, cfg.log_every, cfg.steps, text)
    if cfg.checkpoint_every and (s.step % cfg.checkpoint_every == 0 or s.step == cfg.steps):
        checkpoint(s, cfg.keep_checkpoints)


def check_finite(loss, s: Setup) -> None:
    import torch

    if not torch.isfinite(loss):
        last = latest_checkpoint(s.out_dir)
        raise NonFiniteLoss(f"loss is {loss.item()} at step {s.step + 1}; stopped. The last good checkpoint is "
                            f"{last or 'none (no checkpoint saved yet)'}; lower the learning rate (or beta)")


def log_step(s: Setup, rec: dict, every: int, total: int, text: str) -> None:
    if s.accelerator.is_main_process:
        with open(s.out_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if rec["step"] % every == 0 or rec["step"] == total:
            s.log(text)


def snapshot(unet) -> dict:
    """Initial trainable values + a fingerprint of the frozen ones, to report what training changed."""
    trainable = {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
    frozen = {n: float(p.detach().double().abs().sum()) for n, p in unet.named_parameters() if not p.requires_grad}
    return {"trainable": trainable, "frozen": frozen}


def changes(unet, watch: dict) -> dict:
    import torch

    named = dict(unet.named_parameters())
    changed = [n for n, v in watch["trainable"].items() if not torch.equal(named[n].detach().cpu(), v.cpu())]
    frozen_changed = [n for n, v in watch["frozen"].items() if float(named[n].detach().double().abs().sum()) != v]
    return {"trainable_params": len(watch["trainable"]), "changed_params": len(changed),
            "unchanged_params": sorted(set(watch["trainable"]) - set(changed))[:10],
            "frozen_changed": len(frozen_changed), "trainable_names_sample": sorted(watch["trainable"])[:3]}


def blend(model, base: dict, alpha: float) -> None:
    """WiSE-FT (Wortsman et al. 2022), in place: every floating-point weight <- base + alpha * (tuned - base).
    Keeps most of a fine-tune's gain and less of its forgetting (docs/experiments.md, session 13)."""
    import torch

    with torch.no_grad():
        for name, w in model.state_dict().items():
            if w.is_floating_point():
                w.copy_(torch.lerp(base[name].to(w.device, w.dtype), w, alpha))


def _base_state(model, path: str, subfolder: str) -> dict:
    """The starting pipeline's weights of one component, read again from disk (no copy is held while training)."""
    return type(model).from_pretrained(path, subfolder=subfolder).state_dict()


def finish(cfg, s: Setup, history: list[dict]) -> dict:
    """Save the weights (LoRA for load_lora_weights, or a full pipeline) and train.json."""
    if s.bar is not None:
        s.bar.close()
        s.bar = None
    s.accelerator.wait_for_everyone()
    summary: dict = {"steps": s.step, "out": str(s.out_dir), "lora": None}
    if s.ema is not None:
        s.ema.copy_to(s.params)  # the averaged weights are what is saved
    if s.accelerator.is_main_process:
        model = s.accelerator.unwrap_model(s.unet)
        if s.watch is not None and history:
            summary["parameters"] = changes(model, s.watch)
        alpha = cfg.interpolate
        if alpha < 1:  # the checkpoints keep the tuned weights: a resumed run blends again from them
            blend(model, _base_state(model, cfg.model, "unet"), alpha)
            if s.train_text_encoder:
                te = s.accelerator.unwrap_model(s.text_encoder)
                blend(te, _base_state(te, cfg.model, "text_encoder"), alpha)
            summary["interpolate"] = alpha
        if cfg.lora_rank > 0:
            from diffusers import StableDiffusionPipeline
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            lora_dir = s.out_dir / "lora"
            # the adapter config (alpha, targets) goes into the file's metadata: without it a loader assumes
            # alpha = rank and an adapter trained with another alpha reloads at the wrong scale
            # (sets sorted: the file's bytes are its identity for `generate`, so they must not vary by run)
            meta = {k: sorted(v) if isinstance(v, set) else v for k, v in model.peft_config["default"].to_dict().items()}
            StableDiffusionPipeline.save_lora_weights(
                lora_dir, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(model)),
                unet_lora_adapter_metadata=meta, safe_serialization=True)
            summary["lora"] = str(lora_dir)
        else:  # a complete pipeline with the tuned UNet (and text encoder): `generate --model RUN/<out>/pipeline`
            s.pipe.unet = model
            if s.train_text_encoder:
                s.pipe.text_encoder = s.accelerator.unwrap_model(s.text_encoder)
            s.pipe.save_pretrained(s.out_dir / "pipeline")
            summary["pipeline"] = str(s.out_dir / "pipeline")
        if history:
            last = history[-min(len(history), 20):]
            summary["final_loss"] = round(float(np.mean([h["loss"] for h in last])), 6)
            if "implicit_acc" in last[0]:
                summary["final_implicit_acc"] = round(float(np.mean([h["implicit_acc"] for h in last])), 4)
            summary["seconds"] = history[-1]["seconds"]
        tmp = s.out_dir / ".train.json.tmp"
        tmp.write_text(json.dumps({"config": json.loads(cfg.model_dump_json()), **summary}, indent=2))
        tmp.replace(s.out_dir / "train.json")
    s.accelerator.wait_for_everyone()
    return summary
