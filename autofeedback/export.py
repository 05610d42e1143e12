"""export: preferences (+ labels, augmentations) -> a Hugging Face dataset folder with a dataset card.

Reads:   RUN/preferences.parquet, RUN/images.parquet (image bytes, generator model), RUN/labels.parquet and
         RUN/augmentations.parquet when present, RUN/judgments.parquet (judges, templates), RUN/report/pairs.json
         (how the pairs were made), the pipeline YAML when the run has one (RUN/pipeline.yaml, or the file named in
         RUN/report/metrics.json)
Writes:  OUT/ (default RUN/export/FORMAT; replaced as a whole)
           README.md                      dataset card: YAML metadata (configs, dataset_info features and sizes,
                                          license, size_categories, task_categories, tags) + provenance
           provenance.json                the same provenance, for machines
           data/CONFIG/train-0000N-of-0000M.parquet   written by `datasets` (features in the Parquet metadata)
Formats: hf        config pairs (default): prompt, chosen, rejected (Image), chosen_image_id, rejected_image_id,
                   chosen_model, rejected_model, margin, agreement, source, pair_id, prompt_id;
                   config labels: image (Image), image_id, prompt_id, prompt, label, score, agreement, judges;
                   config augmentations: image_id, prompt_id, prompt, perturbed, changed
         pickapic  config pickapic: caption, jpg_0, jpg_1 (JPEG bytes), label_0, label_1 (1/0, 0.5/0.5 for a tie),
                   image_0_uid, image_1_uid, model_0, model_1, ranking_id (= pair_id), best_image_uid,
                   are_different, has_label, margin, agreement, source - the Pick-a-Pic v2 layout that
                   Diffusion-DPO's train script reads; the chosen image's side is a seeded coin flip per pair
Load it offline with `datasets.load_dataset(OUT)` (or `load_dataset(OUT, "labels")`).
Secrets: the values of environment variables named like *KEY*, *TOKEN*, *SECRET*, *PASSWORD* are redacted from the
card, and every file written is checked not to contain them.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import tables
from .config import ExportConfig
from .errors import InputError
from .images import decode_image
from .redact import SECRET_NAME, env_secrets, redact

SIZE_CATEGORIES = [(1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"), (1e7, "1M<n<10M"),
                   (1e8, "10M<n<100M"), (1e9, "100M<n<1B"), (1e10, "1B<n<10B"), (1e11, "10B<n<100B"),
                   (1e12, "100B<n<1T")]


def run(cfg: ExportConfig, repo_id: str | None = None) -> dict:
    """Write the dataset folder. Returns a summary (out, configs with their rows, dropped pairs).

    repo_id: the Hub repository it is published to (named in the card's usage snippet)."""
    t0 = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    out = Path(cfg.out) if cfg.out else run_dir / "export" / cfg.format
    # 1. Check inputs: preferences (of the chosen sources) and the images they refer to.
    prefs = _read_preferences(run_dir, cfg.sources)
    images = _read_images(run_dir, set(prefs.column("chosen_image_id").to_pylist())
                          | set(prefs.column("rejected_image_id").to_pylist()), prefs.num_rows)
    have = pa.array(list(images))
    keep = pc.and_(pc.is_in(prefs.column("chosen_image_id"), have), pc.is_in(prefs.column("rejected_image_id"), have))
    dropped = prefs.num_rows - pc.sum(keep.cast(pa.int64())).as_py()
    prefs = prefs.filter(keep)
    summary: dict = {"format": cfg.format, "out": str(out), "pairs": prefs.num_rows,
                     "dropped_pairs_missing_images": dropped, "configs": {}}

    # 2. Build the tables of each config.
    datasets_by_config: dict[str, pa.Table] = {}
    if cfg.format == "hf":
        datasets_by_config["pairs"] = _pairs_table(prefs, images)
        labels = _labels_table(run_dir, images, cfg.sources)
        if labels is not None and labels.num_rows:
            datasets_by_config["labels"] = labels
        aug = _augmentations_table(run_dir)
        if aug is not None and aug.num_rows:
            datasets_by_config["augmentations"] = aug
    else:
        datasets_by_config["pickapic"] = _pickapic_table(prefs, images, cfg)

    # 3. Provenance, then write Parquet shards (by `datasets`) and the card into a fresh folder.
    provenance = collect_provenance(run_dir, prefs, images, cfg)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        infos = {}
        for i, (name, table) in enumerate(datasets_by_config.items()):
            infos[name] = _write_config(tmp, name, table, cfg.max_shard_mb)
            summary["configs"][name] = {"rows": table.num_rows, "shards": infos[name]["shards"]}
        default = next(iter(datasets_by_config))
        card = build_card(cfg, run_dir, infos, default, provenance, summary, repo_id or str(out))
        (tmp / "README.md").write_text(card)
        (tmp / "provenance.json").write_text(redact(json.dumps(provenance, indent=2, default=str)) + "\n")
        check_no_secrets(tmp)
        _swap(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    summary["files"] = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    summary["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


# ========================================================================================= inputs
def _read_preferences(run_dir: Path, sources: list[str] | None) -> pa.Table:
    path = tables.table_path(run_dir, "preferences")
    if not tables.exists(path):
        if (run_dir / "report" / "pairs.json").exists():
            raise InputError(f"{path}: no pairs: the last `autofeedback pairs` run made none "
                             f"(its summary is in {run_dir / 'report' / 'pairs.json'})")
        raise InputError(f"{path}: no preferences table; run `autofeedback pairs {run_dir}` first")
    prefs = tables.read(path, "preferences")
    if sources:
        mask = np.zeros(prefs.num_rows, bool)
        for s in sources:
            mask |= np.asarray(pc.starts_with(prefs.column("source"), s).fill_null(False))
        if not mask.any():
            have = sorted(set(prefs.column("source").to_pylist()))
            raise InputError(f"{path}: no pairs from source {', '.join(sources)}; sources here: {', '.join(have)}")
        prefs = prefs.filter(pa.array(mask))
    if prefs.num_rows == 0:
        raise InputError(f"{path}: no pairs to export (the table is empty)")
    return prefs.sort_by([("prompt_id", "ascending"), ("pair_id", "ascending")])


def _read_images(run_dir: Path, wanted: set[str], n_pairs: int) -> dict[str, dict]:
    """image_id -> {image (struct), model}, for the wanted images only."""
    path = tables.table_path(run_dir, "images")
    if not tables.exists(path):
        raise InputError(f"{path}: no images table; export needs the images of the {n_pairs} pairs "
                         f"(labels imported without images can still be used by `pairs` and `eval`)")
    found = _lookup_images(run_dir, wanted)
    if not found:
        raise InputError(f"{path}: none of the {len(wanted)} images of the pairs is in the images table; "
                         f"export needs the images")
    return found


def _lookup_images(run_dir: Path, wanted: set[str]) -> dict[str, dict]:
    path = tables.table_path(run_dir, "images")
    if not wanted or not tables.exists(path):
        return {}
    t = tables.read_ids(path, "images", wanted, columns=["image_id", "model", "image"])
    return {r["image_id"]: r for r in t.to_pylist()}


# =========================================================================================== tables
def _pairs_table(prefs: pa.Table, images: dict) -> pa.Table:
    chosen = prefs.column("chosen_image_id").to_pylist()
    rejected = prefs.column("rejected_image_id").to_pylist()
    return pa.table({
        "prompt": prefs.column("prompt"),
        "chosen": pa.array([images[i]["image"] for i in chosen], tables.IMAGE),
        "rejected": pa.array([images[i]["image"] for i in rejected], tables.IMAGE),
        "chosen_image_id": prefs.column("chosen_image_id"), "rejected_image_id": prefs.column("rejected_image_id"),
        "chosen_model": pa.array([images[i]["model"] for i in chosen], pa.string()),
        "rejected_model": pa.array([images[i]["model"] for i in rejected], pa.string()),
        "margin": prefs.column("margin"), "agreement": prefs.column("agreement"), "source": prefs.column("source"),
        "pair_id": prefs.column("pair_id"), "prompt_id": prefs.column("prompt_id"),
    })


def _labels_table(run_dir: Path, images: dict, sources: list[str] | None) -> pa.Table | None:
    path = tables.table_path(run_dir, "labels")
    if not tables.exists(path):
        return None
    t = tables.read(path, "labels")
    if sources:
        mask = np.zeros(t.num_rows, bool)
        for s in sources:
            mask |= np.asarray(pc.starts_with(t.column("source"), s).fill_null(False))
        t = t.filter(pa.array(mask))
    wanted = set(t.column("image_id").to_pylist()) - set(images)
    images = {**images, **_lookup_images(run_dir, wanted)}  # labeled images that are in no pair
    t = t.filter(pc.is_in(t.column("image_id"), pa.array(sorted(images), pa.string())))
    t = t.sort_by([("prompt_id", "ascending"), ("image_id", "ascending")])
    ids = t.column("image_id").to_pylist()
    return pa.table({
        "image": pa.array([images[i]["image"] for i in ids], tables.IMAGE), "image_id": t.column("image_id"),
        "prompt_id": t.column("prompt_id"), "prompt": t.column("prompt"), "label": t.column("label"),
        "score": t.column("score"), "agreement": t.column("agreement"), "judges": t.column("judges"),
        "model": pa.array([images[i]["model"] for i in ids], pa.string()), "source": t.column("source"),
    })


def _augmentations_table(run_dir: Path) -> pa.Table | None:
    path = tables.table_path(run_dir, "augmentations")
    if not tables.exists(path):
        return None
    t = tables.read(path, "augmentations").sort_by("image_id")
    return t.select(["image_id", "prompt_id", "prompt", "perturbed", "changed"])


def _pickapic_table(prefs: pa.Table, images: dict, cfg: ExportConfig) -> pa.Table:
    """Pick-a-Pic v2 columns. jpg_0/jpg_1 are JPEG bytes; the chosen side is a seeded coin flip per pair."""
    jpeg: dict[str, bytes] = {}

    def as_jpeg(image_id: str) -> bytes:
        if image_id not in jpeg:
            img = decode_image(images[image_id]["image"]["bytes"])
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=cfg.jpeg_quality)
            jpeg[image_id] = buf.getvalue()
        return jpeg[image_id]

    rows = {k: [] for k in ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "image_0_uid", "image_1_uid",
                            "model_0", "model_1", "ranking_id", "best_image_uid", "are_different", "has_label")}
    for r in prefs.select(["pair_id", "prompt", "chosen_image_id", "rejected_image_id", "margin"]).to_pylist():
        tie = r["margin"] == 0
        swap = int(tables.content_id("side", cfg.seed, r["pair_id"]), 16) & 1
        first, second = (r["rejected_image_id"], r["chosen_image_id"]) if swap else \
            (r["chosen_image_id"], r["rejected_image_id"])
        rows["caption"].append(r["prompt"] or "")
        rows["jpg_0"].append(as_jpeg(first))
        rows["jpg_1"].append(as_jpeg(second))
        rows["label_0"].append(0.5 if tie else float(not swap))
        rows["label_1"].append(0.5 if tie else float(swap))
        rows["image_0_uid"].append(first)
        rows["image_1_uid"].append(second)
        rows["model_0"].append(images[first]["model"])
        rows["model_1"].append(images[second]["model"])
        rows["ranking_id"].append(r["pair_id"])
        rows["best_image_uid"].append("" if tie else r["chosen_image_id"])
        rows["are_different"].append(images[first]["image"]["bytes"] != images[second]["image"]["bytes"])
        rows["has_label"].append(True)
    t = pa.table(rows)
    for name in ("jpg_0", "jpg_1"):
        t = t.set_column(t.column_names.index(name), name, t.column(name).cast(pa.binary()))
    for name in ("margin", "agreement", "source", "prompt_id"):
        t = t.append_column(name, prefs.column(name))
    return t


# =========================================================================================== write
def _write_config(folder: Path, name: str, table: pa.Table, max_shard_mb: float) -> dict:
    """Parquet shards of one config, written by `datasets` (features recorded in the Parquet metadata)."""
    import datasets
    from datasets.table import InMemoryTable

    datasets.disable_progress_bars()

    features = datasets.Features.from_arrow_schema(table.schema)
    for col in table.column_names:
        if table.schema.field(col).type == tables.IMAGE:
            features[col] = datasets.Image()
    ds = datasets.Dataset(InMemoryTable(table.cast(features.arrow_schema)), info=datasets.DatasetInfo(features=features),
                          fingerprint=tables.content_id("export", name, table.num_rows, uuid.uuid4().hex))
    n_shards = max(1, math.ceil(table.nbytes / (max_shard_mb * 1e6)))
    (folder / "data" / name).mkdir(parents=True, exist_ok=True)
    size = 0
    for i in range(n_shards):
        shard = ds.shard(num_shards=n_shards, index=i, contiguous=True)
        path = folder / "data" / name / f"train-{i:05d}-of-{n_shards:05d}.parquet"
        shard.to_parquet(str(path))
        size += path.stat().st_size
    return {"features": features, "num_examples": table.num_rows, "num_bytes": table.nbytes, "download_size": size,
            "shards": n_shards}


def _swap(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp` (the old folder is moved aside first, then deleted)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ========================================================================================= the card
def collect_provenance(run_dir: Path, prefs: pa.Table, images: dict, cfg: ExportConfig) -> dict:
    """Where the pairs come from: generator models, judges + templates, how pairs were made, agreement."""
    prov: dict = {"generator_models": dict(Counter(v["model"] for v in images.values()).most_common()),
                  "pairs": prefs.num_rows,
                  "sources": dict(Counter(prefs.column("source").to_pylist()).most_common())}
    agreement = np.asarray(prefs.column("agreement").to_numpy(zero_copy_only=False), dtype=float)
    margin = np.asarray(prefs.column("margin").to_numpy(zero_copy_only=False), dtype=float)
    prov["agreement"] = {"mean": _round(np.nanmean(agreement)), "unanimous_share": _round(np.mean(agreement >= 1.0)),
                         "ties": int((margin == 0).sum())}
    jpath = tables.table_path(run_dir, "judgments")
    if tables.exists(jpath):
        j = tables.read(jpath, "judgments", columns=["judge", "mode", "template", "status"])
        counts = Counter(zip(j.column("judge").to_pylist(), j.column("mode").to_pylist(),
                             j.column("template").to_pylist(), j.column("status").to_pylist()))
        judges: dict = {}
        for (judge, mode, template, status), n in sorted(counts.items(), key=lambda x: str(x[0])):
            d = judges.setdefault(judge, {}).setdefault(mode, {"templates": {}, "status": {}})
            d["templates"][template or "(none)"] = d["templates"].get(template or "(none)", 0) + n
            d["status"][status] = d["status"].get(status, 0) + n
        prov["judges"] = judges
    hpath = tables.table_path(run_dir, "human_labels")
    if tables.exists(hpath):
        h = tables.read(hpath, "human_labels", columns=["annotator", "mode"])
        prov["human_labels"] = {f"{a}/{m}": n for (a, m), n in
                                Counter(zip(h.column("annotator").to_pylist(), h.column("mode").to_pylist())).items()}
    pairs_json = run_dir / "report" / "pairs.json"
    if pairs_json.exists():
        try:
            made = json.loads(pairs_json.read_text())
        except json.JSONDecodeError:
            made = {}
        used = {s.split(":", 1)[0] for s in prov["sources"]}
        prov["pair_construction"] = {}
        for source, info in made.items():
            if source not in used:
                continue
            cfg_used = {k: v for k, v in info.get("config", {}).items() if k != "run_dir"}
            voters = info.get("summary", {}).get("voters", {})
            prov["pair_construction"][source] = {
                "config": cfg_used, "created_at": info.get("created_at"),
                "voters": {name: {k: v.get(k) for k in ("judge", "mode", "template", "ok_rows", "pairs",
                                                         "position_consistency", "pairs_both_orders",
                                                         "chose_first_shown") if v.get(k) is not None}
                           for name, v in voters.items()},
                "ties": info.get("summary", {}).get("ties"), "dropped": info.get("summary", {}).get("dropped"),
            }
    pipeline = _pipeline_yaml(run_dir)
    if pipeline:
        prov["pipeline"] = pipeline
    prov["export"] = {"format": cfg.format, "license": cfg.license, "created_at": tables.now().isoformat(timespec="seconds")}
    return prov


def _pipeline_yaml(run_dir: Path) -> dict | None:
    """The run's pipeline config: RUN/pipeline.yaml, or the YAML named in RUN/report/metrics.json; secrets masked."""
    import yaml

    candidates = [run_dir / "pipeline.yaml", run_dir / "pipeline.yml"]
    metrics = run_dir / "report" / "metrics.json"
    if metrics.exists():
        try:
            p = json.loads(metrics.read_text()).get("pipeline")
            if p:
                candidates.append(Path(p))
        except (json.JSONDecodeError, AttributeError):
            pass
    for path in candidates:
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text())
            except yaml.YAMLError:
                continue
            return {"file": path.name, "config": _mask(data)}
    return None


def _mask(obj):
    if isinstance(obj, dict):
        return {k: ("***" if SECRET_NAME.search(str(k)) and not str(k).endswith("_env") else _mask(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mask(v) for v in obj]
    return obj


def check_no_secrets(folder: Path) -> None:
    """Refuse a folder in which any file holds the value of a secret-named environment variable."""
    secrets = {k: v.encode() for k, v in env_secrets().items()}
    for path in folder.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for name, value in secrets.items():
                if value in blob:
                    raise InputError(f"{path.name} contains the value of ${name}; refusing to write it")


def _round(x, nd=4):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def size_category(n: int) -> str:
    for limit, name in SIZE_CATEGORIES:
        if n < limit:
            return name
    return "n>1T"


def build_card(cfg: ExportConfig, run_dir: Path, infos: dict, default: str, prov: dict, summary: dict,
               where: str) -> str:
    """README.md: YAML metadata written by huggingface_hub/datasets helpers, then the provenance in prose."""
    import yaml
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    n_main = infos[default]["num_examples"]
    data = DatasetCardData(
        license=cfg.license, pretty_name=cfg.pretty_name or f"{Path(run_dir).resolve().name} preferences",
        size_categories=[size_category(n_main)], task_categories=["text-to-image"],
        tags=["preference", "dpo", "ai-feedback", "rlaif", "autofeedback"] + (["pick-a-pic"] if cfg.format == "pickapic" else []),
    )
    ds_infos = {}
    for name, info in infos.items():
        splits = SplitDict()
        splits.add(SplitInfo(name="train", num_bytes=info["num_bytes"], num_examples=info["num_examples"]))
        ds_infos[name] = DatasetInfo(config_name=name, features=info["features"], splits=splits,
                                     download_size=info["download_size"], dataset_size=info["num_bytes"])
    DatasetInfosDict(ds_infos).to_dataset_card_data(data)
    MetadataConfigs({name: {"data_files": [{"split": "train", "path": f"data/{name}/train-*"}],
                            **({"default": True} if name == default else {})} for name in infos}
                    ).to_dataset_card_data(data)

    title = cfg.pretty_name or f"{Path(run_dir).resolve().name} preferences"
    lines = [f"# {title}", "",
             "Text-to-image preference data made with autofeedback from AI feedback "
             "(VLM / checker judgments) and/or imported human labels.", "", "## Configs", "",
             "| config | rows | what |", "|---|---|---|"]
    what = {"pairs": "one row per preference pair: prompt, chosen and rejected images, margin, agreement",
            "labels": "one row per image: pointwise label / score (reward-model training)",
            "augmentations": "per image, prompts with one metadata field changed (prompt-classification loss)",
            "pickapic": "Pick-a-Pic v2 layout: caption, jpg_0, jpg_1, label_0, label_1 (Diffusion-DPO scripts)"}
    for name, info in infos.items():
        lines.append(f"| {name}{' (default)' if name == default else ''} | {info['num_examples']:,} | {what[name]} |")
    lines += ["", "```python", "from datasets import load_dataset", "",
              f'ds = load_dataset("{where}")  # config {default}' + (
                  '; load_dataset(..., "labels") for the labels' if "labels" in infos else ""),
              "```", "", "## Provenance", ""]
    lines.append("- Generator model(s): " + ", ".join(f"`{m}` ({n} images)" for m, n in prov["generator_models"].items()))
    lines.append("- Pair sources: " + ", ".join(f"`{s}` ({n})" for s, n in prov["sources"].items()))
    for judge, modes in (prov.get("judges") or {}).items():
        for mode, d in modes.items():
            tmpl = ", ".join(f"`{t}`" for t in d["templates"])
            status = ", ".join(f"{k}={v}" for k, v in sorted(d["status"].items()))
            lines.append(f"- Judge `{judge}`, mode {mode}: template {tmpl}; rows {status}")
    for who, n in (prov.get("human_labels") or {}).items():
        lines.append(f"- Human labels `{who}`: {n} rows")
    a = prov["agreement"]
    lines.append(f"- Agreement: mean {a['mean']}, unanimous {a['unanimous_share']} of pairs; ties kept: {a['ties']}")
    for source, made in (prov.get("pair_construction") or {}).items():
        for name, v in made["voters"].items():
            if "position_consistency" in v:
                lines.append(f"- Position consistency of `{name}`: {v['position_consistency']} over "
                             f"{v['pairs_both_orders']} pairs asked in both orders"
                             + (f"; first-shown image chosen {v['chose_first_shown']}" if "chose_first_shown" in v else ""))
        c = made["config"]
        lines.append(f"- Pairs from `{source}`: combine={c.get('combine')}, orders={c.get('orders')}, "
                     f"tie_policy={c.get('tie_policy')}, min_margin={c.get('min_margin')}, "
                     f"max_pairs_per_prompt={c.get('max_pairs_per_prompt')}, pointwise_value={c.get('pointwise_value')}")
        drops = {k: v for k, v in (made.get("dropped") or {}).items() if v}
        if drops:
            lines.append("  - dropped: " + ", ".join(f"{k}={v}" for k, v in drops.items()))
    if summary.get("dropped_pairs_missing_images"):
        lines.append(f"- {summary['dropped_pairs_missing_images']} pairs left out: their images are not in the run")
    if prov.get("pipeline"):
        lines += ["", f"### Pipeline config (`{prov['pipeline']['file']}`)", "", "```yaml",
                  yaml.safe_dump(prov["pipeline"]["config"], sort_keys=False).rstrip(), "```"]
    lines += ["", "Full provenance (judges, templates, pair options, drop counts): `provenance.json`.", "",
              "## Licence", "",
              (f"`{cfg.license}`." if cfg.license != "other" else
               "Not set (`other`): the images follow the licence of the generator model, the prompts that of "
               "their suite, imported human labels that of their source.")]
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    return redact(str(card))


def format_summary(s: dict, cfg: ExportConfig | None = None) -> str:
    lines = [f"exported {s['pairs']} pairs ({s['format']}) to {s['out']} in {s.get('seconds', 0)} s"]
    for name, c in s["configs"].items():
        lines.append(f"  config {name}: {c['rows']} rows in {c['shards']} shard(s)")
    if s.get("dropped_pairs_missing_images"):
        lines.append(f"  left out {s['dropped_pairs_missing_images']} pairs whose images are not in the run")
    lines.append(f"  {len(s.get('files', []))} files, {s.get('bytes', 0) / 1e6:.2f} MB")
    return "\n".join(lines)
