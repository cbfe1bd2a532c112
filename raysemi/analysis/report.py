"""``raysemi report``: every finished run under a folder, as a method × label-fraction table and plots.

A run is a directory with ``summary.json`` and ``config.yaml`` (what ``raysemi train`` writes). Of a chained
run (``stages.json`` in the parent: self-correction's stages, SimFormer's retrain), only the last stage counts.
The label fraction is labeled / train images with masks, as in ``data.label_fraction`` and ``--fraction``, read
from the run's own ``split.json`` (the counts of its split), so it is right whichever way the split was chosen
(fraction, count or file) and however many unmasked or ``unlabeled_dir`` images trained beside it; those are
columns of their own (``unmasked``, ``unlabeled_dir``). A run from before ``split.json`` counts the lines of
its ``labeled.txt`` and ``unlabeled.txt`` (every unlabeled image as masked, the only reading they allow).

Outputs in ``out``: ``runs.csv`` (one row per run), ``summary.csv`` (mean, std and count of mIoU per method
and fraction), ``summary.md`` (the method × fraction table), ``miou_vs_fraction.png`` and ``curves.png``
(training loss and val mIoU against step, one line per run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from raysemi.data.splits import read_split_counts
from raysemi.errors import DataError
from raysemi.methods.registry import method_class, method_names
from raysemi.tracking import best_of, read_metrics


@dataclass
class RunResult:
    run_dir: Path
    method: str
    labeled: int
    total: int
    seed: int
    miou: float
    iou: dict[str, float | None]
    metrics: list[dict] = field(default_factory=list)
    best_miou: float | None = None  # the best val mIoU of the run's evaluations, and its step
    best_step: int | None = None
    unmasked: int = 0  # unlabeled train images without masks, outside the fraction
    unlabeled_dir: int = 0  # images of data.unlabeled_dir, outside the fraction
    code_version: str | None = None  # which code trained the run, where its summary.json records it

    @property
    def fraction(self) -> str:
        """``1/k`` when labeled/total (``total``: the images with masks) is within 2 % of it (the split tool
        rounds up), else ``labeled/total``."""
        if self.labeled == self.total:
            return "all"
        k = round(self.total / self.labeled)
        if k > 0 and abs(self.labeled * k - self.total) <= 0.02 * self.total:
            return f"1/{k}"
        return f"{self.labeled}/{self.total}"


def find_runs(root: Path) -> list[RunResult]:
    """Every finished run under ``root`` (``root`` itself may be one).

    Raises:
        DataError: ``root`` is not a folder, or holds no finished run.
    """
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of runs (pass a run directory or a folder holding some)")
    runs = [_read_run(path.parent) for path in sorted(root.rglob("summary.json")) if _counts(path.parent)]
    if not runs:
        raise DataError(f"{root}: no finished run (a folder with summary.json and config.yaml) under it")
    return runs


def _counts(run_dir: Path) -> bool:
    """A run that counts: it has its config, and it is the last stage of its chain if part of one."""
    if not (run_dir / "config.yaml").is_file():
        return False
    stages = run_dir.parent / "stages.json"
    return not stages.is_file() or list(json.loads(stages.read_text()))[-1] == run_dir.name


def _read_run(run_dir: Path) -> RunResult:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    counts = read_split_counts(run_dir)
    if counts is None:  # a run from before split.json
        labeled, unlabeled = (_lines(run_dir / name) for name in ("labeled.txt", "unlabeled.txt"))
        counts = {"labeled": labeled, "masked": labeled + unlabeled, "unmasked": 0, "unlabeled_dir": 0}
    metrics = read_metrics(run_dir)
    best = {key: summary[key] for key in ("best_miou", "best_step") if key in summary}
    best = best or best_of(metrics, summary["miou"], summary.get("steps", 0))  # runs from before best_miou
    return RunResult(run_dir, _method_label(cfg, run_dir), counts["labeled"], counts["masked"], cfg["run"]["seed"],
                     summary["miou"], summary["iou"], metrics, best["best_miou"], best["best_step"],
                     counts["unmasked"], counts["unlabeled_dir"], summary.get("code_version"))


def _lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def _method_label(cfg: dict, run_dir: Path) -> str:
    """The method's :meth:`~raysemi.methods.base.Method.report_label`; the last stage of a chain that changes
    method (SimFormer's ``retrain``) is ``<first stage's label>+<stage name>``."""
    label = _label(cfg)
    stages = run_dir.parent / "stages.json"
    first = list(json.loads(stages.read_text()))[0] if stages.is_file() else run_dir.name
    first_config = run_dir.parent / first / "config.yaml"
    if first != run_dir.name and first_config.is_file():
        first_cfg = yaml.safe_load(first_config.read_text())
        if first_cfg["method"] != cfg["method"]:
            return f"{_label(first_cfg)}+{run_dir.name}"
    return label


def _label(cfg: dict) -> str:
    """A run's method label from its config as written; a method no longer registered keeps its name."""
    name = cfg["method"]
    return method_class(name).report_label(cfg.get(name) or {}) if name in method_names() else name


def runs_frame(runs: list[RunResult], per_class: bool = False) -> pd.DataFrame:
    """One row per run: ``method, fraction, labeled, total`` (images with masks)``, unmasked, unlabeled_dir,
    seed, miou, best_miou, best_step`` (+ ``iou_<class>``), ``run_dir``."""
    rows = []
    for run in runs:
        row = {"method": run.method, "fraction": run.fraction, "labeled": run.labeled, "total": run.total,
               "unmasked": run.unmasked, "unlabeled_dir": run.unlabeled_dir, "seed": run.seed, "miou": run.miou,
               "best_miou": run.best_miou, "best_step": run.best_step}
        if per_class:
            row |= {f"iou_{name}": value for name, value in run.iou.items()}
        rows.append(row | {"run_dir": str(run.run_dir)})
    return pd.DataFrame(rows)


def summary_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (0 for one run) and count of each numeric result per method and fraction, fractions
    in increasing order of labeled share."""
    values = [c for c in runs.columns if c in ("miou", "best_miou") or c.startswith("iou_")]
    grouped = runs.groupby(["method", "fraction"], sort=False)
    summary = grouped[values].agg(["mean", "std"]).fillna({(c, "std"): 0.0 for c in values})
    summary.columns = [f"{c}_{stat}" for c, stat in summary.columns]
    summary["runs"] = grouped.size()
    summary["share"] = grouped["labeled"].first() / grouped["total"].first()
    return summary.reset_index().sort_values(["method", "share"]).reset_index(drop=True)


def markdown_table(summary: pd.DataFrame) -> str:
    """Method × fraction table of ``mean ± std (runs)`` mIoU."""
    fractions = list(dict.fromkeys(summary.sort_values("share")["fraction"]))
    lines = ["| method | " + " | ".join(fractions) + " |", "|---" * (len(fractions) + 1) + "|"]
    for method, group in summary.groupby("method", sort=True):
        cells = {r.fraction: f"{r.miou_mean:.4f} ± {r.miou_std:.4f} ({r.runs})" for r in group.itertuples()}
        lines.append(f"| {method} | " + " | ".join(cells.get(f, "–") for f in fractions) + " |")
    return "\n".join(lines) + "\n"


def write_report(root: Path, out: Path, per_class: bool = False,
                 runs: list[RunResult] | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """Write the report of the runs under ``root`` (``runs``: those :func:`find_runs` found there already) into
    ``out``; return the summary and the files."""
    from raysemi.analysis.plots import plot_curves, plot_miou_vs_fraction

    runs = find_runs(root) if runs is None else runs
    every = runs_frame(runs, per_class)
    summary = summary_frame(every)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "runs.csv", out / "summary.csv", out / "summary.md", out / "miou_vs_fraction.png",
             out / "curves.png"]
    every.to_csv(files[0], index=False)
    summary.to_csv(files[1], index=False)
    files[2].write_text(markdown_table(summary))
    plot_miou_vs_fraction(summary, files[3])
    plot_curves(runs, files[4])
    return summary, files
