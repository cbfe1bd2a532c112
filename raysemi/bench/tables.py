"""Markdown tables of paired comparisons (:mod:`raysemi.bench.pairs`): per seed, per class, and the notes that
say when a difference should not be read yet (different code versions, devices or processors).

mIoU and IoU print as fractions with 4 decimals; differences as points (×100) with one; ``-`` stands for a
missing value.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from raysemi.bench.pairs import (
    TAIL_EVALUATIONS,
    Pair,
    difference_text,
    differing_seeds,
    gap_closed,
    mean_of,
    per_class_changes,
    same_code,
    tail_miou,
)

LEVELLED_TOLERANCE = 0.01  # a curve has levelled off when its last quarter stays within ±1 point


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def seed_table(pairs: Sequence[Pair], speed: bool = False) -> list[str]:
    """Per seed both mIoUs and their difference (points); where every run has a curve of at least
    :data:`~raysemi.bench.pairs.TAIL_EVALUATIONS` evaluations, the difference of their tail means too; with
    ``speed`` both sides' ``it_per_s``."""
    tails = has_tails(pairs)
    columns = [f" difference of the last {TAIL_EVALUATIONS} evaluations' means |" if tails else "",
               " baseline it/s | method it/s |" if speed else ""]
    lines = ["| seed | baseline mIoU | method mIoU | difference (points) |" + "".join(columns),
             "|---|---|---|---|" + "---|" * (tails + 2 * speed)]
    for r, b in pairs:
        m, bm = r["val_miou"], b["val_miou"]
        tail = f" {100 * (tail_miou(r) - tail_miou(b)):+.1f} |" if tails else ""
        its = f" {fmt(b['it_per_s'], 2)} | {fmt(r['it_per_s'], 2)} |" if speed else ""
        lines.append(f"| {r['seed']} | {bm:.4f} | {m:.4f} | {100 * (m - bm):+.1f} |" + tail + its)
    return lines


def has_tails(pairs: Sequence[Pair]) -> bool:
    """Whether every run of ``pairs`` has a tail mean (:func:`~raysemi.bench.pairs.tail_miou`)."""
    return all(tail_miou(run) is not None for pair in pairs for run in pair)


def cost_text(record: dict, pairs: Sequence[Pair]) -> str:
    """Both sides' total iterations (the record's ``*_runs``) and mean training time, and how many times the
    baseline's it/s the method's time per iteration is."""
    ratios = [b["it_per_s"] / r["it_per_s"] for r, b in pairs if r["it_per_s"] and b["it_per_s"]]
    totals = record["method_runs"]["total_iterations"][0], record["baseline_runs"]["total_iterations"][0]
    return (f"{totals[0]:,} iterations in all against {totals[1]:,} (training time "
            f"{statistics.mean(r['train_time_s'] for r, _ in pairs):.0f} s against "
            f"{statistics.mean(b['train_time_s'] for _, b in pairs):.0f} s, summed over stages"
            + (f"; time per iteration {statistics.mean(ratios):.2f}× the baseline's)." if ratios else ")."))


def per_class_table(pairs: Sequence[Pair], all_labels: Sequence[dict] = (),
                    all_labels_name: str = "supervised_all_labels") -> list[str]:
    """Mean per-class IoU of the baseline and the method over the paired seeds, and their difference; with
    ``all_labels`` (runs of the same setting trained on every label, any seeds; named ``all_labels_name``) their
    mean IoU too, the reference that says which classes full supervision itself finds."""
    extra = (" all labels IoU |", "---|") if all_labels else ("", "")
    lines = ["| class | baseline IoU | method IoU | difference |" + extra[0], "|---|---|---|---|" + extra[1]]
    for name, (base, method) in per_class_changes(pairs).items():
        diff = f"{100 * (method - base):+.1f}" if method is not None and base is not None else "-"
        reference = f" {fmt(mean_of([a['per_class_iou'].get(name) for a in all_labels]))} |" if all_labels else ""
        lines.append(f"| {name} | {fmt(base)} | {fmt(method)} | {diff} |{reference}")
    if all_labels:
        lines += ["", f"All labels: {all_labels_name}, mean of seeds {sorted(a['seed'] for a in all_labels)}."]
    return lines


def code_notes(pairs: Sequence[Pair], remedy: str, unrecorded_match: bool = False) -> list[str]:
    """A flag over the seeds whose two runs recorded different code versions (paired anyway), saying what to
    do (``remedy``), and with ``unrecorded_match`` a line saying when no run recorded its code version."""
    mixed = [r["seed"] for r, b in pairs if not same_code(r, b, unrecorded_match)]
    lines = [f"**Seeds {mixed} compare runs of different code versions** (each run's `code_version`; paired with "
             f"--allow-mixed-code): {remedy} before reading the difference.", ""] if mixed else []
    unrecorded = [r["seed"] for r, b in pairs if not (r.get("code_version") or b.get("code_version"))]
    if unrecorded_match and unrecorded:
        lines += [f"Code version: not recorded by the runs of seeds {unrecorded} (no `code_version` in their "
                  "summary.json or beside their run directory), so nothing checks that both sides ran the same code.",
                  ""]
    return lines


def comparison_table(record: dict, pairs: Sequence[Pair], *, remedy: str, notes: Sequence[str] = (),
                     speed: bool = False, unrecorded_match: bool = False, all_labels: Sequence[dict] = (),
                     all_labels_name: str = "supervised_all_labels") -> list[str]:
    """A comparison's tables: per seed (:func:`seed_table`), the mean ± std of the differences (with ``speed``
    both sides' iterations and time, :func:`cost_text`), ``notes``, the flags (different code versions,
    devices), a weak-shot record's group table and the per-class table."""
    tail = (f" Over the mean of each run's last {TAIL_EVALUATIONS} evaluations (a check on the last one's noise): "
            f"{difference_text(record, 'tail_')}.") if has_tails(pairs) and "tail_miou" in record else ""
    lines = seed_table(pairs, speed) + [
        "", f"Difference: **{difference_text(record)}** (mean ± std over {len(pairs)} paired seeds)"
        + (f"; {cost_text(record, pairs)}" if speed else ".") + tail, "", *notes]
    lines += code_notes(pairs, remedy, unrecorded_match) + machine_notes(pairs)
    return lines + weak_shot_table(record) + per_class_table(pairs, all_labels, all_labels_name) + [""]


def machine_notes(pairs: Sequence[Pair]) -> list[str]:
    """Flags over the seeds whose two runs trained on different devices (a run that records no ``device`` trained
    on the CPU) and over those whose runs both record a ``machine`` (processor and the instruction set its kernels
    use) and differ in it. A run from before the ``machine`` field is not flagged: its processor is unknown."""
    devices = differing_seeds(pairs, "device", default="cpu")
    processors = differing_seeds([(r, b) for r, b in pairs if r.get("machine") and b.get("machine")], "machine")
    return (seed_flag(devices, "devices", "device", "run both on one device before reading the difference.")
            + seed_flag(processors, "processors", "machine", "one code version and seed trains differently where "
                        "the CPU kernels differ; run both on one machine before reading the difference."))


def seed_flag(seeds: list[int], differ_in: str, field: str, remedy: str) -> list[str]:
    """A bold line saying that ``seeds`` compare runs on different ``differ_in`` (each run's ``field``), and
    ``remedy``; nothing for no seed."""
    return [f"**Seeds {seeds} compare runs on different {differ_in}** (see each run's `{field}`): {remedy}",
            ""] if seeds else []


def weak_shot_table(record: dict) -> list[str]:
    """A weak-shot record's (``full`` against ``basic``) base and novel mIoU per seed beside the oracle's, and the
    share of the basic → oracle novel gap closed (each seed's, their mean, and that of the mean mIoUs); nothing
    for a record without ``oracle_novel_miou``."""
    if "oracle_novel_miou" not in record:
        return []
    columns = ("baseline_base_miou", "base_miou", "baseline_novel_miou", "novel_miou", "oracle_novel_miou")
    lines = ["| seed | basic base mIoU | full base mIoU | basic novel mIoU | full novel mIoU | oracle novel mIoU | "
             "share of the gap closed |", "|---|---|---|---|---|---|---|"]
    shares = []
    for i, seed in enumerate(record["seeds"]):
        values = [record[c][i] for c in columns]
        shares.append(gap_closed(*values[2:]))
        lines.append(f"| {seed} | " + " | ".join(fmt(v) for v in values) + f" | {fmt(shares[-1], 2)} |")
    base_diff = statistics.mean(m - b for m, b in zip(record["base_miou"], record["baseline_base_miou"]))
    return lines + ["", f"Share of the basic → oracle novel gap closed: **{fmt(mean_of(shares), 2)}** "
                    f"(mean over the seeds with an oracle run), {fmt(gap_of_means(record), 2)} "
                    f"for the mean mIoUs; base mIoU full − basic {100 * base_diff:+.1f} points.", ""]


def gap_of_means(record: dict) -> float | None:
    """The share of the gap closed by the mean novel mIoUs, over the seeds with an oracle run."""
    kept = [i for i, o in enumerate(record["oracle_novel_miou"]) if o is not None]
    means = [statistics.mean(record[c][i] for i in kept) for c in
             ("baseline_novel_miou", "novel_miou", "oracle_novel_miou")] if kept else []
    return gap_closed(*means) if means else None


def curve_table(runs: Sequence[dict]) -> list[str]:
    """Each run's val-mIoU curve (``curve``: ``[[step, mIoU], ...]``) and final mIoU, by budget and seed, and
    whether it levelled off (:func:`levelled_off`)."""
    lines = ["| iterations | seed | final mIoU | val mIoU along the run | levelled (last quarter within ±1 point) |",
             "|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["iterations"], r["seed"])):
        curve = " ".join(f"{step}:{miou:.3f}" for step, miou in r["curve"])
        lines.append(f"| {r['iterations']} | {r['seed']} | {r['val_miou']:.4f} | {curve} "
                     f"| {'yes' if levelled_off(r['curve']) else 'no'} |")
    return lines


def levelled_off(curve: list[list[float]], tolerance: float = LEVELLED_TOLERANCE) -> bool:
    """The evaluations in the last quarter of the run lie within ± ``tolerance`` of their midpoint (a band of
    2 × ``tolerance``): no trend left larger than the evaluation's own noise."""
    if not curve:
        return False
    last = [miou for step, miou in curve if step >= 0.75 * curve[-1][0]]
    return max(last) - min(last) <= 2 * tolerance + 1e-9
