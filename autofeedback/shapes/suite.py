"""The shapes prompt suite, with a held-out split of unseen count-color combinations.

As in Lee et al.'s unseen color-count tests: every count and every color appears in training, but six
(color, count) pairs never do -- one count per color, rotating -- and every prompt with such a pair is
held out. The tiny text-to-image model is trained on the train split only.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..suites import SuiteHooks, metadata_questions, metadata_word_swaps
from .world import COUNTS, PALETTE, Scene, all_scenes

SUITE = "shapes"
CONCEPTS = ("count", "color", "shape", "background")


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


def _scene(metadata: dict) -> Scene | None:
    if not all(k in metadata for k in CONCEPTS):
        return None
    try:
        return Scene(**{k: metadata[k] for k in CONCEPTS})
    except (TypeError, ValueError):
        return None


def vqa_questions(prompt: str, metadata: dict) -> list[dict]:
    """The metadata's explicit questions if any, else one question per concept of the scene."""
    explicit = metadata_questions(prompt, metadata)
    if explicit or not all(k in metadata for k in CONCEPTS):
        return explicit
    return [{"question": "How many shapes are in the image?", "answer": str(metadata["count"])},
            {"question": "What color are the shapes?", "answer": str(metadata["color"])},
            {"question": "What shape are they?", "answer": str(metadata["shape"])},
            {"question": "What color is the background?", "answer": str(metadata["background"])}]


def perturbations(prompt: str, metadata: dict, vocab: dict) -> list[tuple[str, str]]:
    """The scene's prompt with another count, color or background (the shape is a skill, not perturbed)."""
    truth = _scene(metadata)
    if truth is None:  # not a scene: the generic perturbations
        return metadata_word_swaps(prompt, metadata, vocab)
    out = []
    for field, values in (("count", COUNTS), ("color", list(PALETTE)), ("background", list(PALETTE))):
        for v in values:
            if v == getattr(truth, field):
                continue
            try:
                out.append((Scene(**{**truth.metadata(), field: v}).prompt, field))
            except ValueError:
                continue
    return out


HOOKS = SuiteHooks(vqa_questions=vqa_questions, perturbations=perturbations)


if __name__ == "__main__":  # python -m autofeedback.shapes.suite prompts/shapes.jsonl
    import sys

    out = write_suite(sys.argv[1] if len(sys.argv) > 1 else "prompts/shapes.jsonl")
    print(f"wrote {out}")
