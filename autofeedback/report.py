"""The eval report: a terminal table, and one self-contained HTML file (inline CSS, plots and images as
base64 PNG, no network, a few lines of JavaScript for sortable tables).

    format_terminal(metrics) -> str
    write_html(path, metrics, grids) -> path      metrics as in metrics.json (autofeedback.evaluate)

Plots are drawn with matplotlib's object API (Figure, no pyplot): no display, no global state.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from .images import decode_image

METRIC_NAMES = {
    "spearman": "Spearman ρ", "kendall_tau_b": "Kendall τ-b", "kendall_tau_c": "Kendall τ-c",
    "pairwise_accuracy": "pairwise acc.", "accuracy_4way": "4-way acc.",
    "accuracy": "accuracy", "cohen_kappa": "Cohen κ", "alpha_nominal": "α nominal", "alpha_ordinal": "α ordinal",
    "alpha_interval": "α interval", "spearman_per_prompt": "ρ within prompt",
    "kendall_tau_b_per_prompt": "τ-b within prompt", "kendall_tau_c_per_prompt": "τ-c within prompt",
}
CELL = 23  # "0.592 [0.542, 0.641]" and room for minus signs
COLORS = ["#3b6fb6", "#d9822b", "#4f9a57", "#b8483e", "#7d5ba6", "#8c6d46", "#cc79a7", "#5f6b73"]


# =============================================================================== terminal
def _fmt(m: dict | None, pct: bool = False) -> str:
    if not m or m.get("value") is None:
        return "-"
    v, (lo, hi) = m["value"], m["ci95"]
    if pct:
        return f"{100 * v:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None else f"{100 * v:.1f}%"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{v:.3f}"


def _columns(agreement: dict) -> list[str]:
    if agreement["primary_metric"] == "pairwise_accuracy":
        cols = ["pairwise_accuracy"]
        if (agreement["human"].get("answers4") or {}).get("both_bad"):
            cols.append("accuracy_4way")   # four answers: as arena benchmarks report it
    else:
        cols = ["spearman", "kendall_tau_b", "kendall_tau_c", "pairwise_accuracy"]
    for extra in ("accuracy", "cohen_kappa"):
        if any(extra in j.get("metrics", {}) for j in agreement["judges"].values()):
            cols.append(extra)
    return cols


def _loo_columns(agreement: dict) -> list[str]:
    cols = [c for c in _columns(agreement) if c != "kendall_tau_c"] + ["spearman_per_prompt"]
    ceiling = ((agreement["human"] or {}).get("ceiling") or {}).get("metrics") or {}
    return [c for c in cols if c in ceiling]


def _sorted_judges(agreement: dict, key: str = "metrics"):
    primary = agreement["primary_metric"]
    return sorted(agreement["judges"].items(),
                  key=lambda kv: -(((kv[1].get(key) or {}).get(primary) or {}).get("value") or -9))


def agreement_rows(agreement: dict, target: str = "all") -> list[tuple[str, str, dict, int | None]]:
    """(label, kind, metrics, n_items) rows. target "all": judges (vs the mean of all raters) and baselines;
    "loo": judges vs the leave-one-rater-out means (metrics_loo) and the human ceiling - the same target."""
    if target == "loo":
        rows = [(name, "judge", j.get("metrics_loo") or {}, j.get("n_items"))
                for name, j in _sorted_judges(agreement, "metrics_loo") if j.get("metrics_loo")]
        ceiling = (agreement["human"] or {}).get("ceiling")
        if ceiling:
            rows.append((f"human ceiling ({ceiling['n_raters']} raters, LOO)", "ceiling", ceiling["metrics"], None))
        return rows
    rows = [(name, "judge", j.get("metrics", {}), j.get("n_items")) for name, j in _sorted_judges(agreement)]
    for name, b in agreement["baselines"].items():
        if name == "clip_score":
            continue
        rows.append((f"baseline: {name.replace('_', ' ')}", "baseline", b["metrics"], None))
    return rows


def _table(rows, cols, width=None, n_col: bool = True) -> list[str]:
    width = width or max([len(r[0]) for r in rows] + [10]) + 2
    header = f"{'':<{width}}" + (f"{'n':>5}  " if n_col else "") + "".join(f"{METRIC_NAMES[c]:<{CELL}}" for c in cols)
    out = [header, "-" * len(header.rstrip())]
    for label, _, m, n in rows:
        cells = "".join(f"{_fmt(m.get(c)):<{CELL}}" for c in cols)
        out.append(f"{label:<{width}}" + (f"{'' if n is None else n:>5}  " if n_col else "") + cells)
    return out


def _boot_line(ag: dict) -> str:
    b = ag["bootstrap"]
    unit = (f"cluster bootstrap over prompts (prompt_id, {b.get('n_units')} prompts)" if b.get("unit") == "prompt_id"
            else "bootstrap over items")
    line = f"[95% CI]: {unit}, {b['n']} resamples"
    if ag["primary_metric"] == "pairwise_accuracy":
        line += f"; tie policy '{ag['tie_policy']}'"
        if ag.get("failed_policy"):
            line += f"; failed judge answers counted {'as ' if ag['failed_policy'] == 'tie' else ''}" \
                    f"{ag['failed_policy'] if ag['failed_policy'] != 'drop' else 'nowhere (dropped)'} (--failed)"
    else:
        line += f"; pairwise accuracy over {ag['pairwise_unit']}, tie policy '{ag['tie_policy']}'"
    return line


def agreement_terminal(ag: dict) -> list[str]:
    h = ag["human"]
    lines = [f"agreement with human labels ({h['source']}: {h['n_items']} items, {h['n_raters']} raters, "
             f"{h['ratings_per_item']:g} ratings/item)"]
    cols = _columns(ag)
    lines.append(f"judges vs the mean of all {h['n_raters']} raters (the majority for accuracy and κ):")
    lines += _table(agreement_rows(ag), cols)
    if h.get("answers4"):
        a = h["answers4"]
        lines.append("human answers: " + ", ".join(f"{k} {v}" for k, v in a.items())
                     + ("; 4-way acc. = exact match of A / B / tie / both bad ([[A=B]] from a judge matches tie and "
                        "both bad), as arena benchmarks report it" if a.get("both_bad") else ""))
        failed = {k: j.get("n_failed") for k, j in ag["judges"].items() if j.get("n_failed")}
        if failed:
            lines.append("judge items without a usable answer: " + ", ".join(f"{k} {v}" for k, v in failed.items())
                         + f" (counted {ag.get('failed_policy')}; --failed wrong|tie|drop)")
    skipped = [name for name, j in ag["judges"].items() if j.get("scale_status") == "skipped"]
    if skipped:
        hv = h.get("values")
        hs = "yes/no" if h["kind"] == "label" else (
            f"{len(hv)} values {min(hv):g}–{max(hv):g}" if hv else "continuous")
        lines.append(f"scales: accuracy, κ and α skipped for {len(skipped)} judge(s) not on the human scale ({hs}): "
                     + ", ".join(skipped[:8]) + (", ..." if len(skipped) > 8 else "")
                     + "; --judge-threshold T|auto|NAME=T compares aligned (judge >= T) vs not, --judge-scale "
                       "NAME=LO:HI rescales onto the human values (each judge's reason and its default 'aligned' "
                       "threshold: metrics.json agreement.judges.NAME.scale)")
    for name, j in ag["judges"].items():
        if j.get("scale_status") == "converted":
            lines.append(f"scale: {name}: {j['scale']}")
    ceiling = h.get("ceiling")
    lcols = _loo_columns(ag)
    if ceiling and lcols:
        k = h["n_raters"] - 1
        lines += ["", f"judges and the human ceiling on the same target: each vs the mean of the other "
                      f"{k if k > 1 else 'rater'}{' raters' if k > 1 else ''} (leave one rater out), averaged over "
                      f"the {ceiling['n_raters']} left-out raters:"]
        lines += _table(agreement_rows(ag, "loo"), lcols)
        primary = ag["primary_metric"]
        per = ceiling.get("per_rater") or {}
        if per:
            vals = sorted(per.items(), key=lambda kv: ((kv[1]["metrics"].get(primary) or {}).get("value") or -9))
            shown = vals if len(vals) <= 6 else vals[:3] + vals[-3:]
            lines.append(f"  ceiling per left-out rater ({METRIC_NAMES[primary]}, rater vs the others"
                         + ("; lowest 3 and highest 3" if len(vals) > 6 else "") + "): "
                         + ", ".join(f"{r} {_fmt(v['metrics'].get(primary))}" for r, v in shown))
    elif not ceiling:
        lines.append("one rating per item: no human ceiling, and no leave-one-rater-out scores")
    pp = [c for c in ("spearman_per_prompt", "kendall_tau_b_per_prompt", "kendall_tau_c_per_prompt")
          if any(c in j.get("metrics", {}) for j in ag["judges"].values())]
    if pp:
        n_prompts = h.get("n_prompts")
        lines += ["", f"within prompts: the mean over prompts of the within-prompt statistic vs the mean of all "
                      f"raters (CI over the {n_prompts} prompts; a prompt where the judge or the humans are constant "
                      f"is left out, n = prompts used; the ceiling's value is in the same-target table above):"]
        rows = [(name, "judge", j.get("metrics", {}), (j["metrics"].get(pp[0]) or {}).get("n"))
                for name, j in _sorted_judges(ag)]
        lines += _table(rows, pp)
    lines += _category_lines(ag)
    if h.get("alpha"):
        lines.append("human–human Krippendorff's α: " + ", ".join(
            f"{lv} {_fmt(a)}" for lv, a in h["alpha"].items() if a))
    lines.append(_boot_line(ag))
    for w in ag.get("warnings", []):
        lines.append(f"warning: {w}")
    return lines


def _category_lines(ag: dict, k: int = 3) -> list[str]:
    """Per category, the best judge's primary metric: every category when there are few, else the top and
    bottom k."""
    cats = ag["human"].get("categories") or []
    primary = ag["primary_metric"]
    judges = [(n, j) for n, j in _sorted_judges(ag) if j.get("per_category")]
    if len(cats) < 2 or not judges:
        return []
    name, j = judges[0]
    vals = [(c, v) for c, v in j["per_category"].items() if (v["metrics"].get(primary) or {}).get("value") is not None]
    vals.sort(key=lambda cv: -cv[1]["metrics"][primary]["value"])
    out = ["", f"per category ({METRIC_NAMES[primary]} of the best judge, {name}, vs the mean of all raters"
               + (f"; top {k} and bottom {k} of {len(vals)}" if len(vals) > 2 * k else "") + "):"]
    width = max(len(c) for c, _ in vals) + 2
    show = vals if len(vals) <= 2 * k else vals[:k] + [None] + vals[-k:]
    for cv in show:
        if cv is None:
            out.append("  ...")
            continue
        c, v = cv
        out.append(f"  {c:<{width}}{v['n_items']:>5} items  {_fmt(v['metrics'][primary])}")
    return out


def format_terminal(metrics: dict) -> str:
    lines: list[str] = []
    ag = metrics.get("agreement")
    if ag:
        lines += agreement_terminal(ag)
    lines += ensemble_terminal(metrics.get("ensembles"), metrics.get("calibration"), ag)
    health = metrics.get("judge_health") or {}
    flagged = {k: v for k, v in health.items()
               if v["error_rate"] > 0 or v.get("position_consistency") or v.get("first_position_rate")}
    if flagged:
        lines.append("")
        lines.append("judge health (every status, share of rows):")
        for name, v in flagged.items():
            extra = ""
            if v.get("position_consistency"):
                extra += f", position consistency {_fmt(v['position_consistency'], True)}"
            if v.get("first_position_rate"):
                extra += f", picks first shown {_fmt(v['first_position_rate'], True)}"
            st = sorted(v["status"].items(), key=lambda kv: (kv[0] != "ok", -kv[1], kv[0]))
            lines.append(f"  {name}: {v['n_rows']} rows: " + ", ".join(
                f"{k} {100 * c / v['n_rows']:.1f}%" for k, c in st) + extra)
    ba = metrics.get("before_after")
    if ba:
        lines.append("")
        lines.append(f"before/after by judge {ba['judge']} on {ba['n_prompts']} shared prompts"
                     + (f" (split {ba['split']})" if ba.get("split") else "") + ":")
        lab = ba.get("labels") or {}
        for m, v in ba["per_model"].items():
            best = v.get("best_of_n")
            extra = f"; best of {best['n']} by the judge {_fmt(best, True)}" if best and best.get("n", 0) > 1 else ""
            lines.append(f"  {lab.get(m, m)}: aligned {_fmt(v['alignment'], True)}, mean score "
                         f"{_fmt(v['mean_score'])}{extra}")
        for c in ba["comparisons"]:
            d = c["alignment_diff"]
            diff = "-" if not d or d["value"] is None else \
                f"{100 * d['value']:+.1f} pts [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"
            wr = c["win_rate"]
            lines.append(f"  {lab.get(c['b'], c['b'])} vs {lab.get(c['a'], c['a'])}: alignment {diff}, "
                         f"win rate {_fmt(wr, True)} "
                         f"({wr['wins']} wins, {wr['ties']} ties, {wr['losses']} losses)")
    if not lines:
        lines.append("nothing to report: no human labels and no before/after comparison")
    return "\n".join(line.rstrip() for line in lines)


ENS_COLS = [("spearman", "all"), ("pairwise_accuracy", "all"), ("spearman", "loo"), ("pairwise_accuracy", "loo")]


def _ens_header(c: tuple[str, str]) -> str:
    return METRIC_NAMES[c[0]] + (" LOO" if c[1] == "loo" else "")


def _ens_cell(row: dict, c: tuple[str, str]) -> dict | None:
    return (row.get("metrics" if c[1] == "all" else "metrics_loo") or {}).get(c[0])


def ensemble_rows(ens: dict, ag: dict, part: str = "in_sample") -> list[tuple[str, str, dict, int | None]]:
    """(label, kind, {"metrics", "metrics_loo"}, n) rows. part "nested": the nested-selected ensembles and the
    ceiling; "in_sample": each member judge and each ensemble of all members."""
    primary = ens["primary_metric"]
    ceiling = ("human ceiling (LOO)", "ceiling", {"metrics": {}, "metrics_loo": ens["ceiling"] or {}}, None)
    if part == "nested":
        rows = [(f"ensemble: {m} (nested)", "ensemble", r, r["n_items"])
                for m, r in ((ens.get("nested") or {}).get("results") or {}).items()]
        return rows + ([ceiling] if ens.get("ceiling") else [])
    rows = [(name, "judge", ag["judges"][name], ag["judges"][name]["n_items"]) for name in ens["members"]]
    rows.sort(key=lambda r: -((r[2]["metrics"].get(primary) or {}).get("value") or -9))
    for method, r in ens["results"].items():
        label = f"ensemble: {method}" + (" (out-of-fold)" if r["out_of_fold"] else "")
        rows.append((label, "ensemble", r, r["n_items"]))
    return rows + ([ceiling] if ens.get("ceiling") else [])


def _ens_table(rows) -> list[str]:
    width = max(len(r[0]) for r in rows) + 2
    header = f"{'':<{width}}{'n':>5}  " + "".join(f"{_ens_header(c):<{CELL}}" for c in ENS_COLS)
    out = [header, "-" * len(header.rstrip())]
    for label, _, r, n in rows:
        out.append(f"{label:<{width}}{'' if n is None else n:>5}  " + "".join(f"{_fmt(_ens_cell(r, c)):<{CELL}}"
                                                                            for c in ENS_COLS))
    return out


def ensemble_terminal(ens: dict | None, cal: dict | None, ag: dict | None) -> list[str]:
    lines: list[str] = []
    if ens and ag:
        nested = ens.get("nested")
        lines += ["", f"judge ensembles of {len(ens['members'])} judges ({', '.join(ens['members'])}); LOO = vs the "
                      f"mean of the other raters, averaged over left-out raters: the human ceiling's target"]
        if nested:
            lines.append(f"HONEST (nested selection, out-of-sample): members and weights chosen inside each training "
                         f"fold, scored on the held-out fold; {nested['folds']} folds grouped by {nested['fold_unit']} "
                         f"x {nested['repeats']} fold seeds, the seeds' spread inside the CI:")
            lines += _ens_table(ensemble_rows(ens, ag, "nested"))
            freq = sorted(nested["selection_frequency"].items(), key=lambda kv: -(kv[1] or 0))
            lines.append("  selected in (share of training folds): " + ", ".join(
                f"{k} {100 * (v or 0):.0f}%" for k, v in freq))
        lines.append(f"IN-SAMPLE (all {len(ens['members'])} members given; learned ones {ens['folds']}-fold "
                     f"cross-fitted by {ens['fold_unit']}): picking a row here, or a step of the greedy path, "
                     f"tunes on these items")
        lines += _ens_table(ensemble_rows(ens, ag))
        sel = ens.get("selection")
        if sel and sel["steps"]:
            budget = "no budget" if sel["budget_usd"] is None else f"budget ${sel['budget_usd']:g}"
            lines.append(f"greedy selection, IN-SAMPLE path ({budget}; z-mean Spearman; most gain per dollar, free "
                         f"judges first):")
            for k, st in enumerate(sel["steps"], 1):
                lines.append(f"  {k}. + {st['judge']:<28} ${st['cost_usd']:<8.4g} total ${st['total_cost_usd']:<8.4g} "
                             f"{_fmt(st['metric'])}  (+{st['gain']:.3f})")
    if cal:
        lines += ["", f"calibration to P(aligned), aligned = {cal['aligned']} (rate {cal['aligned_rate']:.3f}); "
                      f"{cal['method']}, {cal['folds']}-fold cross-fitted; ECE over {cal['bins']} equal-width bins"]
        width = max([len(k) for k in cal["judges"]] + [10]) + 2
        header = f"{'':<{width}}{'ECE':<24}{'Brier':<24}{'ECE of raw score':<24}"
        lines += [header, "-" * len(header.rstrip())]
        for name, c in sorted(cal["judges"].items(), key=lambda kv: (kv[1]["brier"]["value"] or 9)):
            lines.append(f"{name:<{width}}{_fmt(c['ece']):<24}{_fmt(c['brier']):<24}{_fmt(c.get('ece_raw')):<24}")
    return lines


# =============================================================================== plots
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


# =============================================================================== HTML
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#1f2d3d;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#c9d3de;font-size:13px}main{padding:8px 28px 40px;max-width:1280px}
nav{padding:8px 28px;background:#e9edf2;font-size:13px}nav a{margin-right:16px;color:#1f4e8c}
section{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:14px 18px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px}h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #e6eaef;text-align:right;white-space:nowrap}
th{background:#f0f3f6;cursor:pointer;user-select:none}th:first-child,td:first-child{text-align:left}
tr.ceiling td{background:#eef7ef}tr.baseline td{color:#666;background:#fafafa}
.tw{overflow-x:auto}.ci{color:#7a8590;font-size:12px}.muted{color:#6b7580;font-size:12px}.warn{color:#a0461b}
img.plot{max-width:100%;height:auto;display:block;margin:8px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(130px,1fr));gap:10px}
figure{margin:0;background:#fafbfc;border:1px solid #e6eaef;border-radius:6px;padding:6px}
figure img{width:100%;image-rendering:pixelated;border-radius:4px;display:block}
figcaption{font-size:11px;color:#444;margin-top:4px;word-break:break-word}
code{background:#eef1f4;padding:1px 4px;border-radius:3px}
"""

JS = """
(function(){
  function key(td){var v=td.getAttribute('data-v');if(v!==null&&v!==''){return parseFloat(v);}
    var t=td.textContent.trim();var f=parseFloat(t);return isNaN(f)?t.toLowerCase():f;}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        var asc=th.getAttribute('data-asc')!=='1';th.setAttribute('data-asc',asc?'1':'0');
        rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
          if(typeof x!==typeof y){return typeof x==='number'?-1:1;}
          return (x<y?-1:x>y?1:0)*(asc?1:-1);});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  window.addEventListener('load',function(){
    var imgs=document.querySelectorAll('img');var bad=0;
    imgs.forEach(function(img){var ok=img.complete&&img.naturalWidth>0;img.setAttribute('data-ok',ok?'1':'0');
      if(!ok){bad++;console.error('report: image did not load: '+img.alt);}});
    document.body.setAttribute('data-images',imgs.length+' loaded='+(imgs.length-bad));
  });
})();
"""


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _cell(m: dict | None, pct: bool = False, diff: bool = False) -> str:
    if not m or m.get("value") is None:
        return '<td data-v="">–</td>'
    v = m["value"]
    lo, hi = m["ci95"]
    if diff:  # percentage points: "+52.8 pts [+33.3, +72.2]"
        f = lambda z: f"{100 * z:+.1f}"  # noqa: E731
        unit = " pts"
    else:
        f = (lambda z: f"{100 * z:.1f}%") if pct else (lambda z: f"{z:.3f}")  # noqa: E731
        unit = ""
    ci = f' <span class="ci">[{f(lo)}, {f(hi)}]</span>' if lo is not None and hi is not None else ""
    return f'<td data-v="{v}">{f(v)}{unit}{ci}</td>'


def _img(b64: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _agreement_html(ag: dict) -> str:
    h = ag["human"]
    cols = _columns(ag)
    extra = [c for c in ("alpha_nominal", "alpha_ordinal", "alpha_interval")
             if any(c in j.get("metrics", {}) for j in ag["judges"].values())]
    cols += extra
    out = ['<section id="agreement"><h2>Agreement with human labels</h2>',
           f'<p>{_e(h["source"])}: <b>{h["n_items"]}</b> items, <b>{h["n_raters"]}</b> raters, '
           f'{h["ratings_per_item"]:g} ratings per item ({_e(h["kind"])} ratings). Reference of this table: the mean '
           f'of all raters per item (the majority for accuracy, κ and nominal α). Pairwise accuracy counts '
           f'{_e(ag["pairwise_unit"])}, '
           f'tie policy <code>{_e(ag["tie_policy"])}</code>. {_e(_boot_line(ag))}.</p>']
    out.append(_html_table(agreement_rows(ag), cols, "judge"))
    for name, j in ag["judges"].items():
        if j.get("scale"):
            out.append(f'<p class="muted">scale: <code>{_e(name)}</code>: {_e(j["scale"])}</p>')
    if h.get("answers4"):
        out.append('<p class="muted">Human answers: ' + _e(", ".join(f"{k} {v}" for k, v in h["answers4"].items()))
                   + ". 4-way accuracy: exact match of A / B / tie / both bad (a judge's [[A=B]] matches tie and both "
                     f"bad); failed judge answers: <code>{_e(ag.get('failed_policy'))}</code>.</p>")
    lcols = _loo_columns(ag)
    if h.get("ceiling") and lcols:
        out.append("<h3>Judges and the human ceiling on the same target</h3><p>Each judge and each rater against the "
                   "mean of the <i>other</i> raters (leave one rater out), averaged over the left-out raters: the "
                   "ceiling's target, so the two can be compared.</p>")
        out.append(_html_table(agreement_rows(ag, "loo"), lcols, "judge"))
        per = h["ceiling"].get("per_rater") or {}
        if per:
            out.append("<p>Ceiling per left-out rater (a deviant rater shows here):</p>")
            out.append(_html_table([(r, "ceiling", v["metrics"], v["n_items"]) for r, v in per.items()], lcols,
                                   "rater"))
    pp = [c for c in ("spearman_per_prompt", "kendall_tau_b_per_prompt", "kendall_tau_c_per_prompt")
          if any(c in j.get("metrics", {}) for j in ag["judges"].values())]
    if pp:
        out.append("<h3>Within prompts</h3><p>Mean over prompts of the within-prompt statistic (CI over prompts; "
                   "prompts where the judge or the humans are constant are left out; n = prompts used).</p>")
        rows = [(name, "judge", j.get("metrics", {}), (j["metrics"].get(pp[0]) or {}).get("n"))
                for name, j in _sorted_judges(ag)]
        out.append(_html_table(rows, pp, "judge"))
    for title, fn in (("agreement plot", plot_agreement), ("per-category plot", plot_categories)):
        b64 = fn(ag)
        if b64:
            out.append(_img(b64, title))
    clip = ag["baselines"].get("clip_score")
    if clip:
        out.append(f'<p class="muted">CLIP-score baseline: judge <code>{_e(clip["judge"])}</code> '
                   '(in the table above).</p>')
    out.append("<h3>Human–human agreement</h3>")
    if h.get("alpha"):
        out.append("<table><thead><tr><th>Krippendorff's α</th><th>value [95% CI]</th><th>units</th></tr></thead>"
                   "<tbody>")
        for lv, a in h["alpha"].items():
            if a:
                out.append(f"<tr><td>{_e(lv)}</td>{_cell(a)}<td>{a['n']}</td></tr>")
        out.append("</tbody></table>")
        b64 = plot_alpha(h)
        if b64:
            out.append(_img(b64, "alpha plot"))
    ceiling = h.get("ceiling")
    if ceiling:
        out.append(f'<p class="muted">Ceiling: {_e(ceiling["method"])} ({ceiling["n_raters"]} raters). Compare it '
                   "with the judges' leave-one-rater-out rows above (the same target), not with the first table "
                   "(the mean of all raters is an easier target).</p>")
    else:
        out.append('<p class="muted">One rating per item: no human–human ceiling.</p>')
    for w in ag.get("warnings", []):
        out.append(f'<p class="warn">warning: {_e(w)}</p>')
    out.append("</section>")
    return "".join(out)


def _html_table(rows, cols, first: str) -> str:
    out = [f'<table class="sortable"><thead><tr><th>{_e(first)}</th><th>items</th>'
           + "".join(f"<th>{_e(METRIC_NAMES[c])}</th>" for c in cols) + "</tr></thead><tbody>"]
    for label, kind, m, n in rows:
        out.append(f'<tr class="{kind}"><td>{_e(label)}</td><td data-v="{n if n is not None else ""}">'
                   f'{"" if n is None else n}</td>' + "".join(_cell(m.get(c)) for c in cols) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


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


def _ensembles_html(ens: dict | None, cal: dict | None, ag: dict | None) -> str:
    out = ['<section id="ensembles"><h2>Judge ensembles and calibration</h2>']
    if ens and ag:
        def table(rows):
            t = ['<table class="sortable"><thead><tr><th>judge / ensemble</th><th>items</th>'
                 + "".join(f"<th>{_e(_ens_header(c))}</th>" for c in ENS_COLS) + "</tr></thead><tbody>"]
            for label, kind, r, n in rows:
                t.append(f'<tr class="{kind}"><td>{_e(label)}</td><td data-v="{n if n is not None else ""}">'
                         f'{"" if n is None else n}</td>' + "".join(_cell(_ens_cell(r, c)) for c in ENS_COLS) + "</tr>")
            t.append("</tbody></table>")
            return "".join(t)

        nested = ens.get("nested")
        if nested:
            out.append(f"<h3>Honest: nested selection (out-of-sample)</h3><p>{_e(nested['protocol'])}. LOO columns: "
                       "against the mean of the other raters, the human ceiling's target. Selected in (share of "
                       "training folds): " + _e(", ".join(f"{k} {100 * (v or 0):.0f}%" for k, v in
                                                        nested["selection_frequency"].items())) + ".</p>")
            out.append(table(ensemble_rows(ens, ag, "nested")))
        out.append(f'<h3>In-sample: all {len(ens["members"])} members given</h3><p><b>Picking a row of this table, '
                   f'or a step of the greedy path below, after seeing it is tuning on these items.</b> '
                   f'<code>zmean</code>, <code>rankmean</code> and '
                   f'<code>vote</code> use no human labels; <code>learned</code> (ridge on z-scores, fitted to the '
                   f'human mean) and <code>logistic</code> (P(aligned)) are cross-fitted over {ens["folds"]} folds '
                   f'grouped by <code>{_e(ens["fold_unit"])}</code>: their weights are out-of-fold. '
                   f'Missing scores: {_e(ens["missing"])}.</p>')
        out.append(table(ensemble_rows(ens, ag)))
        sel = ens.get("selection")
        if sel and sel["steps"]:
            budget = "no budget" if sel["budget_usd"] is None else f"budget ${sel['budget_usd']:g}"
            out.append(f"<h3>Greedy judge selection, in-sample ({_e(budget)})</h3><p>Each step adds the judge with "
                       "the largest "
                       "gain in the z-mean's Spearman ρ per dollar (free judges first). Costs: "
                       + ", ".join(f"<code>{_e(j)}</code> ${c:g} ({_e(sel['cost_source'][j])})"
                                   for j, c in sel["costs_usd"].items()) + f". {_e(sel['note'])}.</p>")
            out.append("<table><thead><tr><th>step</th><th>adds</th><th>cost</th><th>total cost</th>"
                       "<th>Spearman ρ of the z-mean</th><th>gain</th></tr></thead><tbody>")
            for k, st in enumerate(sel["steps"], 1):
                out.append(f"<tr><td>{k}</td><td>{_e(st['judge'])}</td><td>${st['cost_usd']:g}</td>"
                           f"<td>${st['total_cost_usd']:g}</td>{_cell(st['metric'])}<td>+{st['gain']:.3f}</td></tr>")
            out.append("</tbody></table>")
    if cal:
        out.append(f"<h3>Calibration</h3><p>Each judge's score mapped to the probability that the humans call the "
                   f"image aligned ({_e(cal['aligned'])}; {cal['aligned_rate']:.1%} of items) by "
                   f"<code>{_e(cal['method'])}</code> regression, cross-fitted over {cal['folds']} folds grouped by "
                   f"<code>{_e(cal['fold_unit'])}</code>. ECE: {_e(cal['ece'])}. ECE of the raw score: when the raw "
                   f"score already lies in [0, 1].</p>")
        out.append("<table class=\"sortable\"><thead><tr><th>judge</th><th>items</th><th>ECE</th><th>Brier</th>"
                   "<th>ECE of raw score</th></tr></thead><tbody>")
        for name, c in sorted(cal["judges"].items(), key=lambda kv: (kv[1]["brier"]["value"] or 9)):
            out.append(f"<tr><td>{_e(name)}</td><td>{c['n_items']}</td>{_cell(c['ece'])}{_cell(c['brier'])}"
                       f"{_cell(c.get('ece_raw'))}</tr>")
        out.append("</tbody></table>")
        b64 = plot_reliability(cal)
        if b64:
            out.append(_img(b64, "reliability diagram"))
    out.append("</section>")
    return "".join(out)


def _health_html(health: dict) -> str:
    if not health:
        return ""
    out = ['<section id="health"><h2>Judge health</h2><table class="sortable"><thead><tr><th>judge</th><th>rows</th>'
           '<th>ok</th><th>refused</th><th>parse errors</th><th>other errors</th><th>position consistency</th>'
           '<th>picks first shown</th></tr></thead><tbody>']
    for name, v in health.items():
        other = v["error_rate"] - v["refusal_rate"] - v["parse_error_rate"]
        out.append(f"<tr><td>{_e(name)}</td><td>{v['n_rows']}</td>"
                   f"<td data-v=\"{v['ok_rate']}\">{100 * v['ok_rate']:.1f}%</td>"
                   f"<td data-v=\"{v['refusal_rate']}\">{100 * v['refusal_rate']:.1f}%</td>"
                   f"<td data-v=\"{v['parse_error_rate']}\">{100 * v['parse_error_rate']:.1f}%</td>"
                   f"<td data-v=\"{other}\">{100 * max(other, 0):.1f}%</td>"
                   f"{_cell(v.get('position_consistency'), True)}{_cell(v.get('first_position_rate'), True)}</tr>")
    out.append('</tbody></table><p class="muted">Statuses: ' + ", ".join(
        sorted({s for v in health.values() for s in v["status"]})) + ". Only ok rows are scored.</p></section>")
    return "".join(out)


def _before_after_html(ba: dict) -> str:
    out = [f'<section id="before-after"><h2>Model before / after</h2><p>Judge <code>{_e(ba["judge"])}</code>, '
           f'{ba["n_prompts"]} prompts judged for every model'
           + (f" (split <code>{_e(ba['split'])}</code>)" if ba.get("split") else "")
           + (f", {ba['n_prompts_dropped']} prompts left out (not judged for every model)"
              if ba["n_prompts_dropped"] else "")
           + ". Rates count images; CIs from a bootstrap over prompts (paired across models).</p>"]
    concepts = sorted({c for m in ba["models"] for c in ba["per_model"][m]["concepts"]})
    lab = ba.get("labels") or {}
    out.append('<table class="sortable"><thead><tr><th>model</th><th>images</th><th>aligned</th>'
               + "".join(f"<th>{_e(c)}</th>" for c in concepts) + "<th>mean score</th></tr></thead><tbody>")
    for m in ba["models"]:
        pm = ba["per_model"][m]
        out.append(f"<tr><td title=\"{_e(m)}\">{_e(lab.get(m, m))}</td><td>{pm['n_images']}</td>"
                   f"{_cell(pm['alignment'], True)}"
                   + "".join(_cell(pm["concepts"].get(c), True) for c in concepts) + f"{_cell(pm['mean_score'])}</tr>")
    out.append("</tbody></table>")
    out.append("<table><thead><tr><th>comparison</th><th>alignment Δ</th>"
               + "".join(f"<th>{_e(c)} Δ</th>" for c in concepts)
               + "<th>win rate</th><th>wins / ties / losses</th></tr></thead><tbody>")
    for c in ba["comparisons"]:
        wr = c["win_rate"]
        out.append(f"<tr><td>{_e(lab.get(c['b'], c['b']))} vs {_e(lab.get(c['a'], c['a']))}</td>"
                   f"{_cell(c['alignment_diff'], diff=True)}"
                   + "".join(_cell(c["concept_diffs"].get(q), diff=True) for q in concepts)
                   + f"{_cell(wr, True)}<td>{wr['wins']} / {wr['ties']} / {wr['losses']}</td></tr>")
    out.append("</tbody></table>")
    b64 = plot_before_after(ba)
    if b64:
        out.append(_img(b64, "before/after plot"))
    out.append('<p class="muted">Win rate: per prompt, the later model\'s mean score against the baseline\'s '
               '(a tie counts one half).</p></section>')
    return "".join(out)


def _grids_html(grids: list[dict]) -> str:
    if not grids:
        return ""
    out = ['<section id="images"><h2>Images</h2>']
    for g in grids:
        out.append(f"<h3>{_e(g['title'])}</h3><p class=\"muted\">{_e(g['note'])}</p><div class=\"grid\">")
        for it in g["items"]:
            if not it.get("png"):
                continue
            b64 = base64.b64encode(_thumbnail(it["png"])).decode("ascii")
            out.append(f"<figure>{_img(b64, it['image_id'], 'thumb')}"
                       f"<figcaption>{_e(it['caption'])}</figcaption></figure>")
        out.append("</div>")
    out.append("</section>")
    return "".join(out)


def _thumbnail(png: bytes, side: int = 160) -> bytes:
    """Re-encode as PNG, enlarged (nearest) or shrunk to about `side` pixels."""
    from PIL import Image

    img = decode_image(png)
    scale = side / max(img.size)
    if abs(scale - 1) > 0.05:
        size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        img = img.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def render_html(metrics: dict, grids: list[dict] | None = None) -> str:
    ev = metrics.get("eval") or {}
    title = f"autofeedback eval — {ev.get('run_dir', '')}"
    body = []
    if metrics.get("agreement"):
        body.append(_agreement_html(metrics["agreement"]))
    if metrics.get("ensembles") or metrics.get("calibration"):
        body.append(_ensembles_html(metrics.get("ensembles"), metrics.get("calibration"), metrics.get("agreement")))
    body.append(_health_html(metrics.get("judge_health") or {}))
    if metrics.get("before_after"):
        body.append(_before_after_html(metrics["before_after"]))
    body.append(_grids_html(grids or []))
    if not any(body):
        body.append('<section><p>Nothing to report: no human labels and no before/after comparison.</p></section>')
    sections = (("agreement", "Agreement", "agreement"), ("ensembles", "Ensembles", "ensembles"),
                ("health", "Judge health", "judge_health"),
                ("before-after", "Before / after", "before_after"))
    nav = [(sid, name) for sid, name, key in sections if metrics.get(key)]
    if grids:
        nav.append(("images", "Images"))
    inputs = ev.get("inputs") or {}
    src = ", ".join([x for x in [inputs.get("human")] + list(inputs.get("judgments") or []) if x])
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{_e(title)}</title><style>{CSS}</style></head><body>'
        f'<header><h1>{_e(title)}</h1><p>generated {_e(ev.get("created_at", ""))} · inputs: {_e(src or "-")}</p>'
        "</header>"
        "<nav>" + "".join(f'<a href="#{sid}">{name}</a>' for sid, name in nav) + "</nav>"
        "<main>" + "".join(body).replace("<table", '<div class="tw"><table').replace("</table>", "</table></div>")
        + '<p class="muted">Numbers: report/metrics.json (key reference in docs/eval.md).</p></main>'
        f"<script>{JS}</script></body></html>\n"
    )


def write_html(path: str | Path, metrics: dict, grids: list[dict] | None = None) -> Path:
    from .tables import write_atomic

    return write_atomic(path, render_html(metrics, grids))
