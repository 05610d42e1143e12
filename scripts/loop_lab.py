"""The feedback loop in memory, for quick experiments (issue #18; docs/experiments.md, session 7): an experiment,
not a stage of the tool.

One round: the model draws N images per train prompt at --sample-guidance, the exact shapes checker keeps the
aligned ones, and the model is fine-tuned on them (the denoising loss of pre-training, 10% prompt dropout; the
UNet, and with --train-text-encoder the text encoder too), then base and tuned model draw the held-out prompts
(2 seeds each) at guidance 4, as `generate` does, and the checker scores them. Same math as `train rwr` with
label rewards (latents = the VAE posterior's mode), without the Parquet round trips, so one round takes ~5 minutes
on 2 CPU cores.

    python scripts/loop_lab.py --model data/models/shapes-countnoise --sample-guidance 1.5 --train-text-encoder
        # session 7's best row: held-out 21.1% -> 35.6% (count 22.8 -> 39.4, color 98.3 -> 96.1, shape 87.8 -> 82.8)
    python scripts/loop_lab.py --model data/models/shapes-countnoise --sample-guidance 4    # the color drift
    python scripts/loop_lab.py --model data/models/shapes-countnoise --renders              # control: renders
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from autofeedback.generate import load_pipeline
from autofeedback.shapes import checker
from autofeedback.shapes.suite import suite_records
from autofeedback.shapes.world import Scene, render

CONCEPTS = ("aligned", "count", "color", "shape", "background", "readable")


@torch.no_grad()
def sample(pipe, records, n, seed0, guidance, steps=20, batch=96):
    items = [(r, seed0 * 100003 + i * 7919 + k) for i, r in enumerate(records) for k in range(n)]
    images = []
    for b in range(0, len(items), batch):
        chunk = items[b:b + batch]
        out = pipe(prompt=[r["prompt"] for r, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   generator=[torch.Generator().manual_seed(s) for _, s in chunk], output_type="np").images
        images += list((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    return [r for r, _ in items], images


def score(records, images) -> dict[str, float]:
    rows = []
    for r, im in zip(records, images):
        v = checker.check(im, Scene(**r["metadata"]))
        rows.append({**v.correct, "aligned": v.aligned, "readable": v.reading.readable})
    return {k: 100 * float(np.mean([row[k] for row in rows])) for k in CONCEPTS}


def evaluate(pipe, tag, held, train):
    for split, records in (("held-out", held), ("train", train)):
        s = score(*sample(pipe, records, 2, seed0=0 if split == "held-out" else 7, guidance=4.0))
        print(f"{tag:10s} {split:8s} " + "  ".join(f"{k} {v:5.1f}" for k, v in s.items()), flush=True)


def finetune(pipe, prompts, images, steps, lr, batch, train_text_encoder, uncond_prob=0.1, seed=0):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    with torch.no_grad():
        lat = pipe.vae.encode(x).latent_dist.mode() * pipe.vae.config.scaling_factor
    tok = pipe.tokenizer
    ids = tok(list(prompts) + [""], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    empty, ids = ids[-1:], ids[:-1]
    unet, te = pipe.unet, pipe.text_encoder
    params = list(unet.parameters()) + (list(te.parameters()) if train_text_encoder else [])
    te.requires_grad_(train_text_encoder)
    opt = torch.optim.AdamW(params, lr=lr)  # weight decay 0.01, torch's default
    g = torch.Generator().manual_seed(seed)
    unet.train()
    te.train(train_text_encoder)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(lat), (batch,), generator=g)
        tid = ids[idx].clone()
        tid[torch.rand(batch, generator=g) < uncond_prob] = empty
        z0, noise = lat[idx], torch.randn(lat[idx].shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g)
        emb = te(tid)[0]
        pred = unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=emb).sample
        loss = ((pred - sched.get_velocity(z0, noise, t)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % 100 == 0:
            print(f"  step {step + 1} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    unet.eval()
    te.eval()
    for p in params:
        p.requires_grad_(False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="data/models/shapes-countnoise")
    ap.add_argument("--per-prompt", type=int, default=4, help="samples per train prompt")
    ap.add_argument("--sample-guidance", type=float, default=1.5, help="guidance of the training samples")
    ap.add_argument("--train-text-encoder", action="store_true")
    ap.add_argument("--renders", action="store_true", help="control: fine-tune on fresh renders, no feedback")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    records = suite_records()
    train = [r for r in records if r["split"] == "train"]
    held = [r for r in records if r["split"] == "heldout"]
    pipe = load_pipeline(a.model)
    evaluate(pipe, "base", held, train)
    if a.renders:
        rng = np.random.default_rng(5)
        prompts = [r["prompt"] for r in train for _ in range(a.per_prompt)]
        images = [np.asarray(render(Scene(**r["metadata"]), int(rng.integers(2**31))))
                  for r in train for _ in range(a.per_prompt)]
    else:
        recs, ims = sample(pipe, train, a.per_prompt, seed0=3, guidance=a.sample_guidance)
        keep = [i for i, (r, im) in enumerate(zip(recs, ims)) if checker.check(im, Scene(**r["metadata"])).aligned]
        prompts, images = [recs[i]["prompt"] for i in keep], [ims[i] for i in keep]
        print(f"{len(keep)} of {len(ims)} samples aligned (guidance {a.sample_guidance})", flush=True)
    finetune(pipe, prompts, images, a.steps, a.lr, a.batch, a.train_text_encoder)
    evaluate(pipe, "tuned", held, train)


if __name__ == "__main__":
    main()
