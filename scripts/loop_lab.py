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
    python scripts/loop_lab.py --train-text-encoder --freeze-unet --skip-base             # session 8: text encoder only
    python scripts/loop_lab.py --train-text-encoder --reg-pretrain 1 --skip-base          # + pre-training regularizer
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
        rows.append({**v.correct, "aligned": v.aligned, "readable": v.reading.readable,
                     **{f"want_{k}": x for k, x in r["metadata"].items()}})
    out = {k: 100 * float(np.mean([row[k] for row in rows])) for k in CONCEPTS}
    for key in ("shape", "count"):  # shape accuracy by the prompt's shape and count
        for val in sorted({row[f"want_{key}"] for row in rows}):
            sub = [row["shape"] for row in rows if row[f"want_{key}"] == val]
            out[f"shape|{val}"] = 100 * float(np.mean(sub))
    return out


def evaluate(pipe, tag, held, train, splits=("held-out", "train")):
    for split, records in (("held-out", held), ("train", train)):
        if split not in splits:
            continue
        s = score(*sample(pipe, records, 2, seed0=0 if split == "held-out" else 7, guidance=4.0))
        print(f"{tag:10s} {split:8s} " + "  ".join(f"{k} {v:5.1f}" for k, v in s.items() if "|" not in k),
              flush=True)
        print(f"{'':10s} {'':8s} " + "  ".join(f"{k} {v:5.1f}" for k, v in s.items() if "|" in k), flush=True)


def finetune(pipe, prompts, images, steps, lr, batch, train_text_encoder, uncond_prob=0.1, seed=0, train_unet=True,
             reg=None, reg_weight=1.0):
    """reg: (images, captions) mixed into every batch (as many as the feedback samples), loss weight reg_weight."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    tok = pipe.tokenizer

    def encode(images, prompts):
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        with torch.no_grad():
            lat = torch.cat([pipe.vae.encode(x[i:i + 256]).latent_dist.mode() for i in range(0, len(x), 256)])
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        return lat * pipe.vae.config.scaling_factor, ids

    lat, ids = encode(images, prompts)
    empty = encode(images[:1], [""])[1]
    if reg is not None:
        reg_lat, reg_ids = encode(*reg)
    unet, te = pipe.unet, pipe.text_encoder
    params = (list(unet.parameters()) if train_unet else []) + (list(te.parameters()) if train_text_encoder else [])
    unet.requires_grad_(train_unet)
    te.requires_grad_(train_text_encoder)
    opt = torch.optim.AdamW(params, lr=lr)  # weight decay 0.01, torch's default
    g = torch.Generator().manual_seed(seed)
    unet.train()
    te.train(train_text_encoder)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(lat), (batch,), generator=g)
        tid, z0 = ids[idx].clone(), lat[idx]
        if reg is not None:
            ridx = torch.randint(len(reg_lat), (batch,), generator=g)
            tid, z0 = torch.cat([tid, reg_ids[ridx]]), torch.cat([z0, reg_lat[ridx]])
        tid[torch.rand(len(tid), generator=g) < uncond_prob] = empty
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(z0),), generator=g)
        emb = te(tid)[0]
        pred = unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=emb).sample
        per = ((pred - sched.get_velocity(z0, noise, t)) ** 2).mean(dim=(1, 2, 3))
        loss = per[:batch].mean() + (reg_weight * per[batch:].mean() if reg is not None else 0.0)
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
    ap.add_argument("--freeze-unet", action="store_true", help="train the text encoder only")
    ap.add_argument("--min-graded", type=float, default=0.0, help="keep aligned samples with this graded score")
    ap.add_argument("--save", help="save the tuned pipeline here")
    ap.add_argument("--skip-base", action="store_true", help="do not re-measure the base model")
    ap.add_argument("--held-only", action="store_true", help="measure the held-out split only")
    ap.add_argument("--reg-pretrain", type=float, default=0.0,
                    help="weight of a pre-training regularizer: renders of the train prompts with the base model's own "
                         "caption noise (40%% wrong counts, as its recipe), as many per batch as feedback samples")
    ap.add_argument("--no-feedback", action="store_true", help="control: train on the regularizer only")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--renders", action="store_true", help="control: fine-tune on fresh renders, no feedback")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.no_feedback and not a.reg_pretrain:
        ap.error("--no-feedback trains on the regularizer only: give --reg-pretrain WEIGHT")
    torch.set_num_threads(a.threads)
    records = suite_records()
    train = [r for r in records if r["split"] == "train"]
    held = [r for r in records if r["split"] == "heldout"]
    pipe = load_pipeline(a.model)
    splits = ("held-out",) if a.held_only else ("held-out", "train")
    if not a.skip_base:
        evaluate(pipe, "base", held, train, splits)
    if a.renders:
        rng = np.random.default_rng(5)
        prompts = [r["prompt"] for r in train for _ in range(a.per_prompt)]
        images = [np.asarray(render(Scene(**r["metadata"]), int(rng.integers(2**31))))
                  for r in train for _ in range(a.per_prompt)]
    else:
        recs, ims = sample(pipe, train, a.per_prompt, seed0=3, guidance=a.sample_guidance)
        verdicts = [checker.check(im, Scene(**r["metadata"])) for r, im in zip(recs, ims)]
        graded = np.array([v.graded for v in verdicts if v.aligned])
        print("graded score of the aligned samples, quantiles 10/25/50/75/90:",
              np.round(np.quantile(graded, [.1, .25, .5, .75, .9]), 3), flush=True)
        keep = [i for i, v in enumerate(verdicts) if v.aligned and v.graded >= a.min_graded]
        prompts, images = [recs[i]["prompt"] for i in keep], [ims[i] for i in keep]
        print(f"{len(keep)} of {len(ims)} samples aligned (guidance {a.sample_guidance})", flush=True)
    reg = None
    if a.reg_pretrain:
        from autofeedback.shapes.recipe import render_dataset

        reg_images, reg_captions, wrong = render_dataset(4, seed=11, caption_noise=0.4, noisy_fields=("count",))
        reg = (list(reg_images), reg_captions)
        print(f"regularizer: {len(reg_captions)} renders, {wrong} with a wrong count", flush=True)
    if a.no_feedback:
        prompts, images, reg = reg[1], reg[0], None
    finetune(pipe, prompts, images, a.steps, a.lr, a.batch, a.train_text_encoder, seed=a.seed,
             train_unet=not a.freeze_unet, reg=reg, reg_weight=a.reg_pretrain)
    evaluate(pipe, "tuned", held, train, splits)
    if a.save:
        pipe.save_pretrained(a.save)


if __name__ == "__main__":
    main()
