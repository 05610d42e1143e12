"""train grpo's report: RUN/<out>/report.png, four panels per epoch -- the train reward (each judge and the weighted
mean), the held-out gold (aligned and score, at eta=0 and at the training eta), the KL to the reference, and the
share of clipped ratios. A train reward that rises while the gold stays flat or falls is reward hacking."""

from __future__ import annotations

from pathlib import Path


def plot(history: list[dict], path: Path) -> str | None:
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))

    def series(key):
        pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        return ([e for e, _ in pts], [v for _, v in pts]) if pts else None

    ax = axes[0]
    judges = sorted({k.split("/", 1)[1] for h in history for k in h if k.startswith("reward/")})
    for j in judges:
        if (xy := series(f"reward/{j}")) is not None:
            ax.plot(*xy, marker=".", label=j)
    if len(judges) > 1 and (xy := series("reward")) is not None:
        ax.plot(*xy, marker=".", color="k", label="weighted")
    ax.set_title("train reward (training sampler)")
    ax = axes[1]
    for key, label in (("gold_aligned", "aligned, eta=0"), ("gold_score", "score, eta=0"),
                       ("gold_train_aligned", "aligned, train eta"), ("gold_train_score", "score, train eta")):
        if (xy := series(key)) is not None:
            ax.plot(*xy, marker=".", label=label, linestyle="-" if "train" not in key else "--")
    ax.set_title("held-out gold judge")
    for ax, key, title in ((axes[2], "kl", "KL to the reference"), (axes[3], "clipfrac", "clip fraction")):
        if (xy := series(key)) is not None:
            ax.plot(*xy, marker=".")
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return str(path)
