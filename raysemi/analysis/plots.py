"""PNG plots for reports and analyses (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_miou_vs_fraction(summary: pd.DataFrame, path: Path) -> None:
    """Mean val mIoU (± std as error bars) against the labeled share, one line per method (log-2 x axis)."""
    figure, axes = plt.subplots(figsize=(6, 4))
    for method, group in summary.groupby("method", sort=True):
        group = group.sort_values("share")
        axes.errorbar(group["share"], group["miou_mean"], yerr=group["miou_std"], marker="o", capsize=3,
                      label=method)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("labeled share of the train set")
    axes.set_ylabel("val mIoU")
    axes.grid(alpha=0.3)
    axes.legend()
    _save(figure, path)


def plot_curves(runs: list, path: Path) -> None:
    """Training loss and val mIoU against step, one line per run (``metrics.jsonl``)."""
    figure, (loss_axes, miou_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for run, label in zip(runs, curve_labels(runs), strict=True):
        losses = [(r["step"], r["loss"]) for r in run.metrics if "loss" in r]
        mious = [(r["step"], r["val"]["miou"]) for r in run.metrics if "val" in r]
        if losses:
            loss_axes.plot(*zip(*losses, strict=True), label=label)
        if mious:
            miou_axes.plot(*zip(*mious, strict=True), marker="o", label=label)
    loss_axes.set(xlabel="step", ylabel="training loss", title="loss")
    miou_axes.set(xlabel="step", ylabel="val mIoU", title="val mIoU")
    for axes in (loss_axes, miou_axes):
        axes.grid(alpha=0.3)
    if runs:
        miou_axes.legend(fontsize="small")
    _save(figure, path)


def curve_labels(runs: list) -> list[str]:
    """``method fraction sSEED`` per run, with the run directory's name added where runs would share a label
    (the trials of a hyperparameter search)."""
    labels = [f"{run.method} {run.fraction} s{run.seed}" for run in runs]
    repeated = Counter(labels)
    return [f"{label} ({run.run_dir.name})" if repeated[label] > 1 else label
            for run, label in zip(runs, labels, strict=True)]


def plot_calibration(rows: list[dict], path: Path) -> None:
    """Accuracy against mean confidence per bin (bars), and the diagonal of perfect calibration."""
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    filled = [r for r in rows if r["pixels"] > 0]
    centres = [(r["low"] + r["high"]) / 2 for r in filled]
    axes.bar(centres, [r["accuracy"] for r in filled], width=rows[0]["high"] - rows[0]["low"], alpha=0.7,
             edgecolor="black", label="accuracy")
    axes.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    axes.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    axes.legend(loc="upper left")
    _save(figure, path)


def _save(figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
