"""The report's plots: matplotlib's object API (Figure, no pyplot), no display, no global state. Each returns
a base64 PNG (or None when there is nothing to draw)."""

from __future__ import annotations

import base64
import io

import numpy as np

from .report import METRIC_NAMES, _columns, _loo_columns, agreement_rows

COLORS = ["#3b6fb6", "#d9822b", "#4f9a57", "#b8483e", "#7d5ba6", "#8c6d46", "#cc79a7", "#5f6b73"]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def plot_agreement(ag: dict) -> str | None:
    """Forest plot: each judge, the ceiling and the baselines, one panel per metric, with 95% CIs."""
    loo = bool((ag["human"] or {}).get("ceiling")) and bool(_loo_columns(ag))
    cols = (_loo_columns(ag) if loo else _columns(ag))[:3]
    rows = agreement_rows(ag, "loo") if loo else agreement_rows(ag)
    if not rows:
        return None
    fig = _figure(3.6 * len(cols) + 1.5, 0.42 * len(rows) + 1.2)
    axes = fig.subplots(1, len(cols), sharey=True, squeeze=False)[0]
    ypos = np.arange(len(rows))[::-1]
    color = {"judge": COLORS[0], "ceiling": COLORS[2], "baseline": "#888888"}
    for ax, col in zip(axes, cols):
        for y, (label, kind, m, _) in zip(ypos, rows):
            v = (m.get(col) or {})
            if v.get("value") is None:
                continue
            lo, hi = v["ci95"]
            if lo is not None:
                ax.plot([lo, hi], [y, y], color=color[kind], lw=2, solid_capstyle="round")
            ax.plot([v["value"]], [y], "o", color=color[kind], ms=6)
        ceiling = ((ag["human"].get("ceiling") or {}).get("metrics") or {}).get(col)
        if ceiling and ceiling.get("value") is not None:
            ax.axvline(ceiling["value"], color=COLORS[2], ls="--", lw=1)
        ax.axvline(0.5 if col in ("pairwise_accuracy", "accuracy") else 0.0, color="#bbbbbb", lw=1)
        ax.set_title(METRIC_NAMES[col], fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ypos)
    axes[0].set_yticklabels([r[0] for r in rows], fontsize=8)
    fig.suptitle("Agreement with human labels (95% bootstrap CI)" + (
        "; judges and ceiling on the same leave-one-rater-out target" if loo else ""), fontsize=11)
    return _png(fig)


def plot_categories(ag: dict) -> str | None:
    """Heatmap of the primary metric per judge and category (ceiling as the last row)."""
    cats = ag["human"]["categories"]
    if len(cats) < 2:
        return None
    primary = ag["primary_metric"]
    names, data = [], []
    for label, kind, _, _ in agreement_rows(ag):
        if kind == "judge":
            pc = ag["judges"][label].get("per_category") or {}
        elif kind == "ceiling":
            pc = ag["human"]["ceiling"].get("per_category") or {}
        else:
            continue
        if not pc:
            continue
        names.append(label)
        data.append([((pc.get(c) or {}).get("metrics", {}).get(primary) or {}).get("value") for c in cats])
    if not data:
        return None
    arr = np.array([[np.nan if v is None else v for v in row] for row in data], dtype=float)
    counts = {}
    for j in ag["judges"].values():
        for c, v in (j.get("per_category") or {}).items():
            counts[c] = max(counts.get(c, 0), v.get("n_items") or 0)
    fig = _figure(1.1 * len(cats) + 3.5, 0.38 * len(names) + 1.4)
    ax = fig.subplots()
    lo, hi = (0.0, 1.0) if primary == "pairwise_accuracy" else (-1.0, 1.0)
    im = ax.imshow(arr, cmap="RdYlGn", vmin=lo, vmax=hi, aspect="auto")
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([f"{c} (n={counts[c]})" if counts.get(c) else c for c in cats], rotation=30, ha="right",
                       fontsize=8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            if np.isfinite(arr[i, j]):
                ax.text(j, i, f"{arr[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_title(f"{METRIC_NAMES[primary]} per category", fontsize=10)
    return _png(fig)


def plot_before_after(ba: dict) -> str | None:
    """Grouped bars: alignment and each concept, per model, with 95% CIs."""
    models = ba["models"]
    keys = (["aligned"] if ba["per_model"][models[0]]["alignment"] else []) + \
        sorted({c for m in models for c in ba["per_model"][m]["concepts"]})
    if not keys:
        return None
    fig = _figure(max(5.0, 1.2 * len(keys) * max(1, len(models) / 2) + 2), 3.4)
    ax = fig.subplots()
    width = 0.8 / len(models)
    x = np.arange(len(keys))
    for k, m in enumerate(models):
        pm = ba["per_model"][m]
        vals, los, his = [], [], []
        for key in keys:
            v = pm["alignment"] if key == "aligned" else pm["concepts"].get(key)
            if not v or v["value"] is None:
                vals.append(np.nan)
                los.append(0)
                his.append(0)
                continue
            vals.append(v["value"])
            los.append(v["value"] - (v["ci95"][0] if v["ci95"][0] is not None else v["value"]))
            his.append((v["ci95"][1] if v["ci95"][1] is not None else v["value"]) - v["value"])
        ax.bar(x + (k - (len(models) - 1) / 2) * width, vals, width, yerr=[los, his], capsize=3,
               color=COLORS[k % len(COLORS)], label=(ba.get("labels") or {}).get(m, m))
    ax.set_xticks(x)
    ax.set_xticklabels(keys, fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate (judge: %s)" % ba["judge"], fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Prompt alignment per model (95% CI, bootstrap over prompts)", fontsize=10)
    return _png(fig)


def plot_alpha(h: dict) -> str | None:
    alpha = {k: v for k, v in (h.get("alpha") or {}).items() if v and v.get("value") is not None}
    if not alpha:
        return None
    fig = _figure(4.2, 0.45 * len(alpha) + 1.0)
    ax = fig.subplots()
    names = list(alpha)
    vals = [alpha[k]["value"] for k in names]
    err = [[v - alpha[k]["ci95"][0] for k, v in zip(names, vals)],
           [alpha[k]["ci95"][1] - v for k, v in zip(names, vals)]]
    ax.barh(names, vals, xerr=err, capsize=3, color=COLORS[2])
    ax.set_xlim(min(0.0, min(vals) - 0.1), 1.0)
    ax.set_title("Krippendorff's α among human raters", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def plot_reliability(cal: dict, max_curves: int = 8) -> str | None:
    """Reliability diagram: mean predicted P(aligned) vs the share humans call aligned, per bin."""
    curves = sorted(cal["judges"].items(), key=lambda kv: (kv[1]["brier"]["value"] or 9))[:max_curves]
    if not curves:
        return None
    fig = _figure(5.2, 4.4)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#bbbbbb", ls="--", lw=1, label="perfectly calibrated")
    for k, (name, c) in enumerate(curves):
        pts = c["reliability"]
        ax.plot([p["mean_pred"] for p in pts], [p["frac_aligned"] for p in pts], "o-", ms=3, lw=1.3,
                color=COLORS[k % len(COLORS)], label=f"{name} (ECE {c['ece']['value']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(aligned), bin mean")
    ax.set_ylabel("share the humans call aligned")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"Reliability ({cal['method']}, cross-fitted; {cal['bins']} bins)", fontsize=10)
    return _png(fig)
