"""Convert the TIFA and DSG human rating sets into autofeedback's long label format (data/human/).

    python scripts/convert_human_sets.py --tifa PATH/TO/tifa --dsg PATH/TO/DSG/dsg --out data/human

Inputs (both Apache-2.0):
  TIFA  github.com/Yushi-Hu/tifa   human_annotations/human_annotations_with_scores.json
        800 images (160 TIFA-160 prompts x 5 models), 2 Likert 1-5 ratings each, 10 automatic metrics.
  DSG   github.com/j-min/DSG       data/tifa160-likert-anns.csv
        the same 800 images rated 1-5 by 5 crowd workers ("How consistent is the image with the text?").

Outputs (one row per rating; see docs/eval.md for the format):
  tifa160_human.parquet     item_id, rater, score, prompt_id, category, model, prompt      (1,600 rows)
  tifa160_metrics.parquet   item_id, judge, score, prompt_id, category                     (8,000 rows)
  dsg_tifa160_likert.parquet item_id, rater, score, prompt_id, category, model, dsg_item_id (3,995 rows)

item_id is TIFA's image key (`<text_id>_<model>`, e.g. coco_669925_mini_dalle) in all three files, so
DSG's crowd ratings and TIFA's metric scores join on it. category is the prompt's source (coco,
drawbench, paintskill, partiprompt); prompt_id is TIFA's text_id (pairs of images of one prompt).
TIFA's two ratings per image are stored as raters "tifa_a" and "tifa_b" (first and second entry of
`human_scores`); the source does not say whether they are the same two people on every image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

TIFA_FILE = "human_annotations/human_annotations_with_scores.json"
DSG_FILE = "data/tifa160-likert-anns.csv"
METRICS = ("meteor", "bleu", "rouge", "spice", "clipscore_vitb32", "tifa_vilt", "tifa_git-large",
           "tifa_ofa-large", "tifa_blip2-flant5xl", "tifa_mplug-large")
DSG_MODELS = {"mini-dalle": "mini_dalle", "vq-diffusion": "vq_diffusion", "sd1dot1": "stable_diffusion_v1_1",
              "sd1dot5": "stable_diffusion_v1_5", "sd2dot1": "stable_diffusion_v2_1"}


def _source(text_id: str) -> str:
    return text_id.rsplit("_", 1)[0]


def convert_tifa(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = json.loads(Path(path).read_text())
    human, metrics = [], []
    for key, rec in data.items():
        text_id = rec["text_id"]
        model = key[len(text_id) + 1:]
        base = {"item_id": key, "prompt_id": text_id, "category": _source(text_id)}
        if len(rec["human_scores"]) != 2:
            raise ValueError(f"{path}: {key} has {len(rec['human_scores'])} human scores, expected 2")
        for rater, score in zip(("tifa_a", "tifa_b"), rec["human_scores"]):
            human.append({"item_id": key, "rater": rater, "score": float(score), "prompt_id": text_id,
                          "category": base["category"], "model": model, "prompt": rec["text"]})
        for m in METRICS:
            metrics.append({**base, "judge": m, "score": float(rec[m])})
    human_df = pd.DataFrame(human).sort_values(["item_id", "rater"], kind="stable").reset_index(drop=True)
    metrics_df = pd.DataFrame(metrics)[["item_id", "judge", "score", "prompt_id", "category"]]
    metrics_df = metrics_df.sort_values(["judge", "item_id"], kind="stable").reset_index(drop=True)
    return human_df, metrics_df


def convert_dsg_likert(path: str | Path) -> pd.DataFrame:
    raw = pd.read_csv(path, dtype={"worker_id": str})
    unknown = sorted(set(raw["t2i_model"]) - set(DSG_MODELS))
    if unknown:
        raise ValueError(f"{path}: unknown t2i_model values {unknown}")
    df = pd.DataFrame({
        "item_id": raw["source_id"] + "_" + raw["t2i_model"].map(DSG_MODELS),
        "rater": "dsg_" + raw["worker_id"],
        "score": raw["answer"].astype(float),
        "prompt_id": raw["source_id"],
        "category": raw["source_id"].map(_source),
        "model": raw["t2i_model"].map(DSG_MODELS),
        "dsg_item_id": raw["item_id"],
    })
    return df.sort_values(["item_id", "rater"], kind="stable").reset_index(drop=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tifa", type=Path, required=True, help="root of a github.com/Yushi-Hu/tifa checkout")
    ap.add_argument("--dsg", type=Path, required=True, help="the dsg/ folder of a github.com/j-min/DSG checkout")
    ap.add_argument("--out", type=Path, default=Path("data/human"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    human, metrics = convert_tifa(args.tifa / TIFA_FILE)
    dsg = convert_dsg_likert(args.dsg / DSG_FILE)
    for df, name in ((human, "tifa160_human"), (metrics, "tifa160_metrics"), (dsg, "dsg_tifa160_likert")):
        out = args.out / f"{name}.parquet"
        df.to_parquet(out, index=False, compression="zstd")
        print(f"{out}: {len(df)} rows, {out.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
