"""generate: prompts -> images, with any diffusers text-to-image pipeline.

Reads:   a prompts file or suite (see autofeedback.prompts)
Writes:  RUN/prompts.parquet   prompt_id, prompt, suite, category, metadata, split
         RUN/images.parquet    image_id, prompt_id, prompt, model, seed, steps, guidance, height, width,
                               sampler, lora, image {bytes: PNG, path}, created_at
Resume:  image_id = hash(model fingerprint, prompt_id, seed, sampler settings, LoRA). Images already in
         the table are skipped, so a killed run resumes where it stopped and a finished run does nothing.
         Each image's seed is derived from (base seed, prompt_id, index) and recorded: same seed, same pixels,
         whatever the batch or the number of processes (for the same torch build, device and thread count:
         float reductions may round differently across those).
Sampler: the model's own scheduler, or --scheduler NAME (a diffusers class built from the model's scheduler
         config, e.g. DPMSolverMultistepScheduler: DPM-Solver++ draws as well in fewer steps); recorded as `sampler`.
Top-up:  --top-up JUDGE plans only the prompts none of whose images (of this plan) the judge calls aligned:
         after `-n 4` and a judge, `-n 8 --top-up shapes` draws 4 more images for the prompts whose 4 all failed.
Scale:   under `accelerate launch` (processes, GPUs, nodes) the batches left to do are dealt round-robin
         to the processes; each writes its own shards (tagged with its rank), which read as one table.
"""

from __future__ import annotations

import io
import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

from . import prompts as prompts_mod
from . import tables
from .config import GenerateConfig
from .errors import InputError
from .model_paths import check_model_path


def image_seed(base_seed: int, prompt_id: str, index: int) -> int:
    return int(tables.content_id("seed", base_seed, prompt_id, index), 16) % (2**31 - 1)


def model_fingerprint(model: str) -> str:
    """Identity of a model: for a local folder or file, the content hashes of its files; for a Hub id, the id.

    Content, not names or sizes: two LoRAs (or two fine-tunes) of the same shape differ only in their
    values, and their images must get different IDs. Hashes are cached by (path, size, mtime), so a
    multi-GB checkpoint is read once, not on every run.
    """
    path = Path(model)
    if not path.exists():
        return tables.content_id("hub", model)
    if path.is_file():
        return tables.content_id("file", path.name, _file_hash(path))
    files = sorted(p for p in path.rglob("*") if p.is_file() and "snapshots" not in p.parts
                   and "checkpoints" not in p.parts)
    return tables.content_id("dir", [(f.relative_to(path).as_posix(), _file_hash(f)) for f in files])


def _safetensors_header(fh) -> bytes:
    """The header of a .safetensors file (read from fh, which is left at the tensor data) as canonical JSON.

    The safetensors writer keeps `__metadata__` in a hash map, so the same weights and metadata saved by two
    processes can differ in bytes (seen: a resumed `train dpo` re-saving its LoRA made `generate` redo every
    image). Sorted keys make the identity the content. A file that is not valid safetensors is hashed as bytes.
    """
    start = fh.tell()
    raw = fh.read(8)
    try:
        n = int.from_bytes(raw, "little")
        if len(raw) < 8 or n > 100 << 20:
            raise ValueError("no safetensors header")
        header = json.loads(fh.read(n))
        return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError):
        fh.seek(start)
        return b""


_HASH_CACHE = Path(os.environ.get("AUTOFEEDBACK_CACHE", Path.home() / ".cache" / "autofeedback")) / "file-hashes.json"


def _file_hash(path: Path) -> str:
    import hashlib

    st = path.stat()
    key = f"v2|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"  # v2: safetensors headers hashed by content
    cache = _load_hash_cache()
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if path.suffix == ".safetensors":  # its header's key order varies by process: hash the header's content
            h.update(_safetensors_header(fh))
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()[:16]
    if st.st_size > 8 << 20:  # only big files are worth remembering
        cache[key] = digest
        try:
            _HASH_CACHE.parent.mkdir(parents=True, exist_ok=True)
            tmp = _HASH_CACHE.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(_HASH_CACHE)
        except OSError:
            pass  # a read-only home only costs re-hashing
    return digest


def _load_hash_cache() -> dict:
    try:
        return json.loads(_HASH_CACHE.read_text())
    except (OSError, ValueError):
        return {}


def load_pipeline(model: str, device: str = "cpu", dtype: str = "float32", lora: str | None = None,
                  channels_last: bool = False, compile: bool = False, vae_slicing: bool = False,
                  vae_tiling: bool = False):
    """A diffusers pipeline on `device`; errors name the model and what went wrong."""
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    check_model_path(model)
    torch_dtype = getattr(torch, dtype)
    try:
        pipe = DiffusionPipeline.from_pretrained(model, dtype=torch_dtype)
    except Exception as exc:  # diffusers raises OSError / ValueError / EnvironmentError subclasses
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"could not load diffusers pipeline {model!r}: {first}") from None
    if lora:
        if not Path(lora).exists():
            raise InputError(f"LoRA weights not found: {lora}")
        try:
            pipe.load_lora_weights(lora)
        except Exception as exc:
            raise InputError(f"could not load LoRA weights {lora!r}: {str(exc).splitlines()[0]}") from None
    try:
        pipe.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise InputError(f"device {device!r} is not usable here: {str(exc).splitlines()[0]}") from None
    if channels_last:
        for name in ("unet", "vae", "transformer"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
    # attention: diffusers uses torch's scaled_dot_product_attention (flash / memory-efficient kernels) by default
    vae = getattr(pipe, "vae", None)
    if vae is not None and vae_slicing:
        vae.enable_slicing()
    if vae is not None and vae_tiling:
        vae.enable_tiling()
    if compile and getattr(pipe, "unet", None) is not None:
        pipe.unet = torch.compile(pipe.unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def scheduler_class(name: str):
    """A diffusers scheduler class by name (--scheduler); an unknown name is an InputError listing the known ones."""
    import diffusers

    cls = getattr(diffusers, name, None) if name.endswith("Scheduler") else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("Flax"))
        raise InputError(f"--scheduler {name!r} is not a diffusers scheduler; one of: {', '.join(known)}")
    return cls


def png_bytes(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def plan(cfg: GenerateConfig, prompt_table, fingerprint: str, size: tuple[int, int]) -> list[dict]:
    """Every image this config asks for, with its seed and content-hash ID."""
    height, width = size
    settings = {"steps": cfg.steps, "guidance": cfg.guidance, "height": height, "width": width,
                "negative_prompt": cfg.negative_prompt}
    if cfg.dtype != "float32":  # other numerics, other pixels (float32 IDs stay as they were)
        settings["dtype"] = cfg.dtype
    if cfg.scheduler:  # another sampler, other pixels (the model's own scheduler: IDs as they were)
        settings["scheduler"] = cfg.scheduler
    lora_fp = model_fingerprint(cfg.lora) if cfg.lora else None
    todo = []
    for row in prompt_table.to_pylist():
        for i in range(cfg.images_per_prompt):
            seed = image_seed(cfg.seed, row["prompt_id"], i)
            todo.append({
                "image_id": tables.content_id("image", fingerprint, row["prompt_id"], seed, settings, lora_fp),
                "prompt_id": row["prompt_id"], "prompt": row["prompt"], "seed": seed,
            })
    return todo


def run(cfg: GenerateConfig) -> dict:
    """Generate the images `cfg` asks for that the run does not have yet. Returns a summary."""
    # 1. Check inputs (before anything heavy or any write).
    prompt_table = prompts_mod.load(cfg.prompts, split=cfg.split, limit=cfg.limit)
    check_model_path(cfg.model)
    if cfg.lora and not Path(cfg.lora).exists():
        raise InputError(f"LoRA weights not found: {cfg.lora}")
    if cfg.scheduler:
        scheduler_class(cfg.scheduler)
    fingerprint = model_fingerprint(cfg.model)
    images_path = tables.table_path(cfg.run_dir, "images")
    prompts_path = tables.table_path(cfg.run_dir, "prompts")
    size = _model_size(cfg)

    state = _distributed(cpu=cfg.device == "cpu")
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    # rank 0 holds the run lock for everyone; the other ranks only write their own shards
    with tables.run_lock(cfg.run_dir) if rank == 0 else nullcontext():
        if rank == 0:
            tables.clean_temp(images_path)
        # 2. What is left to do (every rank computes the same list before anyone writes).
        planned = plan(cfg, prompt_table, fingerprint, size)
        if cfg.top_up:
            planned = _without_aligned(planned, cfg)
        done = tables.read_keys(images_path, "images")
        todo = [t for t in planned if t["image_id"] not in done]
        if state:
            state.wait_for_everyone()
        if rank == 0:
            known_prompts = tables.read_keys(prompts_path, "prompts")
            tables.append(prompts_path, [r for r in prompt_table.to_pylist() if r["prompt_id"] not in known_prompts],
                          "prompts")
        summary = {"planned": len(planned), "skipped": len(planned) - len(todo), "new": 0,
                   "seconds": 0.0, "images_per_s": None, "processes": world}
        # batches are the unit of work: rank r takes batches r, r+W, r+2W... so every image is computed in
        # exactly the batch it would be in one process (CPU kernels are not bitwise batch-invariant)
        batches = [todo[i:i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)][rank::world]
        mine = [item for batch in batches for item in batch]
        if mine:
            # 3. Load the pipeline.
            device = str(state.device) if state and cfg.device != "cpu" else cfg.device
            pipe = load_pipeline(cfg.model, device, cfg.dtype, cfg.lora, cfg.channels_last, cfg.compile,
                                 cfg.vae_slicing, cfg.vae_tiling)
            if cfg.scheduler:
                pipe.scheduler = scheduler_class(cfg.scheduler).from_config(pipe.scheduler.config)
            sampler = type(pipe.scheduler).__name__
            # 4. Generate in batches across prompts; write a shard every `flush_every` images.
            t0 = time.perf_counter()
            pending: list[dict] = []
            bar = _progress(len(mine), cfg.progress and rank == 0)
            model_name = cfg.model_name or (f"{cfg.model}+lora:{cfg.lora}" if cfg.lora else cfg.model)
            for batch in batches:
                arrays = generate_batch(pipe, batch, cfg, size, device)
                created = tables.now()
                for item, arr in zip(batch, arrays):
                    pending.append({
                        **item, "model": model_name, "steps": cfg.steps, "guidance": cfg.guidance,
                        "height": int(arr.shape[0]), "width": int(arr.shape[1]), "sampler": sampler,
                        "lora": cfg.lora, "image": {"bytes": png_bytes(arr), "path": f"{item['image_id']}.png"},
                        "created_at": created,
                    })
                bar.update(len(batch))
                if len(pending) >= cfg.flush_every:
                    tables.append(images_path, pending, "images", tag=f"r{rank}")
                    summary["new"] += len(pending)
                    pending = []
            tables.append(images_path, pending, "images", tag=f"r{rank}")
            summary["new"] += len(pending)
            bar.close()
            summary["seconds"] = round(time.perf_counter() - t0, 2)
        if state:
            state.wait_for_everyone()
            summary["new"] = len(todo)  # all ranks together
        summary["images_per_s"] = round(summary["new"] / summary["seconds"], 2) if summary["seconds"] else None
        if rank == 0:
            tables.compact(images_path, "images")
    return summary


def _without_aligned(planned: list[dict], cfg: GenerateConfig) -> list[dict]:
    """--top-up JUDGE: drop the prompts one of whose planned images the judge has called aligned.

    Deterministic under resume in a pipeline (generate, judge, generate --top-up, judge): the decision reads the
    verdicts on the first draws, and the top-up's own draws are judged only after it has finished."""
    path = tables.table_path(cfg.run_dir, "judgments")
    rows = tables.read(path, "judgments", columns=["judge", "mode", "image_ids", "label", "status"], required=False)
    # the rows `train rwr --reward label` learns from: pointwise, status ok, with a label
    verdicts = [r for r in rows.to_pylist() if r["judge"] == cfg.top_up and r["mode"] == "pointwise"
                and r["status"] == "ok" and r["label"] is not None]
    if not verdicts:
        raise InputError(f"--top-up {cfg.top_up}: {path} has no pointwise verdict of that judge: run "
                         f"`autofeedback judge {cfg.run_dir} --judge {cfg.top_up}` on the first draws first")
    aligned = {r["image_ids"][0] for r in verdicts if r["label"]}
    served = {t["prompt_id"] for t in planned if t["image_id"] in aligned}
    return [t for t in planned if t["prompt_id"] not in served]


def _distributed(cpu: bool):
    """accelerate's process state when launched with several processes, else None (no import cost).

    On CPU, accelerate only forms a (gloo) process group when told `cpu=True`.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return PartialState(cpu=cpu)
    return None


def format_summary(s: dict, cfg: GenerateConfig | None = None) -> str:
    rate = f", {s['images_per_s']} images/s" if s["images_per_s"] else ""
    return (f"generate: {s['new']} new images in {s['seconds']} s{rate} ({s['planned']} planned, "
            f"{s['skipped']} already there)" + (f" -> {Path(cfg.run_dir) / 'images.parquet'}" if cfg else ""))


def generate_batch(pipe, batch: list[dict], cfg: GenerateConfig, size: tuple[int, int], device: str | None = None):
    """One pipeline call for a batch of (prompt, seed) items; uint8 HxWx3 arrays out."""
    import numpy as np
    import torch

    device = torch.device(device or cfg.device)
    gen_device = "cpu" if device.type == "mps" else device
    generators = [torch.Generator(gen_device).manual_seed(item["seed"]) for item in batch]
    height, width = size
    out = pipe(
        prompt=[item["prompt"] for item in batch],
        negative_prompt=[cfg.negative_prompt] * len(batch) if cfg.negative_prompt else None,
        num_inference_steps=cfg.steps, guidance_scale=cfg.guidance, generator=generators,
        height=height, width=width, output_type="np",
    )
    return list((np.clip(out.images, 0, 1) * 255).round().astype(np.uint8))


def _model_size(cfg: GenerateConfig) -> tuple[int, int]:
    """Output size without loading the model: from the flags, or the UNet/VAE configs on disk."""
    if cfg.height and cfg.width:
        return cfg.height, cfg.width
    path = Path(cfg.model)
    default = None
    try:
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
        scale = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
        sample = unet["sample_size"]
        sample = sample[0] if isinstance(sample, list) else sample
        default = int(sample) * scale
    except (OSError, KeyError, ValueError, TypeError):
        default = 512
    return cfg.height or default, cfg.width or default


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="generate", disable=not enabled, dynamic_ncols=True)
