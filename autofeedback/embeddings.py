"""CLIP embeddings of a run's images and texts, computed once and cached in RUN/embeddings.parquet.

Any transformers CLIPModel folder or Hub id works (openai/clip-vit-*, PickScore, the shipped
data/models/shapes-clip). A row is keyed by (CLIP content identity, kind, image_id or text hash), so a
re-run embeds only new images and texts, and a different CLIP is new work. Vectors are the projected
features (get_image_features / get_text_features), not normalized; users normalize for cosine.

    autofeedback embed RUN --clip data/models/shapes-clip
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import tables
from .config import EmbedConfig
from .errors import InputError
from .images import decode_image

WRITE_EVERY = 4096  # rows per shard: what a killed embed run can lose


def text_key(text: str) -> str:
    return tables.content_id("text", text)


class Clip:
    """A transformers CLIPModel + CLIPProcessor, batched, in inference mode."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 256) -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor
        from transformers.utils import logging as hf_logging

        from .generate import model_fingerprint
        from .model_paths import HUB_ID, missing_model_hint

        self.path = str(path)
        if not Path(self.path).exists() and (not HUB_ID.match(self.path) or self.path.startswith((".", "/", "~"))):
            raise InputError(f"CLIP model path not found: {self.path}{missing_model_hint(self.path)}")
        self.device = device
        self.batch_size = batch_size
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "falling back to the PIL image processor" (no torchvision) is noise
        try:
            self.model = CLIPModel.from_pretrained(self.path).eval().to(device)
            self.processor = CLIPProcessor.from_pretrained(self.path)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"cannot load a CLIP model (CLIPModel + CLIPProcessor) from {self.path!r}: {first}") \
                from None
        finally:
            hf_logging.set_verbosity(verbosity)
        self.identity = model_fingerprint(self.path)
        self.dim = int(self.model.config.projection_dim)
        self._torch = torch

    def images(self, pngs: list[bytes], ids: list[str] | None = None) -> np.ndarray:
        """Image features, one row per encoded image (PNG/JPEG bytes); `ids` name them in errors."""
        out = []
        for start in range(0, len(pngs), self.batch_size):
            batch = [_decode(b, ids[start + k] if ids else start + k)
                     for k, b in enumerate(pngs[start:start + self.batch_size])]
            pixels = self.processor(images=batch, return_tensors="pt").pixel_values.to(self.device)
            with self._torch.inference_mode():
                out.append(_features(self.model.get_image_features(pixel_values=pixels)))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def texts(self, texts: list[str]) -> np.ndarray:
        out = []
        limit = self.processor.tokenizer.model_max_length
        for start in range(0, len(texts), self.batch_size):
            ids = self.processor(text=texts[start:start + self.batch_size], padding=True, truncation=True,
                                 max_length=min(limit, 77), return_tensors="pt").to(self.device)
            with self._torch.inference_mode():
                out.append(_features(self.model.get_text_features(**ids)))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def _decode(data: bytes, name):
    from PIL import UnidentifiedImageError

    try:
        return decode_image(data)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"image {name} does not decode ({type(exc).__name__}: {exc}); regenerate it or drop its "
                         f"row (embeddings computed so far are kept)") from None


def _features(out) -> np.ndarray:
    # transformers >= 5 returns a model output whose pooler_output is the projected feature; 4.x a tensor
    tensor = getattr(out, "pooler_output", out)
    return tensor.float().cpu().numpy().astype(np.float32)


class Cache:
    """The run's embeddings of one CLIP: {key: row} lookups over RUN/embeddings.parquet, filled on demand."""

    def __init__(self, run_dir: str | Path | None, clip: Clip) -> None:
        self.clip = clip
        self.path = tables.table_path(run_dir, "embeddings") if run_dir is not None else None
        self.vectors: dict[tuple[str, str], np.ndarray] = {}
        self.computed = {"image": 0, "text": 0}
        self.seconds = {"image": 0.0, "text": 0.0}
        if self.path is not None and tables.exists(self.path):
            t = tables.read(self.path, "embeddings", columns=["model", "kind", "key", "vector"])
            mine = np.asarray(t.column("model").to_numpy(zero_copy_only=False) == clip.identity)
            if mine.any():
                t = t.filter(pa.array(mine))
                mat = stack(t.column("vector"), clip.dim, self.path)
                for kind, key, vec in zip(t.column("kind").to_pylist(), t.column("key").to_pylist(), mat):
                    self.vectors[(kind, key)] = vec

    def image_matrix(self, image_ids: list[str], pngs) -> np.ndarray:
        """Features of these images. pngs: a list of bytes (one per id), or a callable called once with the ids
        the cache lacks, returning {image_id: bytes} for them (`image_loader`: only those images are read)."""
        missing = sorted({i for i in image_ids if ("image", i) not in self.vectors})
        if missing:
            by_id = pngs(missing) if callable(pngs) else dict(zip(image_ids, pngs))
            self._fill("image", missing, lambda ids: self.clip.images([by_id[i] for i in ids], ids),
                       [None] * len(missing))
        return np.stack([self.vectors[("image", i)] for i in image_ids]) if image_ids else \
            np.zeros((0, self.clip.dim), np.float32)

    def text_matrix(self, texts: list[str]) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        todo = dict(sorted({k: t for k, t in zip(keys, texts) if ("text", k) not in self.vectors}.items()))
        if todo:
            by_key = dict(todo)
            self._fill("text", list(todo), lambda ks: self.clip.texts([by_key[k] for k in ks]), list(todo.values()))
        return np.stack([self.vectors[("text", k)] for k in keys]) if keys else \
            np.zeros((0, self.clip.dim), np.float32)

    def _fill(self, kind: str, keys: list[str], compute, texts: list[str | None]) -> None:
        for start in range(0, len(keys), WRITE_EVERY):
            chunk = keys[start:start + WRITE_EVERY]
            t0 = time.perf_counter()
            mat = compute(chunk)
            self.seconds[kind] += time.perf_counter() - t0
            self.computed[kind] += len(chunk)
            for key, vec in zip(chunk, mat):
                self.vectors[(kind, key)] = vec
            if self.path is not None:  # one shard per chunk: a killed run keeps what it computed
                tables.append(self.path, _rows(self.clip.identity, kind, chunk, texts[start:start + len(chunk)], mat),
                              "embeddings")


def _rows(model: str, kind: str, keys: list[str], texts: list[str | None], mat: np.ndarray) -> pa.Table:
    n = len(keys)
    created = np.full(n, np.datetime64(tables.now().replace(tzinfo=None), "us"))
    vec = pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1), pa.float32()), mat.shape[1])
    return pa.table({
        "emb_id": [tables.content_id("embedding", model, kind, k) for k in keys],
        "model": pa.array([model] * n, pa.string()), "kind": pa.array([kind] * n, pa.string()),
        "key": pa.array(keys, pa.string()), "text": pa.array(texts, pa.string()),
        "vector": vec.cast(pa.list_(pa.float32())), "created_at": pa.array(created, tables.TIMESTAMP),
    }, schema=tables.SCHEMAS["embeddings"])


def stack(column, dim: int, source) -> np.ndarray:
    """A list<float32> column -> an (n, dim) float32 matrix; a row of another length is an InputError."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.zeros((0, dim), np.float32)
    lengths = np.diff(arr.offsets.to_numpy())
    if arr.null_count or (lengths != dim).any():
        raise InputError(f"{source}: embedding vectors must all have {dim} values (found lengths "
                         f"{sorted(set(lengths.tolist()))[:5]}{' and nulls' if arr.null_count else ''})")
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(arr), dim)


# ------------------------------------------------------------------------------------------ stage
def run(cfg) -> dict:
    """Embed every image of the run and every prompt text (and augmented prompt) not embedded yet."""
    run_dir = Path(cfg.run_dir)
    images_path = tables.table_path(run_dir, "images")
    if not tables.exists(images_path):
        raise InputError(f"{images_path}: no images table; run `autofeedback generate` first")
    clip = Clip(cfg.clip, device=cfg.device, batch_size=cfg.batch_size)
    with tables.run_lock(run_dir):
        tables.clean_temp(tables.table_path(run_dir, "embeddings"))
        cache = Cache(run_dir, clip)
        ids_table = tables.read(images_path, "images", columns=["image_id", "prompt"])
        image_ids = ids_table.column("image_id").to_pylist()
        texts = set(ids_table.column("prompt").to_pylist())
        aug_path = tables.table_path(run_dir, "augmentations")
        if tables.exists(aug_path):
            for row in tables.read(aug_path, "augmentations", columns=["prompt", "perturbed"]).to_pylist():
                texts.add(row["prompt"])
                texts.update(row["perturbed"] or [])
        texts.discard(None)
        cache.image_matrix(image_ids, image_loader(images_path))
        cache.text_matrix(sorted(texts))
        tables.compact(tables.table_path(run_dir, "embeddings"), "embeddings")
    return {"clip": clip.path, "images": len(image_ids), "texts": len(texts), "computed": cache.computed,
            "seconds": {k: round(v, 2) for k, v in cache.seconds.items()}}


def image_loader(images_path: Path, what: str = ""):
    """For `Cache.image_matrix`: ids -> {image_id: encoded bytes}, reading only those images (the ones the cache
    lacks; none when it has them all). An id not in the table, or without bytes, is one clear error before any
    embedding (`what` names the images in it)."""
    return lambda ids: tables.images_by_id(images_path, ids, what)


def format_summary(s: dict, cfg: EmbedConfig | None = None) -> str:
    c, sec = s["computed"], s["seconds"]
    rate = lambda k: f" ({c[k] / sec[k]:.0f}/s)" if sec[k] > 0 else ""  # noqa: E731
    return (f"embed ({s['clip']}): {s['images']} images, {s['texts']} texts; newly embedded "
            f"{c['image']} images{rate('image')}, {c['text']} texts{rate('text')}")
