"""The shapes prompt suite, with a held-out split of unseen count-color combinations.

As in Lee et al.'s unseen color-count tests: every count and every color appears in training, but six
(color, count) pairs never do -- one count per color, rotating -- and every prompt with such a pair is
held out. The tiny text-to-image model is trained on the train split only.
"""

from __future__ import annotations

import json
from pathlib import Path

from .world import COUNTS, PALETTE, Scene, all_scenes

SUITE = "shapes"


def heldout_pairs() -> set[tuple[str, int]]:
    return {(color, COUNTS[i % len(COUNTS)]) for i, color in enumerate(PALETTE)}


def split_of(scene: Scene) -> str:
    return "heldout" if (scene.color, scene.count) in heldout_pairs() else "train"


def suite_records() -> list[dict]:
    """One record per scene, in a fixed order, in the prompts-table layout (without prompt_id)."""
    records = []
    for scene in all_scenes():
        records.append({
            "prompt": scene.prompt,
            "suite": SUITE,
            "category": f"count={scene.count}",
            "metadata": scene.metadata(),
            "split": split_of(scene),
        })
    return records


def write_suite(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in suite_records())
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


if __name__ == "__main__":  # python -m autofeedback.shapes.suite prompts/shapes.jsonl
    import sys

    out = write_suite(sys.argv[1] if len(sys.argv) > 1 else "prompts/shapes.jsonl")
    print(f"wrote {out}")
