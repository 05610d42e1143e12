"""Recipe for the tiny shapes text-to-image model shipped in data/models/shapes-tiny.

A standard diffusers StableDiffusionPipeline, small enough to train on 2 CPU cores:
  tokenizer     CLIPTokenizer over a word-level BPE vocabulary written here (offline)
  text_encoder  CLIPTextModel, 2 layers x 64 wide, trained jointly with the UNet
  vae           AutoencoderKL, 32x32 RGB <-> 16x16x4 latents, trained first on rendered scenes
  unet          UNet2DConditionModel on 16x16 latents, cross-attention at 8x8 plus an attention-pooled
                text embedding added to the timestep embedding (diffusers' addition_embed_type="text")
  scheduler     DDIM (v-prediction, cosine schedule)

Trained on rendered scenes of the *train* split only, so held-out prompts hold unseen count-color
combinations. It is deliberately small and briefly trained: counts and shapes are often wrong (held-out
alignment ~40%), which leaves room for feedback training to show gains. The learning rate is constant
after warm-up and the weights are an EMA, so `--snapshot-every N` snapshots are exactly the models
that `--unet-steps N` trains; the shipped model is the 750-step one (step 1,500 already reached ~61%
held-out alignment, with counts stuck near 71%).

    python -m autofeedback.shapes.recipe --out data/models/shapes-tiny          # ~10-16 min, 2 CPU cores
    python -m autofeedback.shapes.recipe --out /tmp/m --vae-steps 20 --unet-steps 20   # smoke

`--caption-noise 0.4 --noisy-fields count,color` trains on web-like labels instead: the same renders, 40% of
captions wrong in the count or the color (never naming a held-out prompt) -- a model that can draw every
scene but follows prompts loosely (README, "Where the feedback loop stands").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .suite import split_of, suite_records
from .world import COUNTS, IMAGE_SIZE, PALETTE, SHAPES, Scene, render

# Words of the shapes world plus a few glue words; everything else falls back to characters.
VOCAB_WORDS = sorted({
    "one", "two", "three", "four", "a", "an", "on", "the", "of", "and", "with", "background", "image", "photo",
    "red", "green", "blue", "yellow", "purple", "white", "black", "orange", "gray",
    "circle", "circles", "square", "squares", "triangle", "triangles",
})
MAX_LENGTH = 32
SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def _bytes_to_unicode() -> dict[int, str]:
    # The GPT-2 / CLIP byte -> printable-unicode table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tokenizer(out: Path):
    """Write vocab.json + merges.txt so that every VOCAB_WORDS word is one token; return the tokenizer."""
    from transformers import CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    seen = set(vocab)

    def load():
        (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab + SPECIAL)}, ensure_ascii=False))
        (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        return CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=MAX_LENGTH)

    # Add merges until every word is one token. A new merge has the lowest priority, so it never
    # changes how an already-whole word is merged.
    for _round in range(200):
        tok = load()
        split = {w: tok.convert_ids_to_tokens(tok(w, add_special_tokens=False).input_ids) for w in VOCAB_WORDS}
        split = {w: s for w, s in split.items() if len(s) > 1}
        if not split:
            break
        for pieces in split.values():
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            if pair[0] + pair[1] not in seen:
                vocab.append(pair[0] + pair[1])
                seen.add(pair[0] + pair[1])
    else:
        raise RuntimeError(f"tokenizer still splits {sorted(split)}")
    return tok


def build_models(tokenizer, unet_width: int = 48):
    """The architecture, from config (random weights); the UNet's blocks have unet_width and 2 x unet_width channels."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, mid_block_add_attention=False,
    )
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(unet_width, 2 * unet_width),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=4, norm_num_groups=16,
        addition_embed_type="text", addition_embed_type_num_heads=4,
        resnet_time_scale_shift="scale_shift",
    )
    return text_encoder, vae, unet


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def mislabel(scene: Scene, fields: tuple[str, ...], rng: np.random.Generator, splits: tuple[str, ...] = ("train",)
             ) -> Scene:
    """The scene's caption with one of `fields` made wrong, the way web alt-text miscounts or misnames,
    into a prompt of `splits` only (by default never a held-out prompt: those stay unseen)."""
    field = fields[int(rng.integers(len(fields)))]
    values = {"count": COUNTS, "shape": SHAPES, "color": tuple(PALETTE), "background": tuple(PALETTE)}[field]
    options = []
    for v in values:
        if v == getattr(scene, field):
            continue
        try:
            other = dataclasses.replace(scene, **{field: v})
        except ValueError:  # color == background
            continue
        if split_of(other) in splits:
            options.append(other)
    return options[int(rng.integers(len(options)))] if options else scene


def render_dataset(per_prompt: int, seed: int, caption_noise: float = 0.0,
                   noisy_fields: tuple[str, ...] = ("count",), splits: tuple[str, ...] = ("train",)
                   ) -> tuple[np.ndarray, list[str], int]:
    """Renders of every prompt of `splits` (default: train only); with caption_noise, that share of captions
    is wrong in one of noisy_fields. Returns (images, captions, number of wrong captions)."""
    records = [r for r in suite_records() if r["split"] in splits]
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng([seed, 1])  # the clean dataset stays the same with or without noise
    images, prompts, wrong = [], [], 0
    for r in records:
        scene = Scene(**r["metadata"])
        for s in rng.integers(0, 2**31, size=per_prompt):
            images.append(np.asarray(render(scene, int(s))))
            caption = scene
            if caption_noise and noise_rng.random() < caption_noise:
                caption = mislabel(scene, noisy_fields, noise_rng, splits)
                wrong += caption != scene
            prompts.append(caption.prompt)
    return np.stack(images), prompts, wrong


def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vae(vae, images: np.ndarray, steps: int, batch: int, seed: int, log) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    x_all = _to_tensor(images)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=max(steps, 1), pct_start=0.05)
    vae.train()
    for step in range(steps):
        x = x_all[torch.randint(len(x_all), (batch,), generator=gen)]
        post = vae.encode(x).latent_dist
        z = post.sample(generator=gen)
        rec = vae.decode(z).sample
        loss = torch.nn.functional.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.5f}")
    vae.eval()


def train_unet(unet, text_encoder, tokenizer, latents, prompts: list[str], steps: int, batch: int, seed: int,
               log, lr: float = 1e-3, uncond_prob: float = 0.1, snapshot=None, snapshot_every: int = 0) -> None:
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    noise_sched = DDPMScheduler.from_config(make_scheduler().config)
    gen = torch.Generator().manual_seed(seed)
    uniq = sorted(set(prompts))
    index = {p: i for i, p in enumerate(uniq)}
    prompt_idx = torch.tensor([index[p] for p in prompts])
    ids = tokenizer(uniq + [""], padding="max_length", max_length=MAX_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    empty = len(uniq)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    # Constant learning rate after warm-up (and EMA weights): the snapshot at step N is exactly the
    # model that --unet-steps N trains, so a snapshot can be shipped honestly.
    warmup = 100
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    ema_unet = EMAModel(unet.parameters(), decay=0.999, use_ema_warmup=True)
    ema_text = EMAModel(text_encoder.parameters(), decay=0.999, use_ema_warmup=True)
    unet.train()
    text_encoder.train()
    t0 = time.time()
    for step in range(steps):
        rows = torch.randint(len(latents), (batch,), generator=gen)
        z0 = latents[rows]
        p = prompt_idx[rows].clone()
        p[torch.rand(batch, generator=gen) < uncond_prob] = empty
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        target = noise_sched.get_velocity(z0, noise, t)
        cond = text_encoder(ids[p])[0]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema_unet.step(unet.parameters())
        ema_text.step(text_encoder.parameters())
        if step % 200 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if snapshot is not None and snapshot_every and (step + 1) % snapshot_every == 0 and step + 1 < steps:
            ema_unet.store(unet.parameters())
            ema_text.store(text_encoder.parameters())
            ema_unet.copy_to(unet.parameters())
            ema_text.copy_to(text_encoder.parameters())
            snapshot(step + 1)
            ema_unet.restore(unet.parameters())
            ema_text.restore(text_encoder.parameters())
    ema_unet.copy_to(unet.parameters())
    ema_text.copy_to(text_encoder.parameters())
    unet.eval()
    text_encoder.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-prompt", type=int, default=80, help="rendered training images per train prompt")
    ap.add_argument("--vae-steps", type=int, default=1000)
    ap.add_argument("--unet-steps", type=int, default=750)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--unet-width", type=int, default=48,
                    help="channels of the UNet's first block (the second has twice); a multiple of 16")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--caption-noise", type=float, default=0.0,
                    help="share of training captions made wrong in one of --noisy-fields (web-like labels)")
    ap.add_argument("--noisy-fields", default="count", help="comma-separated: count, shape, color, background")
    ap.add_argument("--pretrain-split", choices=["train", "all"], default="train",
                    help="render the train prompts only (held-out count-color pairs stay unseen: a test of "
                         "compositional generalization) or every prompt (held-out prompts are then only kept out "
                         "of the feedback: with --caption-noise, a model that has seen every scene under noisy "
                         "labels, as web-trained models have)")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="start the UNet and text encoder from this pipeline's weights (continued pre-training, "
                         "e.g. of data/models/shapes-countnoise on --pretrain-split all) instead of at random")
    ap.add_argument("--snapshot-every", type=int, default=0, help="also save the EMA pipeline every N UNet steps")
    ap.add_argument("--vae-from", type=Path, default=None,
                    help="reuse this pipeline's VAE (and latent scaling) instead of training one, e.g. "
                         "data/models/shapes-tiny: the renders are the same with or without caption noise")
    args = ap.parse_args(argv)
    if args.unet_width <= 0 or args.unet_width % 16:
        ap.error(f"--unet-width must be a positive multiple of 16 (the UNet's group norms), got {args.unet_width}")
    fields = tuple(f.strip() for f in args.noisy_fields.split(",") if f.strip())
    if not 0.0 <= args.caption_noise <= 1.0:
        ap.error(f"--caption-noise must be in [0, 1], got {args.caption_noise}")
    if not fields or set(fields) - {"count", "shape", "color", "background"}:
        ap.error(f"--noisy-fields: expected some of count, shape, color, background; got {args.noisy_fields!r}")

    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    # 1. Tokenizer and architecture.
    tok_dir = args.out / "tokenizer"
    tokenizer = write_tokenizer(tok_dir)
    text_encoder, vae, unet = build_models(tokenizer, args.unet_width)
    if args.init_from:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet.load_state_dict(UNet2DConditionModel.from_pretrained(args.init_from, subfolder="unet").state_dict())
        text_encoder.load_state_dict(CLIPTextModel.from_pretrained(args.init_from, subfolder="text_encoder").state_dict())
        log(f"unet and text encoder from {args.init_from}")
    log(f"params: unet {sum(p.numel() for p in unet.parameters())/1e6:.2f}M, "
        f"vae {sum(p.numel() for p in vae.parameters())/1e6:.2f}M, "
        f"text {sum(p.numel() for p in text_encoder.parameters())/1e6:.2f}M")
    # 2. Data: rendered scenes of train prompts.
    splits = ("train",) if args.pretrain_split == "train" else ("train", "heldout")
    images, prompts, wrong = render_dataset(args.per_prompt, args.seed, args.caption_noise, fields, splits)
    log(f"rendered {len(images)} images of {args.pretrain_split} prompts; {wrong} captions wrong "
        f"({wrong / len(images):.1%}, in {', '.join(fields)})")
    # 3. VAE (trained, or reused), then cache latents with a scaling factor that gives them unit variance.
    if args.vae_from:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae_from, subfolder="vae")
        log(f"vae from {args.vae_from}")
    else:
        train_vae(vae, images, args.vae_steps, args.batch, args.seed, log)
    with torch.no_grad():
        x = _to_tensor(images)
        lat = torch.cat([vae.encode(x[i:i + 512]).latent_dist.mode() for i in range(0, len(x), 512)])
        rec = torch.cat([vae.decode(lat[i:i + 512]).sample for i in range(0, 512, 512)])
        psnr = 10 * math.log10(4.0 / torch.nn.functional.mse_loss(rec, x[:512]).item())
    scaling = float(vae.config.scaling_factor) if args.vae_from else float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=scaling)
    log(f"vae reconstruction PSNR {psnr:.1f} dB; latent scaling factor {scaling:.4f}")
    # 4. UNet + text encoder, v-prediction with classifier-free-guidance dropout.
    def save(out: Path, unet_steps: int) -> None:
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=make_scheduler(),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(out)
        (out / "recipe.json").write_text(json.dumps({
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "out": str(out), "unet_steps": unet_steps, "train_images": len(images), "wrong_captions": wrong,
            "vae_psnr_db": round(psnr, 2), "seconds": round(time.time() - t0, 1), "torch": torch.__version__,
            "command": " ".join(["python -m autofeedback.shapes.recipe", *(argv if argv is not None else sys.argv[1:])]),
        }, indent=2) + "\n")
        log(f"saved {out}")

    train_unet(unet, text_encoder, tokenizer, lat * scaling, prompts, args.unet_steps, args.batch,
               args.seed, log, lr=args.lr, snapshot=lambda n: save(args.out / "snapshots" / f"step-{n}", n),
               snapshot_every=args.snapshot_every)
    # 5. Save a standard pipeline.
    save(args.out, args.unet_steps)


if __name__ == "__main__":
    main()
