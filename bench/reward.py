"""Benchmark: reward-model training on 100k cached preference pairs, and CLIP embedding throughput.

Cases (numbers in one run, on one machine):
  train   `train reward --objective bt` end to end on N pairs (default 100,000) over 20,000 images whose
          CLIP features are already in RUN/embeddings.parquet: read + validate the tables, index, train
          (default 2,000 steps x 256 pairs = ~5 epochs), evaluate, save. Baseline: the same head and
          number of steps fed by a torch DataLoader over a map-style Dataset (one __getitem__ per pair,
          default collate), the textbook loop; the stage indexes whole tensors instead.
  embed   shapes-CLIP (the shipped model) images/s and texts/s through the embedding cache, batched (256)
          vs one at a time (the baseline); plus the CLIP ViT-B/32 architecture at random weights
          (224 px, from config: no download) to show what a real-size CLIP costs on this machine.

    python bench/reward.py                     # paste the table into bench/RESULTS.md under "## reward"
    python bench/reward.py --pairs 20000 --skip-vitb
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from autofeedback import embeddings, reward, tables  # noqa: E402
from autofeedback.config import TrainRewardConfig  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)

CLIP = REPO / "data" / "models" / "shapes-clip"


def make_run(run: Path, n_pairs: int, n_images: int, clip: embeddings.Clip, seed: int = 0) -> None:
    """A run with n_pairs preferences over n_images and their cached features (a planted linear preference)."""
    rng = np.random.default_rng(seed)
    n_prompts = n_images // 8
    d = clip.dim
    img = rng.normal(size=(n_images, d)).astype(np.float32)
    txt = rng.normal(size=(n_prompts, d)).astype(np.float32)
    image_ids = [f"img{i:08d}" for i in range(n_images)]
    prompts = [f"prompt number {i}" for i in range(n_prompts)]
    prompt_of = np.arange(n_images) // 8
    now = tables.now()
    rows = pa.Table.from_pylist([{"image_id": i, "prompt_id": f"p{k}", "prompt": prompts[k], "created_at": now}
                                 for i, k in zip(image_ids, prompt_of)], schema=tables.SCHEMAS["images"])
    tables.append(tables.table_path(run, "images"), rows, "images")
    tables.append(tables.table_path(run, "prompts"), [
        {"prompt_id": f"p{k}", "prompt": p, "suite": "bench", "split": "heldout" if k % 5 == 0 else "train"}
        for k, p in enumerate(prompts)], "prompts")
    # pairs within a prompt, the preferred image is the one with the higher planted score
    w = rng.normal(size=d)
    truth = img @ w
    a = rng.integers(0, n_images, n_pairs)
    b = (a // 8) * 8 + (a % 8 + rng.integers(1, 8, n_pairs)) % 8
    chosen = np.where(truth[a] >= truth[b], a, b)
    rejected = np.where(truth[a] >= truth[b], b, a)
    tables.append(tables.table_path(run, "preferences"), pa.table({
        "pair_id": [f"pair{i:08d}" for i in range(n_pairs)], "prompt_id": [f"p{k}" for k in a // 8],
        "prompt": [prompts[k] for k in a // 8], "chosen_image_id": [image_ids[i] for i in chosen],
        "rejected_image_id": [image_ids[i] for i in rejected], "margin": np.ones(n_pairs),
        "agreement": np.ones(n_pairs), "source": ["bench"] * n_pairs,
        "created_at": pa.array(np.full(n_pairs, np.datetime64(now.replace(tzinfo=None), "us")), tables.TIMESTAMP),
    }, schema=tables.SCHEMAS["preferences"]), "preferences")
    tables.append(tables.table_path(run, "embeddings"), embeddings._rows(clip.identity, "image", image_ids,
                                                                         [None] * n_images, img), "embeddings")
    tables.append(tables.table_path(run, "embeddings"), embeddings._rows(
        clip.identity, "text", [embeddings.text_key(p) for p in prompts], prompts, txt), "embeddings")


def dataloader_baseline(cfg, data, steps: int) -> float:
    """The same head and steps, batches from a DataLoader over a per-pair Dataset (default collate)."""
    import torch

    class Pairs(torch.utils.data.Dataset):
        def __init__(self):
            self.rows = np.flatnonzero(~data.pair_val)

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, k):
            r = self.rows[k]
            t = data.txt[data.pair_txt[r]]
            return (torch.from_numpy(data.img[data.pair_c[r]]), torch.from_numpy(data.img[data.pair_r[r]]),
                    torch.from_numpy(t), torch.tensor(data.pair_y[r]))

    torch.manual_seed(0)
    head = reward.build_head(data.img.shape[1], cfg.hidden, cfg.dropout)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = torch.utils.data.DataLoader(Pairs(), batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        for c, r, t, y in loader:
            margin = head(reward.features(c, t)).squeeze(-1) - head(reward.features(r, t)).squeeze(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(margin, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - t0


def bench_train(n_pairs: int, n_images: int, steps: int) -> list[tuple]:
    clip = embeddings.Clip(str(CLIP))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        make_run(run, n_pairs, n_images, clip)
        cfg = TrainRewardConfig(run_dir=run, clip=str(CLIP), objective="bt", aux_weight=0.0, steps=steps,
                                progress=False)
        t0 = time.perf_counter()
        s = reward.run(cfg)
        stage_s = time.perf_counter() - t0
        assert s["embedded"] == {"image": 0, "text": 0}, "features should all come from the cache"
        data = reward.load(cfg, embeddings.Cache(run, clip))
        base_s = dataloader_baseline(cfg, data, steps)
    acc = s["reward"].get("pair_accuracy")
    return [("train reward --objective bt (whole stage: read, train, eval, save)", f"{stage_s:.1f}",
             f"{s['seconds']['train']:.1f}", f"{acc:.1%}" if acc is not None else "-"),
            ("baseline: DataLoader over a per-pair Dataset (training loop only)", "-", f"{base_s:.1f}", "-"),
            ("speed-up of the training loop", "", f"{base_s / s['seconds']['train']:.1f}x", "")]


def bench_embed(n: int, skip_vitb: bool) -> list[tuple]:
    import torch
    from transformers import CLIPConfig, CLIPModel

    from autofeedback.shapes.world import Scene, render

    pngs = []
    for k in range(n):
        buf = io.BytesIO()
        render(Scene(1 + k % 4, "red", "circle", "blue"), seed=k).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    texts = [f"{w} red circles on a blue background {k}" for k, w in zip(range(n), ["one", "two", "three", "four"] * n)]
    rows = []
    clip = embeddings.Clip(str(CLIP))
    for label, bs in (("batched (256)", 256), ("one at a time (baseline)", 1)):
        clip.batch_size = bs
        m = n if bs > 1 else min(n, 256)
        t0 = time.perf_counter()
        clip.images(pngs[:m])
        ti = time.perf_counter() - t0
        t0 = time.perf_counter()
        clip.texts(texts[:m])
        tt = time.perf_counter() - t0
        rows.append((f"shapes-CLIP 32 px, {label}", f"{m / ti:.0f}", f"{m / tt:.0f}"))
    if not skip_vitb:
        cfg = CLIPConfig(text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                                          num_hidden_layers=12),
                         vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, image_size=224, patch_size=32),
                         projection_dim=512)
        model = CLIPModel(cfg).eval()
        x = torch.randn(32, 3, 224, 224)
        ids = torch.randint(0, 49000, (32, 16))
        with torch.inference_mode():
            model.get_image_features(pixel_values=x[:4])
            t0 = time.perf_counter()
            model.get_image_features(pixel_values=x)
            ti = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.get_text_features(input_ids=ids)
            tt = time.perf_counter() - t0
        rows.append(("CLIP ViT-B/32 architecture, 224 px, random weights, batch 32 (model only)",
                     f"{32 / ti:.0f}", f"{32 / tt:.0f}"))
    return rows


def _table(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--embed", type=int, default=2048, help="images and texts to embed")
    ap.add_argument("--skip-vitb", action="store_true")
    args = ap.parse_args()
    import torch

    print(describe())
    print(f"\n### train: {args.pairs:,} cached pairs, {args.images:,} images, {args.steps} steps x 256\n")
    print(_table(("case", "stage s", "training s", "val pair accuracy"),
                 bench_train(args.pairs, args.images, args.steps)))
    print(f"\n### embed ({torch.get_num_threads()} threads)\n")
    print(_table(("model", "images/s", "texts/s"), bench_embed(args.embed, args.skip_vitb)))


if __name__ == "__main__":
    main()
