"""DDPO (Black et al. 2023) on the shapes world: an experiment, not a stage of the tool.

PPO on the denoising chain: the model samples with DDIM at eta=1 (every step a Gaussian policy whose
log-probability is exact), the shapes checker rewards each sample (1 aligned, 0 not; each epoch also reports
the reward of the same prompts and noise at eta=0, the sampler `generate` uses), advantages are
normalized within each prompt's group of samples, and the UNet is trained with the clipped PPO objective
on a random half of each chain's steps. Reward is computed online, in process; nothing is written but the
pipeline (or OUT/lora-<epoch> with --lora-rank) every 5 epochs and one line per epoch.

    python scripts/ddpo_experiment.py /tmp/models/noisy /tmp/ddpo --epochs 10 --lr 3e-4 --clip 1e-3 \
        --minibatch 16          # the README's full fine-tune: 10 epochs x 256 samples, ~9 min on 2 CPU cores
    python scripts/ddpo_experiment.py /tmp/models/noisy /tmp/ddpo-lora --epochs 30 --lora-rank 8   # README's LoRA

then evaluate /tmp/ddpo/pipeline like any model: `autofeedback generate --model /tmp/ddpo/pipeline --prompts
prompts/shapes.jsonl --split heldout -n 4 --seed 0 --out R`, `autofeedback judge R`, `autofeedback eval R`.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from autofeedback.generate import load_pipeline
from autofeedback.judges.shapes import scene_of
from autofeedback.shapes import checker


def ddim_step_stats(sched, v, t: int, x, eta: float, num_steps: int):
    """DDIM (v-prediction) step from timestep t: the mean and std of x_prev given x_t. eta=1 is the
    stochastic policy PPO trains (its log-probability is exact); eta=0 is `generate`'s deterministic sampler."""
    ac = sched.alphas_cumprod
    prev = int(t) - sched.config.num_train_timesteps // num_steps
    a_t = ac[int(t)]
    a_p = ac[prev] if prev >= 0 else sched.final_alpha_cumprod
    x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * v
    eps = a_t.sqrt() * v + (1 - a_t).sqrt() * x
    std = eta * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
    mean = a_p.sqrt() * x0 + (1 - a_p - std ** 2).clamp(min=0).sqrt() * eps
    return mean, std


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--prompts-per-epoch", type=int, default=32)
    ap.add_argument("--samples-per-prompt", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--clip", type=float, default=1e-3, help="PPO clip range (DDPO's default: 1e-4)")
    ap.add_argument("--minibatch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps per sample")
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--timestep-fraction", type=float, default=0.5)
    ap.add_argument("--prompts", default="prompts/shapes.jsonl")
    ap.add_argument("--lora-rank", type=int, default=0, help="LoRA on attention (DDPO's default); 0 = full fine-tune")
    a = ap.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    eta, adv_clip, T, G = 1.0, 5.0, a.steps, a.guidance

    pipe = load_pipeline(a.model)
    unet, vae, te, tok, sched = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    vae.requires_grad_(False)
    te.requires_grad_(False)
    sched.set_timesteps(T)
    ts = sched.timesteps.clone()
    ac = sched.alphas_cumprod
    prompts = [json.loads(line) for line in open(a.prompts)]
    prompts = [p for p in prompts if p["split"] == "train"]
    print(len(prompts), "train prompts", flush=True)

    @torch.no_grad()
    def embed(texts):
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        return te(ids)[0]

    def step_stats(v, t, x, eta=eta):  # the training policy's step (eta=1), or generate's (eta=0)
        return ddim_step_stats(sched, v, t, x, eta, T)

    def logprob(x_prev, mean, std):
        lp = -((x_prev.detach() - mean) ** 2) / (2 * std ** 2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
        return lp.mean(dim=(1, 2, 3))

    def cfg_v(xs, t, ec, eu):
        n = xs.shape[0]
        v = unet(torch.cat([xs, xs]), t, encoder_hidden_states=torch.cat([eu, ec])).sample
        return v[:n] + G * (v[n:] - v[:n])

    if a.lora_rank:
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=a.lora_rank, lora_alpha=a.lora_rank, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    empty = embed([""])
    hw = unet.config.sample_size
    P, K = a.prompts_per_epoch, a.samples_per_prompt
    for epoch in range(a.epochs):
        t0 = time.time()
        items = [prompts[i] for i in rng.choice(len(prompts), P, replace=False) for _ in range(K)]
        ec_all = embed([p["prompt"] for p in items])
        unet.eval()
        lat_list, lp_list, imgs = [], [], []
        with torch.no_grad():  # 1. sample, keeping every latent of the chain and its log-probability
            for b in range(0, len(items), 64):
                ec = ec_all[b:b + 64]
                eu = empty.expand(ec.shape[0], -1, -1)
                x = torch.randn(ec.shape[0], 4, hw, hw) * sched.init_noise_sigma
                lats, lps = [x], []
                for t in ts:
                    mean, std = step_stats(cfg_v(x, t, ec, eu), t, x)
                    x = mean + std * torch.randn_like(x)
                    lats.append(x)
                    lps.append(logprob(x, mean, std))
                lat_list.append(torch.stack(lats, 1))
                lp_list.append(torch.stack(lps, 1))
                img = vae.decode(x / vae.config.scaling_factor).sample
                imgs += list(((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
        lats, old_lp = torch.cat(lat_list), torch.cat(lp_list)
        # 2. reward (the checker) and per-prompt advantages
        rewards = np.array([float(checker.check(im, scene_of(p["prompt"], p["metadata"])).aligned)
                            for im, p in zip(imgs, items)])
        # the same prompts and starting noise at eta=0, the sampler `generate` and eval use: PPO optimizes the
        # eta=1 policy, and a gain there need not carry over (before this, only the eta=1 reward was reported)
        with torch.no_grad():
            imgs0 = []
            for b in range(0, len(items), 64):
                ec = ec_all[b:b + 64]
                eu = empty.expand(ec.shape[0], -1, -1)
                x = lats[b:b + 64, 0]
                for t in ts:
                    x, _ = step_stats(cfg_v(x, t, ec, eu), t, x, eta=0.0)
                img = vae.decode(x / vae.config.scaling_factor).sample
                imgs0 += list(((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
        reward0 = np.mean([float(checker.check(im, scene_of(p["prompt"], p["metadata"])).aligned)
                           for im, p in zip(imgs0, items)])
        r = rewards.reshape(P, K)
        adv = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-4)
        adv = torch.tensor(np.clip(adv.reshape(-1), -adv_clip, adv_clip), dtype=torch.float32)
        t_sample = time.time() - t0
        # 3. one PPO pass; a minibatch accumulates over a random subset of its chains' steps
        unet.train()
        order = rng.permutation(len(items))
        keep = order[(adv[order] != 0).numpy()]
        clipfrac = []
        for b in range(0, len(keep), a.minibatch):
            idx = torch.tensor(keep[b:b + a.minibatch])
            ec, eu = ec_all[idx], empty.expand(len(idx), -1, -1)
            steps = rng.permutation(T)[: max(1, int(T * a.timestep_fraction))]
            opt.zero_grad()
            for j in steps:
                mean, std = step_stats(cfg_v(lats[idx, j], ts[j], ec, eu), ts[j], lats[idx, j])
                ratio = torch.exp(logprob(lats[idx, j + 1], mean, std) - old_lp[idx, j])
                adv_b = adv[idx]
                loss = torch.maximum(-adv_b * ratio, -adv_b * ratio.clamp(1 - a.clip, 1 + a.clip)).mean() / len(steps)
                loss.backward()
                clipfrac.append(float(((ratio.detach() - 1).abs() > a.clip).float().mean()))
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        print(f"epoch {epoch} reward {rewards.mean():.3f} (eta=1) {reward0:.3f} (eta=0) groups-with-signal {(r.std(1) > 0).mean():.2f} "
              f"trained {len(keep)} clipfrac {np.mean(clipfrac) if clipfrac else 0:.2f} "
              f"sample {t_sample:.0f}s total {time.time() - t0:.0f}s", flush=True)
        if (epoch + 1) % 5 == 0 or epoch + 1 == a.epochs:
            if a.lora_rank:
                from peft.utils import get_peft_model_state_dict

                from diffusers.utils import convert_state_dict_to_diffusers

                pipe.save_lora_weights(f"{a.out}/lora-{epoch + 1}", unet_lora_layers=convert_state_dict_to_diffusers(
                    get_peft_model_state_dict(unet)), safe_serialization=True)
                print("saved", f"{a.out}/lora-{epoch + 1}", flush=True)
            else:
                pipe.save_pretrained(f"{a.out}/pipeline")
                print("saved", f"{a.out}/pipeline", flush=True)


if __name__ == "__main__":
    main()
