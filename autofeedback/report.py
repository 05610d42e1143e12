"""The eval report: a terminal table, and one self-contained HTML file (inline CSS, plots and images as
base64 PNG, no network, a few lines of JavaScript for sortable tables).

    format_terminal(metrics) -> str
    (HTML: report_html.write_html(path, metrics, grids); metrics as in metrics.json, autofeedback.eval)

This module: the terminal text and the rows both outputs show. The HTML is a Jinja2 template
(autofeedback/templates/report/, package data) rendered by report_html.py; the plots are report_plots.py.
"""

from __future__ import annotations

from pathlib import Path

METRIC_NAMES = {
    "spearman": "Spearman ρ", "kendall_tau_b": "Kendall τ-b", "kendall_tau_c": "Kendall τ-c",
    "pairwise_accuracy": "pairwise acc.", "accuracy_4way": "4-way acc.",
    "accuracy": "accuracy", "cohen_kappa": "Cohen κ", "alpha_nominal": "α nominal", "alpha_ordinal": "α ordinal",
    "alpha_interval": "α interval", "spearman_per_prompt": "ρ within prompt",
    "kendall_tau_b_per_prompt": "τ-b within prompt", "kendall_tau_c_per_prompt": "τ-c within prompt",
}
CELL = 23  # "0.592 [0.542, 0.641]" and room for minus signs


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


def per_prompt_columns(ag: dict) -> list[str]:
    """The within-prompt statistics some judge has."""
    return [c for c in ("spearman_per_prompt", "kendall_tau_b_per_prompt", "kendall_tau_c_per_prompt")
            if any(c in j.get("metrics", {}) for j in ag["judges"].values())]


def per_prompt_rows(ag: dict, pp: list[str]) -> list[tuple[str, str, dict, int | None]]:
    """(label, kind, metrics, n) rows of the within-prompt table: n = prompts used."""
    return [(name, "judge", j.get("metrics", {}), (j["metrics"].get(pp[0]) or {}).get("n"))
            for name, j in _sorted_judges(ag)]


def calibration_rows(cal: dict) -> list[tuple[str, dict]]:
    """(judge, calibration) by Brier score, best first."""
    return sorted(cal["judges"].items(), key=lambda kv: (kv[1]["brier"]["value"] or 9))


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
    pp = per_prompt_columns(ag)
    if pp:
        n_prompts = h.get("n_prompts")
        lines += ["", f"within prompts: the mean over prompts of the within-prompt statistic vs the mean of all "
                      f"raters (CI over the {n_prompts} prompts; a prompt where the judge or the humans are constant "
                      f"is left out, n = prompts used; the ceiling's value is in the same-target table above):"]
        lines += _table(per_prompt_rows(ag, pp), pp)
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
    if metrics.get("before_after_skipped"):
        lines += ["", f"no before/after: {metrics['before_after_skipped']}"]
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
        for name, c in calibration_rows(cal):
            lines.append(f"{name:<{width}}{_fmt(c['ece']):<24}{_fmt(c['brier']):<24}{_fmt(c.get('ece_raw')):<24}")
    return lines
