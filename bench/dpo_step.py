"""Benchmark: a Diffusion-DPO step with the reference as disabled LoRA adapters vs a frozen copy.

Same model, same batch, same trainer (`autofeedback.train_dpo.run`); only the reference differs:
  adapters   LoRA r=8, reference = the same UNet with adapters disabled (no second UNet in memory)
  copy       LoRA r=8, reference = a frozen deepcopy of the base UNet (the common approach)
  full+copy  full fine-tune, reference = a frozen copy
Each variant runs in its own process (peak memory is per process): median step time over the last
steps, peak RSS (CPU) or peak CUDA memory (GPU).

    python bench/dpo_step.py                          # shipped tiny shapes model, CPU, 8 pairs
    python bench/dpo_step.py --sd15 --device cuda     # SD-1.5 UNet architecture, random weights, 512 px
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

VARIANTS = {"adapters": dict(lora_rank=8, reference="adapters"), "copy": dict(lora_rank=8, reference="copy"),
            "full+copy": dict(lora_rank=0)}


def child(args) -> None:
    import torch

    from autofeedback import train_dpo
    from autofeedback.config import TrainDPOConfig

    cfg = TrainDPOConfig(run_dir=args.run_dir, model=args.model, out=f"dpo-{args.variant}", steps=args.steps,
                         batch_size=args.batch, checkpoint_every=0, log_every=10**6, lr=1e-5,
                         mixed_precision="bf16" if args.device == "cuda" else "no",
                         device="auto" if args.device == "cuda" else "cpu", **VARIANTS[args.variant])
    train_dpo.run(cfg)
    secs = [json.loads(l)["seconds"] for l in (Path(args.run_dir) / cfg.out / "metrics.jsonl").read_text().splitlines()]
    import statistics

    per_step = statistics.median(b - a for a, b in zip(secs[1:], secs[2:]))  # skip the first (warm-up) step
    peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({"variant": args.variant, "step_ms": 1000 * per_step, "peak_mib": peak}))


def make_run(run_dir: Path, pairs: int) -> None:
    from autofeedback import tables
    from autofeedback.shapes.demo import make_rendered_run

    make_rendered_run(run_dir, n_prompts=max(pairs // 2, 2), per_prompt=3)
    images = tables.read(run_dir / "images.parquet", "images").to_pylist()
    by_prompt: dict = {}
    for im in images:
        by_prompt.setdefault(im["prompt_id"], []).append(im)
    rows = []
    for pid, ims in by_prompt.items():
        ims.sort(key=lambda r: r["seed"])
        for bad in ims[1:]:
            rows.append({"pair_id": tables.content_id(ims[0]["image_id"], bad["image_id"]), "prompt_id": pid,
                         "prompt": ims[0]["prompt"], "chosen_image_id": ims[0]["image_id"],
                         "rejected_image_id": bad["image_id"], "margin": 1.0, "agreement": 1.0, "source": "bench",
                         "created_at": tables.now()})
    tables.append(tables.table_path(run_dir, "preferences"), rows, "preferences")


def sd15_pipeline(out: Path, size: int = 512) -> str:
    """An SD-1.5-architecture pipeline with random weights (no download), at `size` px."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from autofeedback.shapes import recipe

    tok = recipe.write_tokenizer(out / "tokenizer")
    tok.model_max_length = 77
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
    unet = UNet2DConditionModel(sample_size=size // 8, cross_attention_dim=768)  # the SD-1.5 defaults
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=size)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=DDIMScheduler(),
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_pretrained(out)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "data" / "models" / "shapes-tiny"))
    ap.add_argument("--sd15", action="store_true", help="SD-1.5 UNet architecture at random weights (--size px)")
    ap.add_argument("--size", type=int, default=512, help="image size for --sd15 (CPU: try 128)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=8, help="preference pairs per step")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        make_run(run_dir, args.batch * 2)
        model = sd15_pipeline(Path(tmp) / "sd15", args.size) if args.sd15 else args.model
        results = []
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--child", "--variant", variant, "--run-dir", str(run_dir),
                                  "--model", model, "--batch", str(args.batch), "--steps", str(args.steps),
                                  "--device", args.device], capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    from machine import describe  # bench/machine.py

    print(f"machine: {describe()}; device {args.device}; model: {f'SD-1.5 UNet (random), {args.size} px' if args.sd15 else model}; "
          f"{args.batch} pairs per step, median of {args.steps} steps\n")
    base = next(r for r in results if r["variant"] == "copy")
    print("| reference | step (ms) | peak memory (MiB) | time vs copy | memory vs copy |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['variant']} | {r['step_ms']:.0f} | {r['peak_mib']:.0f} | {r['step_ms'] / base['step_ms']:.2f}x | "
              f"{r['peak_mib'] / base['peak_mib']:.2f}x |")


if __name__ == "__main__":
    main()
