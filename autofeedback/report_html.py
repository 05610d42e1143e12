"""The HTML report: autofeedback/templates/report/report.html.j2 (package data, with report.css and report.js
inlined), rendered with Jinja2, autoescape on: prompts, judge names and answers are escaped wherever they go.

    render_html(metrics, grids) -> str      one self-contained page (plots and thumbnails as base64 PNG)

The rows and columns are the terminal's (report.py); the plots are report_plots.py.
"""

from __future__ import annotations

import base64
import functools
import io

import jinja2

from . import report, report_plots
from .images import decode_image

NAV = (("agreement", "Agreement", "agreement"), ("ensembles", "Ensembles", "ensembles"),
       ("health", "Judge health", "judge_health"), ("before-after", "Before / after", "before_after"))


@functools.cache
def environment() -> jinja2.Environment:
    """The template folder of the installed package (a wheel carries it as package data)."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("autofeedback", "templates/report"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = format  # {{ x|fmt(".3f") }}: Python's format spec, as the terminal's f-strings
    env.globals.update(
        METRIC_NAMES=report.METRIC_NAMES, ENS_COLS=report.ENS_COLS, ens_header=report._ens_header,
        ens_cell=report._ens_cell, boot_line=report._boot_line, agreement_rows=report.agreement_rows,
        ensemble_rows=report.ensemble_rows, loo_columns=report._loo_columns,
        per_prompt_columns=report.per_prompt_columns, per_prompt_rows=report.per_prompt_rows,
        calibration_rows=report.calibration_rows, agreement_columns=agreement_columns, rater_rows=rater_rows,
        statuses=statuses, ba_concepts=ba_concepts, thumbnail_b64=thumbnail_b64,
        plot_agreement=report_plots.plot_agreement, plot_categories=report_plots.plot_categories,
        plot_alpha=report_plots.plot_alpha, plot_reliability=report_plots.plot_reliability,
        plot_before_after=report_plots.plot_before_after)
    return env


def render_html(metrics: dict, grids: list[dict] | None = None) -> str:
    ev = metrics.get("eval") or {}
    inputs = ev.get("inputs") or {}
    grids = grids or []
    nav = [(sid, name) for sid, name, key in NAV if metrics.get(key)] + ([("images", "Images")] if grids else [])
    nothing = not (metrics.get("agreement") or metrics.get("ensembles") or metrics.get("calibration")
                   or metrics.get("judge_health") or metrics.get("before_after") or grids)
    return environment().get_template("report.html.j2").render(
        metrics=metrics, grids=grids, nav=nav, nothing=nothing,
        title=f"autofeedback eval — {ev.get('run_dir', '')}", created_at=ev.get("created_at", ""),
        inputs=", ".join([x for x in [inputs.get("human")] + list(inputs.get("judgments") or []) if x])) + "\n"


# ------------------------------------------------------------------------------------- what the template asks
def agreement_columns(ag: dict) -> list[str]:
    """The first table's columns: the terminal's, and Krippendorff's α where a judge has it."""
    return report._columns(ag) + [c for c in ("alpha_nominal", "alpha_ordinal", "alpha_interval")
                                  if any(c in j.get("metrics", {}) for j in ag["judges"].values())]


def rater_rows(per_rater: dict) -> list[tuple[str, str, dict, int | None]]:
    return [(r, "ceiling", v["metrics"], v["n_items"]) for r, v in per_rater.items()]


def statuses(health: dict) -> list[str]:
    return sorted({s for v in health.values() for s in v["status"]})


def ba_concepts(ba: dict) -> list[str]:
    return sorted({c for m in ba["models"] for c in ba["per_model"][m]["concepts"]})


def thumbnail_b64(png: bytes) -> str:
    return base64.b64encode(_thumbnail(png)).decode("ascii")


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


def write_html(path, metrics: dict, grids: list[dict] | None = None):
    """Write the report page atomically; returns its path."""
    from .tables import write_atomic

    return write_atomic(path, render_html(metrics, grids))
