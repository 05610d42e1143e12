"""The shapes-VLM recipe's training examples (shapes/vlm_recipe.py trains on them).

Each example is one request exactly as the OpenAI judge sends it (judges/vlm.py with a built-in template: pointwise
yes/no, 1-10 score, pairwise, listwise, caption, vqa) and the exact checker's answer as the target
(judges/checker_model.py, the function the checker server answers with). Images are for train-split prompts only:
renders of the prompt's scene (clean or degraded), renders of a train scene one concept away, and the tiny
text-to-image model's own samples (through the generate stage).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from ..judges import checker_model, parsing
from ..judges.templates import Template
from ..shapes import checker
from . import vlm_model as vm
from .suite import split_of
from .world import COUNTS, PALETTE, SHAPES, Scene, degrade, render

TASKS = {  # task -> (template, weight, images per request)
    "pointwise_binary": ("pointwise_binary.v1", 0.30, 1),
    "pairwise": ("pairwise.v1", 0.24, 2),
    "pointwise_score": ("pointwise_score.v1", 0.12, 1),
    "vqa": ("vqa.v1", 0.12, 1),
    "caption": ("caption.v1", 0.11, 1),
    "listwise": ("listwise.v1", 0.11, 4),
}
MODE = {"pointwise_binary": "pointwise", "pointwise_score": "pointwise", "pairwise": "pairwise",
        "listwise": "listwise", "caption": "caption", "vqa": "vqa"}


# ------------------------------------------------------------------------------------------------ data
def neighbours(scene: Scene) -> list[Scene]:
    """Train-split scenes one concept away from `scene`."""
    out = []
    for field, values in (("count", COUNTS), ("color", list(PALETTE)), ("shape", SHAPES),
                          ("background", list(PALETTE))):
        for v in values:
            if v == getattr(scene, field):
                continue
            try:
                other = Scene(**{**scene.metadata(), field: v})
            except ValueError:
                continue
            if split_of(other) == "train":
                out.append(other)
    return out


def t2i_samples(model: str, work: Path, per_prompt: int, seed: int, log) -> dict[str, list]:
    """The tiny T2I model's samples of the train prompts (the generate stage; resumable in `work`)."""
    from .. import generate, tables
    from ..config import GenerateConfig
    from ..images import decode_image

    if per_prompt <= 0:
        return {}
    cfg = GenerateConfig(run_dir=work, model=model, prompts="shapes", split="train", images_per_prompt=per_prompt,
                         guidance=1.5, seed=seed, progress=False)
    summary = generate.run(cfg)
    log(f"t2i samples: {summary}")
    table = tables.read(tables.table_path(work, "images"), "images", columns=["prompt", "image"]).to_pylist()
    out: dict[str, list] = {}
    for row in table:
        out.setdefault(row["prompt"], []).append(_pil(decode_image(row["image"]["bytes"])))
    return out


def _pil(arr):
    from PIL import Image

    return arr if isinstance(arr, Image.Image) else Image.fromarray(np.asarray(arr)).convert("RGB")


def image_pool(records: list[dict], per_prompt: int, degraded: float, wrong: int, samples: dict, seed: int) -> dict:
    """prompt -> list of (image, checker verdict); every image judged by the exact checker."""
    rng = np.random.default_rng(seed)
    pool = {}
    for rec in records:
        scene = Scene(**rec["metadata"])
        imgs = []
        for _ in range(per_prompt):
            img = render(scene, int(rng.integers(2**31)))
            imgs.append(degrade(img, rng) if rng.random() < degraded else img)
        near = neighbours(scene)
        for k in rng.choice(len(near), size=min(wrong, len(near)), replace=False):
            img = render(near[int(k)], int(rng.integers(2**31)))
            imgs.append(degrade(img, rng) if rng.random() < degraded else img)
        imgs += samples.get(rec["prompt"], [])
        pool[rec["prompt"]] = [(img, checker.check(np.asarray(img), scene)) for img in imgs]
    return pool


def _url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request(task: str, rec: dict, images: list) -> dict:
    """The OpenAI chat request the judge sends for this task (judges/vlm.py _messages, built-in template)."""
    from ..judge import vqa_questions

    tpl = Template.load(TASKS[task][0], MODE[task])
    unit = {"prompt": rec["prompt"], "images": images}
    if task == "vqa":
        unit["questions"] = vqa_questions(rec["prompt"], rec["metadata"], "shapes")
    content = [{"type": "text", "text": tpl.render(unit)}] + [
        {"type": "image_url", "image_url": {"url": _url(img)}} for img in images]
    msgs = ([{"role": "system", "content": tpl.system}] if tpl.system else []) + [{"role": "user", "content": content}]
    return {"model": "shapes-vlm", "messages": msgs, "response_format": parsing.response_format(task)}


class _NoBias:
    position_bias = 0.0
    rng = None


def pick(task: str, pool: list, rng: np.random.Generator) -> list:
    """Images of one prompt for a task: pointwise balanced between checker-aligned and not; pairs mostly differ."""
    n = TASKS[task][2]
    if task in ("pointwise_binary", "pointwise_score", "vqa", "caption"):
        good = [p for p in pool if p[1].aligned]
        bad = [p for p in pool if not p[1].aligned]
        side = good if (good and (not bad or rng.random() < 0.5)) else bad
        return [side[int(rng.integers(len(side)))][0]]
    idx = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    if task == "pairwise" and rng.random() < 0.7:  # mostly pairs the checker can tell apart
        a = int(idx[0])
        others = [i for i in range(len(pool)) if pool[i][1].score != pool[a][1].score]
        if others:
            idx = [a, others[int(rng.integers(len(others)))]]
            if rng.random() < 0.5:
                idx = idx[::-1]
    return [pool[int(i)][0] for i in idx]


def checklist(image, scene: Scene) -> str:
    """A pointwise rationale that makes the verdict a local step: per concept, what the checker read, what the prompt
    asks, ok or wrong ("count 3 asked 3 ok; color red asked red ok; ..."). The judge keeps rationales as text."""
    verdict = checker.check(np.asarray(image), scene)
    seen, asked = verdict.observed(), {k: str(v) for k, v in scene.metadata().items()}
    return "; ".join(f"{c} {seen[c] or 'none'} asked {asked[c]} {'ok' if verdict.correct[c] else 'wrong'}"
                     for c in checker.CONCEPTS)


def example(task: str, rec: dict, images: list, checklists: bool = False) -> tuple[list[dict], list, str]:
    """(chat messages, images, the checker's answer text) for one training example; with `checklists`, pointwise
    rationales are per-concept checklists (checklist()) instead of the checker server's description."""
    req = request(task, rec, images)
    answer = checker_model.answer(req, None, _NoBias())["choices"][0]["message"]["content"]
    if checklists and task in ("pointwise_binary", "pointwise_score"):
        payload = json.loads(answer)
        payload["rationale"] = checklist(images[0], Scene(**rec["metadata"]))
        answer = json.dumps(payload)
    msgs, imgs = vm.chat_messages(req["messages"])
    return msgs, imgs, answer


def encode(processor, batch: list[tuple[list[dict], list, str]], verdict_weight: float = 1.0):
    """Right-padded input_ids / labels (answer tokens only) / loss weights / pixel_values for one training batch.
    The tokens after the rationale (the verdict: aligned, score, choice, ranking) weigh `verdict_weight`: one or two
    tokens of ~20 decide the judgment, and the description before them is easy to learn by copying the prompt."""
    import torch

    tok = processor.tokenizer
    seqs, labels, weights, pixels = [], [], [], []
    for msgs, imgs, answer in batch:
        prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        enc = processor(text=[prompt], images=imgs, return_tensors="pt")
        cut = answer.rfind('", "') + 2 if answer.startswith('{"rationale"') else len(answer)
        # the byte-level pre-tokenizer splits before the space, so the two halves tokenize as the whole does
        head = tok(answer[:cut], add_special_tokens=False).input_ids
        tail = tok(answer[cut:] + vm.END, add_special_tokens=False).input_ids
        ids = enc.input_ids[0].tolist()
        seqs.append(ids + head + tail)
        labels.append([-100] * len(ids) + head + tail)
        weights.append([0.0] * len(ids) + [1.0] * len(head) + [verdict_weight] * len(tail))
        pixels.append(enc.pixel_values)
    width = max(map(len, seqs))
    pad = tok.pad_token_id
    input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    lab = torch.tensor([lb + [-100] * (width - len(lb)) for lb in labels])
    w = torch.tensor([x + [0.0] * (width - len(x)) for x in weights])
    return {"input_ids": input_ids, "attention_mask": attn, "labels": lab, "weights": w,
            "pixel_values": torch.cat(pixels)}


def weighted_loss(model, batch: dict):
    """Next-token cross-entropy on the answer tokens, weighted per token."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   pixel_values=batch["pixel_values"]).logits[:, :-1]
    labels, w = batch["labels"][:, 1:], batch["weights"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                           ignore_index=-100, reduction="none").view_as(w)
    return (ce * w).sum() / w.sum()


def corpus(records: list[dict], rng: np.random.Generator) -> list[str]:
    """Texts for the tokenizer: every task's request text and checker answers on a few renders."""
    texts = []
    for rec in records[::3]:
        scene = Scene(**rec["metadata"])
        imgs = [render(scene, int(rng.integers(2**31))) for _ in range(4)]
        for task in TASKS:
            req = request(task, rec, imgs[:TASKS[task][2]])
            texts += [m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]
                      for m in req["messages"]]
            texts.append(checker_model.answer(req, None, _NoBias())["choices"][0]["message"]["content"])
    return texts
