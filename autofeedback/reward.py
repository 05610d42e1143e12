"""train reward: a reward model r(image, prompt) on frozen CLIP embeddings (Lee et al. 2023), or Bradley-Terry.

Reads:   RUN/labels.parquet (mse), RUN/preferences.parquet (bt), RUN/augmentations.parquet (aux loss),
         RUN/prompts.parquet (split), RUN/images.parquet; embeddings are cached in RUN/embeddings.parquet
Writes:  RUN/<out>/model.safetensors, config.json, metrics.json, loss.png

The head is an MLP on [i, t, i*t] of the L2-normalized CLIP image and text features. Objectives:
    mse  (Lee et al.)  mean (y - r(x, z))^2 over labeled images (y = the judge's label, 1/0)
         + aux_weight * prompt classification: on images labeled aligned, cross-entropy of softmax over
           r(x, z_j) / temperature for the original prompt z against its N-1 perturbed prompts (one count,
           color, ... changed; written by `autofeedback pairs`), the original being the right class.
           Perturbed prompts that are validation prompts are dropped (they would leak those prompts' text).
    bt   Bradley-Terry: -log sigmoid(r(chosen) - r(rejected)); a kept tie (margin 0) is a soft label 0.5.
         The aux loss can be added the same way.
Train/val split by prompt: prompts of --val-split (default heldout: unseen count-color pairs in the shapes
world) are validation; without such prompts, a hashed --val-fraction of prompts is. Metrics on validation:
accuracy (threshold tuned on train), pair accuracy, ROC AUC, next to the same numbers for CLIP score
(cosine of the same embeddings, threshold tuned on train) and the majority class.
Same data + same settings as the saved model = no work (a cron job can re-run it).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import tables
from .config import TrainRewardConfig
from .embeddings import Cache, Clip, image_loader
from .errors import InputError

FEATURES = "i,t,i*t"


# ------------------------------------------------------------------------------------------ model
def build_head(dim: int, hidden: list[int], dropout: float):
    import torch

    layers, width = [], 3 * dim
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.GELU(), torch.nn.Dropout(dropout)]
        width = h
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers)


def features(img, txt):
    """[i, t, i*t] of L2-normalized features; img and txt are (n, d) tensors (broadcastable)."""
    import torch

    i = torch.nn.functional.normalize(img, dim=-1)
    t = torch.nn.functional.normalize(txt, dim=-1)
    i, t = torch.broadcast_tensors(i, t)
    return torch.cat([i, t, i * t], dim=-1)


class RewardModel:
    """A trained reward head + the CLIP it was trained on: score(images, prompts)."""

    def __init__(self, path: str | Path, clip: Clip | None = None, device: str = "cpu") -> None:
        import torch
        from safetensors.torch import load_file

        self.path = Path(path)
        cfg_path, weights = self.path / "config.json", self.path / "model.safetensors"
        if not cfg_path.exists() or not weights.exists():
            raise InputError(f"{self.path}: not a reward model folder (needs config.json and model.safetensors; "
                             f"train one with `autofeedback train reward RUN`)")
        try:
            self.config = json.loads(cfg_path.read_text())
            self.head = build_head(self.config["dim"], self.config["hidden"], 0.0)
            self.head.load_state_dict(load_file(str(weights)))
        except (json.JSONDecodeError, KeyError, RuntimeError, OSError) as exc:
            raise InputError(f"{self.path}: unreadable reward model ({type(exc).__name__}: {exc})") from None
        self.head.eval().to(device)
        self.clip = clip or Clip(self.config["clip"], device=device)
        if self.clip.identity != self.config["clip_identity"]:
            raise InputError(f"{self.path}: trained on CLIP {self.config['clip']!r} whose files have since changed "
                             f"(content {self.config['clip_identity']} != {self.clip.identity}); retrain the reward")
        self.threshold = float(self.config["threshold"])
        self._torch = torch

    def score(self, img: np.ndarray, txt: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            return self.head(features(torch.from_numpy(img), torch.from_numpy(txt))).squeeze(-1).numpy()


# ------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    """Everything training needs, as index arrays into two embedding matrices."""

    img: np.ndarray                       # (n_images, d) CLIP image features
    txt: np.ndarray                       # (n_texts, d) CLIP text features
    label_img: np.ndarray                 # labeled rows: image index, text index, target, val?
    label_txt: np.ndarray
    label_y: np.ndarray
    label_val: np.ndarray
    aug_txt: np.ndarray                   # (n_labeled, K) perturbed-prompt text indices, -1 = none
    pair_c: np.ndarray                    # preference rows: chosen / rejected image, text, soft target, val?
    pair_r: np.ndarray
    pair_txt: np.ndarray
    pair_y: np.ndarray
    pair_val: np.ndarray
    val_rule: str
    fingerprint: str
    counts: dict = field(default_factory=dict)


def load(cfg, cache: Cache) -> Data:
    run_dir = Path(cfg.run_dir)
    paths = {n: tables.table_path(run_dir, n) for n in ("labels", "preferences", "augmentations", "prompts", "images")}
    if not tables.exists(paths["images"]):
        raise InputError(f"{paths['images']}: no images table; run `autofeedback generate` first")
    labels = tables.read(paths["labels"], "labels", columns=["image_id", "prompt_id", "prompt", "label", "score"],
                         required=False)
    prefs = tables.read(paths["preferences"], "preferences", required=False,
                        columns=["prompt_id", "prompt", "chosen_image_id", "rejected_image_id", "margin"])
    labels = labels.filter(labels.column("label").is_valid())  # the 1/0 label is the target (a score-only row isn't)
    if cfg.objective == "mse" and labels.num_rows == 0:
        raise InputError(f"{paths['labels']}: no labels (1/0); run a pointwise judge that labels (e.g. shapes, "
                         f"openai:MODEL) and `autofeedback pairs {run_dir}` first (the mse objective learns them)")
    if cfg.objective == "bt" and prefs.num_rows == 0:
        raise InputError(f"{paths['preferences']}: no preference pairs; run `autofeedback pairs {run_dir}` first")
    prompts = tables.read(paths["prompts"], "prompts", columns=["prompt_id", "prompt", "split"], required=False)
    split_of = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("split").to_pylist()))
    text_of = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("prompt").to_pylist()))
    augs = {}
    if cfg.aux_weight > 0:
        if not tables.exists(paths["augmentations"]):
            raise InputError(f"{paths['augmentations']}: the prompt-classification loss (--aux-weight > 0) needs "
                             f"perturbed prompts; run `autofeedback pairs {run_dir} --augment 4`, or --aux-weight 0")
        a = tables.read(paths["augmentations"], "augmentations", columns=["image_id", "perturbed"])
        augs = {i: p for i, p in zip(a.column("image_id").to_pylist(), a.column("perturbed").to_pylist()) if p}

    # which prompts validate
    all_pids = set(labels.column("prompt_id").to_pylist()) | set(prefs.column("prompt_id").to_pylist())
    if cfg.val_split and any(split_of.get(p) == cfg.val_split for p in all_pids):
        val_pids = {p for p in all_pids if split_of.get(p) == cfg.val_split}
        rule = f"prompts of split {cfg.val_split!r}"
    else:
        val_pids = {p for p in all_pids if int(tables.content_id("val", cfg.seed, p), 16) % 10_000
                    < cfg.val_fraction * 10_000}
        rule = f"hashed {cfg.val_fraction:.0%} of prompts" + \
               (f" (no prompt of split {cfg.val_split!r})" if cfg.val_split else "")
    if not val_pids or val_pids == all_pids:
        raise InputError(f"train/val split by prompt left {'no' if not val_pids else 'only'} validation prompts "
                         f"({rule}; {len(all_pids)} prompts); change --val-split / --val-fraction")
    # A perturbed prompt that is a validation prompt would put that prompt's text into training (as a wrong
    # class of the prompt-classification loss), teaching the head to score it low before it is validated on it.
    val_texts = {t for pid, t in zip(labels.column("prompt_id").to_pylist() + prefs.column("prompt_id").to_pylist(),
                                     labels.column("prompt").to_pylist() + prefs.column("prompt").to_pylist())
                 if pid in val_pids} | {t for pid, t in text_of.items() if pid in val_pids}
    dropped = sum(p in val_texts for ps in augs.values() for p in ps)
    augs = {i: [p for p in ps if p not in val_texts] for i, ps in augs.items()}
    augs = {i: ps for i, ps in augs.items() if ps}

    # index images and texts, embed what the cache lacks
    img_ids = sorted(set(labels.column("image_id").to_pylist()) | set(prefs.column("chosen_image_id").to_pylist())
                     | set(prefs.column("rejected_image_id").to_pylist()))
    texts = set(labels.column("prompt").to_pylist()) | set(prefs.column("prompt").to_pylist())
    for p in augs.values():
        texts.update(p)
    if None in texts:
        raise InputError(f"{run_dir}: labels or preferences rows without prompt text")
    texts = sorted(texts)
    img_index = {i: k for k, i in enumerate(img_ids)}
    txt_index = {t: k for k, t in enumerate(texts)}
    img = cache.image_matrix(img_ids, image_loader(paths["images"], "labeled or paired"))
    txt = cache.text_matrix(texts)

    lab = labels.to_pylist()
    width = max((len(augs.get(r["image_id"], [])) for r in lab), default=0)
    aug_txt = np.full((len(lab), max(width, 1)), -1, np.int64)
    for k, r in enumerate(lab):
        for j, p in enumerate(augs.get(r["image_id"], [])):
            aug_txt[k, j] = txt_index[p]
    pr = prefs.to_pylist()  # bt trains on them; every objective reports validation pair accuracy on them
    data = Data(
        img=img, txt=txt,
        label_img=np.array([img_index[r["image_id"]] for r in lab], np.int64),
        label_txt=np.array([txt_index[r["prompt"]] for r in lab], np.int64),
        label_y=np.array([float(r["label"]) for r in lab], np.float32),
        label_val=np.array([r["prompt_id"] in val_pids for r in lab], bool),
        aug_txt=aug_txt,
        pair_c=np.array([img_index[r["chosen_image_id"]] for r in pr], np.int64),
        pair_r=np.array([img_index[r["rejected_image_id"]] for r in pr], np.int64),
        pair_txt=np.array([txt_index[r["prompt"]] for r in pr], np.int64),
        pair_y=np.array([0.5 if (r["margin"] is not None and r["margin"] == 0) else 1.0 for r in pr], np.float32),
        pair_val=np.array([r["prompt_id"] in val_pids for r in pr], bool),
        val_rule=rule,
        fingerprint=tables.content_id("reward-data", cache.clip.identity, sorted(
            (r["image_id"], r["prompt"], r["label"], tuple(augs.get(r["image_id"], []))) for r in lab),
            sorted((r["chosen_image_id"], r["rejected_image_id"], r["prompt"], r["margin"]) for r in pr)),
    )
    data.counts = {"images": len(img_ids), "texts": len(texts), "prompts": len(all_pids),
                   "val_prompts": len(val_pids), "labels_train": int((~data.label_val).sum()),
                   "labels_val": int(data.label_val.sum()), "pairs_train": int((~data.pair_val).sum()),
                   "pairs_val": int(data.pair_val.sum()),
                   "aux_rows": int(((aug_txt >= 0).any(1) & (data.label_y >= 0.5) & ~data.label_val).sum()),
                   "perturbed_dropped_val": dropped}
    return data


# ------------------------------------------------------------------------------------------ train
def train(cfg, data: Data, log=print, head=None) -> tuple[object, list[dict]]:
    """Fit the head (a new one, or `head`); returns it and the loss history (train every step, val every
    eval_every)."""
    import torch

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    img, txt = torch.from_numpy(data.img), torch.from_numpy(data.txt)
    if head is None:
        head = build_head(data.img.shape[1], cfg.hidden, cfg.dropout)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    t = {k: torch.from_numpy(v) for k, v in vars(data).items() if isinstance(v, np.ndarray)}
    train_lab = torch.from_numpy(np.flatnonzero(~data.label_val))
    train_aux = torch.from_numpy(np.flatnonzero(~data.label_val & (data.label_y >= 0.5) & (data.aug_txt >= 0).any(1)))
    train_pair = torch.from_numpy(np.flatnonzero(~data.pair_val))
    if cfg.objective == "mse" and len(train_lab) == 0 or cfg.objective == "bt" and len(train_pair) == 0:
        raise InputError(f"no training {'labels' if cfg.objective == 'mse' else 'pairs'} outside the validation "
                         f"prompts ({data.val_rule})")

    def score(im_idx, tx_idx):
        return head(features(img[im_idx], txt[tx_idx])).squeeze(-1)

    def main_loss(rows):
        if cfg.objective == "mse":
            return torch.nn.functional.mse_loss(score(t["label_img"][rows], t["label_txt"][rows]), t["label_y"][rows])
        margin = score(t["pair_c"][rows], t["pair_txt"][rows]) - score(t["pair_r"][rows], t["pair_txt"][rows])
        return torch.nn.functional.binary_cross_entropy_with_logits(margin, t["pair_y"][rows])

    def aux_loss(rows):
        cand = torch.cat([t["label_txt"][rows, None], t["aug_txt"][rows]], dim=1)  # original first
        valid = cand >= 0
        logits = head(features(img[t["label_img"][rows]][:, None, :], txt[cand.clamp(min=0)])).squeeze(-1)
        logits = (logits / cfg.temperature).masked_fill(~valid, float("-inf"))
        return torch.nn.functional.cross_entropy(logits, torch.zeros(len(rows), dtype=torch.long))

    pool = train_lab if cfg.objective == "mse" else train_pair
    val_rows = torch.from_numpy(np.flatnonzero(data.label_val if cfg.objective == "mse" else data.pair_val))
    history: list[dict] = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        head.train()
        rows = pool[torch.randint(len(pool), (min(cfg.batch_size, len(pool)),), generator=gen)]
        loss = main_loss(rows)
        rec = {"step": step + 1, "loss": loss.item()}
        if cfg.aux_weight > 0 and len(train_aux):
            arows = train_aux[torch.randint(len(train_aux), (min(cfg.batch_size, len(train_aux)),), generator=gen)]
            aux = aux_loss(arows)
            loss = loss + cfg.aux_weight * aux
            rec["aux"] = aux.item()
        if not torch.isfinite(loss):
            raise InputError(f"reward training: non-finite loss at step {step + 1}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            head.eval()
            with torch.no_grad():
                rec["val_loss"] = float(main_loss(val_rows)) if len(val_rows) else None
            if (step + 1) % (cfg.eval_every * 5) == 0 or step + 1 == cfg.steps:
                log(f"reward step {step + 1}/{cfg.steps} loss {rec['loss']:.4f}"
                    + (f" aux {rec['aux']:.4f}" if "aux" in rec else "")
                    + (f" val {rec['val_loss']:.4f}" if rec["val_loss"] is not None else "")
                    + f" ({time.perf_counter() - t0:.1f}s)")
        history.append(rec)
    head.eval()
    return head, history


# ---------------------------------------------------------------------------------------- metrics
def tuned_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The threshold (midpoint between sorted scores) with the best accuracy of `score >= t` on (scores, y)."""
    order = np.argsort(scores, kind="stable")
    s, yy = scores[order], y[order] >= 0.5
    # predicting positive for indices >= k: correct = negatives below k + positives from k
    neg_below = np.concatenate([[0], np.cumsum(~yy)])
    pos_from = np.concatenate([np.cumsum(yy[::-1])[::-1], [0]])
    correct = neg_below + pos_from
    cuts = np.concatenate([[s[0] - 1.0], (s[:-1] + s[1:]) / 2, [s[-1] + 1.0]]) if len(s) else np.array([0.0])
    valid = np.ones(len(cuts), bool)
    valid[1:-1] = s[:-1] < s[1:]  # a cut between equal scores is not a threshold
    k = int(np.argmax(np.where(valid, correct, -1)))
    return float(cuts[k])


def auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    """ROC AUC via the rank-sum (ties count half)."""
    pos, neg = y >= 0.5, y < 0.5
    if not pos.any() or not neg.any():
        return None
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * neg.sum()))


def pair_accuracy(score_c: np.ndarray, score_r: np.ndarray) -> float | None:
    if not len(score_c):
        return None
    return float(np.mean((score_c > score_r) + 0.5 * (score_c == score_r)))


def label_pairs(data: Data, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive row, negative row) for every positive/negative labeled pair of the same prompt in `mask`."""
    rows = np.flatnonzero(mask)
    by_text: dict[int, list[int]] = {}
    for r in rows:
        by_text.setdefault(int(data.label_txt[r]), []).append(int(r))
    pos, neg = [], []
    for group in by_text.values():
        g = np.array(group)
        p, n = g[data.label_y[g] >= 0.5], g[data.label_y[g] < 0.5]
        pos += np.repeat(p, len(n)).tolist()
        neg += np.tile(n, len(p)).tolist()
    return np.array(pos, np.int64), np.array(neg, np.int64)


def evaluate(name: str, label_scores: np.ndarray, pair_scores: tuple[np.ndarray, np.ndarray] | None,
             data: Data) -> dict:
    """Accuracy (threshold tuned on train labels), pair accuracy and AUC on validation, for one scorer."""
    out: dict = {"scorer": name}
    tr, va = ~data.label_val, data.label_val
    if tr.any() and va.any():
        thr = tuned_threshold(label_scores[tr], data.label_y[tr])
        out["threshold"] = thr
        out["train_accuracy"] = float(np.mean((label_scores[tr] >= thr) == (data.label_y[tr] >= 0.5)))
        out["accuracy"] = float(np.mean((label_scores[va] >= thr) == (data.label_y[va] >= 0.5)))
        out["auc"] = auc(label_scores[va], data.label_y[va])
        p, n = label_pairs(data, va)
        out["label_pair_accuracy"] = pair_accuracy(label_scores[p], label_scores[n])
    if pair_scores is not None and data.pair_val.any():
        c, r = pair_scores
        strict = data.pair_val & (data.pair_y == 1.0)
        out["pair_accuracy"] = pair_accuracy(c[strict], r[strict])
    return out


def accuracy_difference(reward_scores: np.ndarray, clip_scores: np.ndarray, data: Data, reward_m: dict,
                        clip_m: dict, n_boot: int = 2000, seed: int = 0) -> dict | None:
    """Validation accuracy of the reward minus CLIP score's (each at its own train-tuned threshold), with a 95%
    bootstrap CI that resamples validation prompts (images of one prompt are not independent)."""
    if "threshold" not in reward_m or "threshold" not in clip_m:
        return None
    from .stats import Resampler, estimate

    va = np.flatnonzero(data.label_val)
    y = data.label_y[va] >= 0.5
    right = ((reward_scores[va] >= reward_m["threshold"]) == y).astype(float) \
        - ((clip_scores[va] >= clip_m["threshold"]) == y).astype(float)
    prompt, code = np.unique(data.label_txt[va], return_inverse=True)
    per_prompt = np.bincount(code, weights=right, minlength=len(prompt))
    n = np.bincount(code, minlength=len(prompt)).astype(float)
    return estimate(lambda w: (w @ per_prompt) / (w @ n), Resampler(len(prompt), n_boot, seed), n=len(prompt))


# ------------------------------------------------------------------------------------------ stage
def run(cfg) -> dict:
    import torch
    from safetensors.torch import save_file

    run_dir = Path(cfg.run_dir)
    out_dir = run_dir / cfg.out
    t0 = time.perf_counter()
    clip = Clip(cfg.clip, device=cfg.device)
    with tables.run_lock(run_dir):
        tables.clean_temp(tables.table_path(run_dir, "embeddings"))
        cache = Cache(run_dir, clip)
        data = load(cfg, cache)
        settings = cfg.model_dump(mode="json", exclude={"run_dir", "out", "device", "progress"})
        fingerprint = tables.content_id("reward", settings, data.fingerprint)
        done = _finished(out_dir, fingerprint)
        if done is not None:
            return {**done, "skipped": True, "out": str(out_dir)}
        embed_s = time.perf_counter() - t0
        log = print if cfg.progress else (lambda *_: None)
        head, history = train(cfg, data, log)
        train_s = time.perf_counter() - t0 - embed_s

        def scores(im, tx):
            with torch.inference_mode():
                return head(features(torch.from_numpy(data.img[im]), torch.from_numpy(data.txt[tx]))).squeeze(-1).numpy()

        def cosine(im, tx):
            a = data.img[im] / np.linalg.norm(data.img[im], axis=-1, keepdims=True)
            b = data.txt[tx] / np.linalg.norm(data.txt[tx], axis=-1, keepdims=True)
            return (a * b).sum(-1)

        pairs_of = lambda f: (f(data.pair_c, data.pair_txt), f(data.pair_r, data.pair_txt)) \
            if len(data.pair_c) else None  # noqa: E731
        label_reward, label_clip = scores(data.label_img, data.label_txt), cosine(data.label_img, data.label_txt)
        reward_m = evaluate("reward", label_reward, pairs_of(scores), data)
        clip_m = evaluate("clip_score", label_clip, pairs_of(cosine), data)
        diff = accuracy_difference(label_reward, label_clip, data, reward_m, clip_m, seed=cfg.seed)
        majority = None
        if data.label_val.any():
            pos_rate = float(np.mean(data.label_y[~data.label_val] >= 0.5))
            majority = float(np.mean((data.label_y[data.label_val] >= 0.5) == (pos_rate >= 0.5)))

        out_dir.mkdir(parents=True, exist_ok=True)
        threshold = reward_m.get("threshold", 0.5 if cfg.objective == "mse" else 0.0)
        config = {"clip": clip.path, "clip_identity": clip.identity, "dim": int(data.img.shape[1]),
                  "hidden": list(cfg.hidden), "features": FEATURES, "objective": cfg.objective,
                  "threshold": threshold, "settings": settings, "fingerprint": fingerprint}
        metrics = {"objective": cfg.objective, "aux_weight": cfg.aux_weight, "temperature": cfg.temperature,
                   "val": data.val_rule, "counts": data.counts, "reward": reward_m, "clip_score": clip_m,
                   "reward_minus_clip_score": diff, "majority_accuracy": majority,
                   "seconds": {"embed": round(embed_s, 2), "train": round(train_s, 2)},
                   "embedded": cache.computed, "history": history}
        # weights + config + metrics, each written whole: a killed run leaves no half file behind
        tmp = out_dir / ".model.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp))
        tmp.replace(out_dir / "model.safetensors")
        _plot(history, out_dir / "loss.png", cfg)
        _write_json(out_dir / "metrics.json", metrics)
        _write_json(out_dir / "config.json", config)  # last: its fingerprint marks the folder complete
    return {**{k: v for k, v in metrics.items() if k != "history"}, "skipped": False, "out": str(out_dir)}


def _finished(out_dir: Path, fingerprint: str) -> dict | None:
    try:
        cfg = json.loads((out_dir / "config.json").read_text())
        metrics = json.loads((out_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if cfg.get("fingerprint") != fingerprint or not (out_dir / "model.safetensors").exists():
        return None
    return {k: v for k, v in metrics.items() if k != "history"}


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    tmp.replace(path)


def _plot(history: list[dict], path: Path, cfg) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history])
    win = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(win) / win, mode="valid")
    ax.plot(steps[win - 1:], smooth, label=f"train {cfg.objective} loss")
    aux = [(h["step"], h["aux"]) for h in history if "aux" in h]
    if aux:
        a = np.array(aux)
        ax.plot(a[win - 1:, 0], np.convolve(a[:, 1], np.ones(win) / win, mode="valid"), label="train aux loss",
                alpha=0.7)
    val = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if val:
        v = np.array(val)
        ax.plot(v[:, 0], v[:, 1], "o-", ms=3, label=f"val {cfg.objective} loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"reward model ({cfg.objective}, aux weight {cfg.aux_weight})")
    fig.tight_layout()
    fig.savefig(path)


def format_summary(s: dict, cfg: TrainRewardConfig | None = None) -> str:
    if s.get("skipped"):
        head = f"train reward: up to date ({s['out']}; same data and settings)"
    else:
        head = f"train reward: {s['out']} ({s['seconds']['train']:.1f} s training)"
    c = s["counts"]
    lines = [head, f"  {c['labels_train']} train / {c['labels_val']} val labels, {c['pairs_train']} / "
                   f"{c['pairs_val']} pairs; val = {s['val']} ({c['val_prompts']} prompts)"]
    for name in ("reward", "clip_score"):
        m = s[name]
        parts = [f"{k} {m[k]:.1%}" for k in ("accuracy", "label_pair_accuracy", "pair_accuracy") if m.get(k) is not None]
        if m.get("auc") is not None:
            parts.append(f"auc {m['auc']:.3f}")
        lines.append(f"  {name:<10} " + ", ".join(parts))
    d = s.get("reward_minus_clip_score")
    if d and d.get("value") is not None:
        lines.append(f"  reward - clip_score accuracy {d['value']:+.1%} (95% CI {d['ci95'][0]:+.1%} to "
                     f"{d['ci95'][1]:+.1%}, bootstrap over {d['n']} val prompts)")
    if s.get("majority_accuracy") is not None:
        lines.append(f"  majority   accuracy {s['majority_accuracy']:.1%}")
    return "\n".join(lines)
