"""DDPO (Black et al. 2023) on the shapes world, with the old script's flags: now a thin wrapper of the stage
`autofeedback train grpo` with DDPO's settings -- the checker's aligned label as the reward (1/0), DDIM at eta=1,
group-normalized advantages, the clipped ratio on a random share of each chain's steps, no KL term, no gold judge.

    python scripts/ddpo_experiment.py /tmp/models/noisy /tmp/ddpo --epochs 10 --lr 3e-4 --clip 1e-3 --minibatch 16
    python scripts/ddpo_experiment.py /tmp/models/noisy /tmp/ddpo-lora --epochs 30 --lora-rank 8

is `autofeedback train grpo OUT --model MODEL --reward shapes --reward-value label --kl-weight 0 --clip-range 1e-3
--batch-size 16 --prompts-per-epoch 32 --group-size 8 --lora-rank 0 ...`: OUT gets the stage's tables (every sample
and reward), checkpoints (it resumes) and OUT/grpo/{pipeline,lora}. The in-process script this replaced reported the
eta=0 reward of the same noise every epoch; the stage's `--gold shapes` scores held-out prompts at eta=0 instead.
"""

from __future__ import annotations

import argparse


def config(argv: list[str] | None = None):
    from autofeedback.config import TrainGRPOConfig

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
    a = ap.parse_args(argv)
    return TrainGRPOConfig(
        run_dir=a.out, model=a.model, prompts=a.prompts, split="train", reward={"shapes": 1.0}, reward_value="label",
        epochs=a.epochs, prompts_per_epoch=a.prompts_per_epoch, group_size=a.samples_per_prompt, lr=a.lr,
        clip_range=a.clip, batch_size=a.minibatch, sample_steps=a.steps, guidance=a.guidance, eta=1.0,
        train_fraction=a.timestep_fraction, lora_rank=a.lora_rank, kl_weight=0.0, weight_decay=0.0, device="cpu")


def main() -> None:
    from autofeedback import train_grpo

    cfg = config()
    print(train_grpo.format_summary(train_grpo.run(cfg), cfg))


if __name__ == "__main__":
    main()
