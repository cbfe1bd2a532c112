"""The paired view of a user's own runs (``raysemi report``): each method against a baseline, paired by seed.

Runs are grouped by method and label fraction. Where a method and the baseline both have runs at a fraction,
their runs of the same seed pair, and the view gives what the benchmark's tables give
(:func:`raysemi.bench.tables.comparison_table`): each seed's two mIoUs and difference, the mean ± sample std of
the differences, and per class both mean IoUs, their difference and the baseline's IoU with every label (its
runs at fraction ``all``, where there are some). A run's code version is the ``code_version`` its summary.json
records, else the one recorded beside its run directory (:func:`raysemi.bench.versions.recorded_version`);
runs whose recorded versions differ are not paired unless ``allow_mixed``, and a comparison none of whose runs
records one says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from raysemi.bench import pairs, runs, tables, versions

REMEDY = "rerun one side at the other's code"


@dataclass
class PairedView:
    """``records``: one comparison record per (method, fraction) with paired seeds; ``lines``: the Markdown page;
    ``refused``: one line per pair or comparison left out, and why."""

    records: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def run_record(run) -> dict:
    """A run record (:mod:`raysemi.bench.pairs`) of a run ``raysemi report`` found: any object with ``run_dir``,
    ``method``, ``fraction``, ``seed``, ``miou``, ``iou`` and ``code_version`` (None: look beside the run
    directory, or a chained run's directory for its last stage)."""
    run_dir = Path(run.run_dir)
    chain = run_dir.parent if (run_dir.parent / "stages.json").is_file() else None
    version = run.code_version or versions.recorded_version(run_dir) or (
        versions.recorded_version(chain) if chain else None)
    return {"method": run.method, "fraction": run.fraction, "seed": run.seed, "val_miou": run.miou,
            "per_class_iou": run.iou, "code_version": version, "run_dir": str(run_dir)}


def paired_view(found: list[dict], baseline: str = "supervised", allow_mixed: bool = False) -> PairedView:
    """Every method's runs (run records) against ``baseline``'s at the same fraction, paired by seed."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in found:
        groups.setdefault((run["method"], run["fraction"]), []).append(run)
    view = PairedView(lines=[f"# Paired differences against {baseline}", "",
                             "Method − baseline in mIoU points (×100), paired by seed at the same label fraction; "
                             "mean ± sample std over the paired seeds. Per class: mean IoU over the paired seeds.",
                             ""])
    for (method, fraction), group in sorted(groups.items()):
        base = groups.get((baseline, fraction))
        if method != baseline and base and _one_run_per_seed(method, fraction, group + base, view):
            _compare(view, method, baseline, fraction, pairs.pair_by_seed(group, base), allow_mixed,
                     groups.get((baseline, "all"), []) if fraction != "all" else [])
    return view


def _one_run_per_seed(method: str, fraction: str, runs: list[dict], view: PairedView) -> bool:
    """Whether each side has at most one run per seed; if not, a line in ``view.refused`` says which seeds."""
    shared = sorted({seed for (_, seed), count in Counter((r["method"], r["seed"]) for r in runs).items()
                     if count > 1})
    if shared:
        view.refused.append(f"{method} at {fraction}: several runs of one side share seeds {shared} (a sweep's "
                            "trials?), so they cannot be paired by seed; report each variant's runs on their own")
    return not shared


def _compare(view: PairedView, method: str, baseline: str, fraction: str, paired: list[pairs.Pair],
             allow_mixed: bool, all_labels: list[dict]) -> None:
    """Add one comparison to ``view``: its record and section, or the lines that say why pairs were refused."""
    paired, differing = pairs.keep_same_code(paired, allow_mixed, unrecorded_match=True)
    if not allow_mixed:
        view.refused += [pairs.refusal(r, b, lambda run: run["run_dir"], f"{REMEDY}, or pass --allow-mixed-code to "
                                       "pair them anyway (the table then flags it)") for r, b in differing]
    if not paired:
        return
    record = pairs.comparison_record({"method": method, "baseline": baseline, "fraction": fraction}, paired,
                                     ("code_version", "run_dir"))
    record["mixed_code"] = bool(differing) and allow_mixed
    view.records.append(record)
    view.lines += [f"## {method} against {baseline}, labels {fraction}", ""] + tables.comparison_table(
        record, paired, remedy=REMEDY, unrecorded_match=True, all_labels=all_labels,
        all_labels_name=f"{baseline} with every label")


def write_paired_view(view: PairedView, out: Path) -> list[Path]:
    """``out/paired.md`` (the page) and ``out/paired.json`` (the records) of a view with comparisons; none of a
    view without any."""
    from raysemi.atomic import write_text

    if not view.records:
        return []
    files = [out / "paired.md", out / "paired.json"]
    write_text(files[0], "\n".join(view.lines))
    runs.write_records(files[1], view.records)
    return files
