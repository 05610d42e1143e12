"""Recipe for shapes-CLIP, the small CLIP shipped in data/models/shapes-clip.

A standard transformers CLIPModel (ViT image tower, 32x32 px, 4x4 patches; 2-layer text tower over the
shapes tokenizer) trained contrastively (CLIP's symmetric InfoNCE) on rendered scenes of the *train*
prompts only, so that held-out prompts (unseen count-color pairs) are unseen by the CLIP too. Every batch
holds distinct prompts, so there are no false negatives, and nearly all train prompts meet each other
(count, shape, color and background hard negatives in every batch). Most renders are degraded (blur,
noise, color shift) like a small diffusion model's samples.

The folder loads with CLIPModel.from_pretrained + CLIPProcessor.from_pretrained, like any Hub CLIP, and
is what `--clip data/models/shapes-clip`, `--judge clip:data/models/shapes-clip` and `embed` use.

    python -m autofeedback.shapes.clip_recipe --out data/models/shapes-clip            # ~15 min, 2 CPU cores
    python -m autofeedback.shapes.clip_recipe --out /tmp/c --steps 20 --per-prompt 2    # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .recipe import MAX_LENGTH, write_tokenizer
from .suite import suite_records
from .world import IMAGE_SIZE, Scene, degrade, render

MEAN = STD = (0.5, 0.5, 0.5)


def build_model(tokenizer, vision_width: int = 64, vision_layers: int = 4, text_width: int = 64,
                text_layers: int = 2, projection_dim: int = 64):
    """The architecture, from config (random weights)."""
    from transformers import CLIPConfig, CLIPModel

    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width,
                         num_hidden_layers=text_layers, num_attention_heads=4,
                         max_position_embeddings=MAX_LENGTH, **special),
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=4, hidden_size=vision_width,
                           intermediate_size=4 * vision_width, num_hidden_layers=vision_layers,
                           num_attention_heads=4),
        projection_dim=projection_dim, **special,
    )
    return CLIPModel(config)


def image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                              image_mean=list(MEAN), image_std=list(STD), do_convert_rgb=True)


def to_pixels(images: np.ndarray):
    """uint8 NHWC -> the processor's pixel_values (resize/crop are no-ops at 32 px; rescale + normalize)."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
    return (x - 0.5) / 0.5


def render_set(records: list[dict], per_prompt: int, seed: int, degraded: float) -> tuple[np.ndarray, np.ndarray]:
    """per_prompt renders of every record (a share `degraded` of them degraded); returns images, prompt index."""
    rng = np.random.default_rng(seed)
    images, index = [], []
    for i, r in enumerate(records):
        scene = Scene(**r["metadata"])
        for s in rng.integers(0, 2**31, size=per_prompt):
            img = render(scene, int(s))
            if rng.random() < degraded:
                img = degrade(img, rng)
            images.append(np.asarray(img))
            index.append(i)
    return np.stack(images), np.asarray(index)


def zero_shot(model, tokenizer, records: list[dict], images: np.ndarray, truth: np.ndarray, eval_records: list[dict]):
    """Top-1 prompt retrieval among every suite prompt, and per-concept accuracy of the retrieved prompt."""
    import torch

    with torch.no_grad():
        ids = tokenizer([r["prompt"] for r in records], padding="max_length", max_length=MAX_LENGTH,
                        truncation=True, return_tensors="pt")
        txt = model.get_text_features(**ids).pooler_output
        img = torch.cat([model.get_image_features(pixel_values=to_pixels(images[i:i + 512])).pooler_output
                         for i in range(0, len(images), 512)])
        sim = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
        pred = sim.argmax(-1).numpy()
    want = [eval_records[t]["metadata"] for t in truth]
    got = [records[p]["metadata"] for p in pred]
    out = {"top1": float(np.mean([w == g for w, g in zip(want, got)]))}
    for concept in ("count", "color", "shape", "background"):
        out[concept] = float(np.mean([w[concept] == g[concept] for w, g in zip(want, got)]))
    return {k: round(v, 4) for k, v in out.items()}


def train(model, tokenizer, images: np.ndarray, index: np.ndarray, prompts: list[str], steps: int, batch: int,
          lr: float, seed: int, log) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = tokenizer(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
    by_prompt = [np.flatnonzero(index == i) for i in range(len(prompts))]
    rng = np.random.default_rng(seed)
    pixels = to_pixels(images)
    batch = min(batch, len(prompts))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    model.train()
    t0 = time.time()
    for step in range(steps):
        chosen = torch.randperm(len(prompts), generator=gen)[:batch]  # distinct prompts: no false negatives
        rows = [int(rng.choice(by_prompt[int(p)])) for p in chosen]
        out = model(input_ids=ids.input_ids[chosen], attention_mask=ids.attention_mask[chosen],
                    pixel_values=pixels[rows], return_loss=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # CLIP's cap: temperature >= 0.01
        if step % 100 == 0 or step == steps - 1:
            log(f"clip step {step}/{steps} loss {out.loss.item():.4f} ({time.time() - t0:.0f}s)")
    model.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-prompt", type=int, default=48, help="rendered training images per train prompt")
    ap.add_argument("--degraded", type=float, default=0.75, help="share of training renders that are degraded")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256, help="prompts per batch (distinct)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--vision-width", type=int, default=64)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--projection-dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from transformers import CLIPProcessor

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(args.out / ".tokenizer-build")
    model = build_model(tokenizer, vision_width=args.vision_width, vision_layers=args.vision_layers,
                        projection_dim=args.projection_dim)
    log(f"params: vision {sum(p.numel() for p in model.vision_model.parameters()) / 1e6:.2f}M, "
        f"text {sum(p.numel() for p in model.text_model.parameters()) / 1e6:.2f}M")
    records = suite_records()
    train_records = [r for r in records if r["split"] == "train"]
    images, index = render_set(train_records, args.per_prompt, args.seed, args.degraded)
    log(f"rendered {len(images)} images of {len(train_records)} train prompts")
    train(model, tokenizer, images, index, [r["prompt"] for r in train_records], args.steps, args.batch, args.lr,
          args.seed, log)

    # Zero-shot check on fresh renders (a seed the training set never used), train and held-out prompts.
    quality = {}
    for split in ("train", "heldout"):
        recs = [r for r in records if r["split"] == split]
        ev_images, ev_index = render_set(recs, 8, args.seed + 1000, degraded=0.5)
        quality[split] = zero_shot(model, tokenizer, records, ev_images, ev_index, recs)
        log(f"zero-shot on fresh {split} renders (among all {len(records)} prompts): {quality[split]}")

    # Save a standard CLIP folder: model + tokenizer + image processor (CLIPProcessor.from_pretrained loads it).
    processor = CLIPProcessor(image_processor=image_processor(), tokenizer=tokenizer)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    for f in (args.out / ".tokenizer-build").iterdir():
        f.unlink()
    (args.out / ".tokenizer-build").rmdir()
    check = CLIPProcessor.from_pretrained(args.out)(images=[images[0]], return_tensors="pt").pixel_values
    assert torch.allclose(check, to_pixels(images[:1]), atol=1e-5), "processor and training pixels differ"
    (args.out / "recipe.json").write_text(json.dumps({
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "train_images": len(images), "zero_shot": quality, "seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
        "command": "python -m autofeedback.shapes.clip_recipe " + " ".join(sys.argv[1:] if argv is None else argv),
    }, indent=2) + "\n")
    log(f"saved {args.out}")


if __name__ == "__main__":
    main()
