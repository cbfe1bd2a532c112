"""Paired comparisons: a method's runs against a baseline's, paired by seed, as records and differences.

A *run record* is a dict that describes one finished run: ``method``, ``seed``, ``val_miou`` (a fraction, 0–1),
``per_class_iou`` (``{class: IoU or None}``) and, where known, ``code_version``, ``commit``, ``device``,
``it_per_s``, ``train_time_s`` (seconds), ``total_iterations``, per-group mIoUs ``miou_<group>`` and
``code_lineage`` (the earlier version its code was shown to equal, :mod:`raysemi.bench.lineage`). The
benchmark's run JSONs are such records, and ``raysemi report`` makes one of every run it finds.

Two runs pair when they share a seed (:func:`pair_by_seed`) and ran the same code (:func:`same_code`); a
comparison's record (:func:`comparison_record`) holds, in seed order, both sides' mIoUs and the mean and sample
standard deviation of the paired differences ``miou − baseline_miou``.

The headline mIoU is the last evaluation's. Where a curve swings between evaluations 100 steps apart, one
evaluation is a noisy reading, so :func:`tail_mious` adds each side's mean over the last
:data:`TAIL_EVALUATIONS` evaluations of its curve (a fixed rule, the same for every comparison, that picks no
evaluation by its score): a check on the headline, never a replacement for it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence

Pair = tuple[dict, dict]  # (method run, baseline run) of one seed
TAIL_EVALUATIONS = 3  # the evaluations the tail mean covers: P1's and P2's last 3 are steps 800, 900 and 1,000


def pair_by_seed(runs: Iterable[dict], baselines: Iterable[dict],
                 compatible: Callable[[dict, dict], bool] | None = None) -> list[Pair]:
    """``(run, baseline)`` for each seed of ``runs`` that a baseline run has too (and, given ``compatible``, for
    which ``compatible(run, baseline)`` holds), in seed order. Each side holds at most one run per seed."""
    by_seed = {b["seed"]: b for b in baselines}
    pairs = [(r, by_seed[r["seed"]]) for r in runs if r["seed"] in by_seed]
    return sorted((p for p in pairs if compatible is None or compatible(*p)), key=lambda pair: pair[0]["seed"])


def same_code(run: dict, baseline: dict, unrecorded_match: bool = False) -> bool:
    """Whether two runs recorded the same ``code_version``, or versions shown to train identically (their
    ``code_lineage``, :mod:`raysemi.bench.lineage`). A run that records none ran unknown code: it matches
    nothing, or, with ``unrecorded_match``, another run that records none (runs that never record a version)."""
    mine, theirs = (r.get("code_lineage") or r.get("code_version") for r in (run, baseline))
    if not mine and not theirs:
        return unrecorded_match
    return bool(mine) and mine == theirs


def keep_same_code(pairs: list[Pair], allow_mixed: bool = False,
                   unrecorded_match: bool = False) -> tuple[list[Pair], list[Pair]]:
    """The pairs to compare and those whose code versions differ: the latter are left out of the former unless
    ``allow_mixed`` (the tables then flag them, :func:`raysemi.bench.tables.mixed_code_note`)."""
    differing = [p for p in pairs if not same_code(*p, unrecorded_match)]
    kept = pairs if allow_mixed else [p for p in pairs if same_code(*p, unrecorded_match)]
    return kept, differing


def refusal(run: dict, baseline: dict, label: Callable[[dict], str], remedy: str) -> str:
    """One line saying that ``run`` and ``baseline`` (named by ``label``) were not paired, their code versions
    (``unknown`` where not recorded), and ``remedy``: what to do."""
    return (f"refused to pair {label(run)} (code {run.get('code_version') or 'unknown'}) with {label(baseline)} "
            f"(code {baseline.get('code_version') or 'unknown'}): {remedy}")


def comparison_record(identity: dict, pairs: Sequence[Pair], side_fields: Sequence[str] = ()) -> dict:
    """A comparison's record: ``{"kind": "comparison", **identity, "seeds", "miou", "baseline_miou", "diff_mean",
    "diff_std", "method_runs", "baseline_runs"}``; lists in seed order, ``diff_*`` of the differences rounded to 4
    places (std: the sample one, 0 for one seed); ``*_runs`` each side's ``variant`` and per-seed values of
    ``side_fields`` (None where a run lacks one)."""
    miou = [r["val_miou"] for r, _ in pairs]
    baseline_miou = [b["val_miou"] for _, b in pairs]
    diffs = [m - b for m, b in zip(miou, baseline_miou)]
    return {
        "kind": "comparison", **identity, "seeds": [r["seed"] for r, _ in pairs], "miou": miou,
        "baseline_miou": baseline_miou, "diff_mean": round(statistics.mean(diffs), 4),
        "diff_std": round(statistics.stdev(diffs), 4) if len(diffs) > 1 else 0.0,
        "method_runs": side_of([r for r, _ in pairs], side_fields),
        "baseline_runs": side_of([b for _, b in pairs], side_fields),
    }


def side_of(runs: Sequence[dict], fields: Sequence[str]) -> dict:
    """One side of a comparison: its ``variant`` (the first run's method) and each of ``fields`` per run."""
    return {"variant": runs[0]["method"], **{name: [r.get(name) for r in runs] for name in fields}}


def group_mious(pairs: Sequence[Pair], oracles: Sequence[dict | None] = ()) -> dict:
    """For each group mIoU the method's runs carry (``miou_<group>``, e.g. novel and base classes), the lists
    ``<group>_miou`` and ``baseline_<group>_miou`` in seed order, and with ``oracles`` (each seed's oracle run, or
    None) ``oracle_<group>_miou``."""
    lists = {}
    for group in sorted({k for r, _ in pairs for k in r if k.startswith("miou_")}):
        name = group.removeprefix("miou_")
        lists[f"{name}_miou"] = [r.get(group) for r, _ in pairs]
        lists[f"baseline_{name}_miou"] = [b.get(group) for _, b in pairs]
        if oracles:
            lists[f"oracle_{name}_miou"] = [o.get(group) if o else None for o in oracles]
    return lists


def tail_miou(run: dict) -> float | None:
    """The mean val mIoU of the run's last :data:`TAIL_EVALUATIONS` evaluations (its ``curve``, ``[[step,
    miou], ...]``, mIoUs as the run JSON rounds them to 4 places); None for a shorter or missing curve."""
    curve = run.get("curve") or []
    return statistics.mean(miou for _, miou in curve[-TAIL_EVALUATIONS:]) if len(curve) >= TAIL_EVALUATIONS else None


def tail_mious(pairs: Sequence[Pair]) -> dict:
    """``tail_miou`` and ``baseline_tail_miou``: each side's :func:`tail_miou` in seed order (None where a curve
    is too short)."""
    return {"tail_miou": [tail_miou(r) for r, _ in pairs], "baseline_tail_miou": [tail_miou(b) for _, b in pairs]}


def difference_text(record: dict, prefix: str = "") -> str:
    """"+a ± b points": the mean ± sample std of the paired differences ×100 of ``{prefix}miou`` and
    ``baseline_{prefix}miou`` (``tail_``: :func:`tail_mious`), from the unrounded mIoUs (the record's rounded
    ``diff_mean`` can print a tenth apart from the per-seed rows)."""
    diffs = [100 * (m - b) for m, b in zip(record[f"{prefix}miou"], record[f"baseline_{prefix}miou"])]
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return f"{statistics.mean(diffs):+.1f} ± {spread:.1f} points"


def per_class_changes(pairs: Sequence[Pair]) -> dict[str, tuple[float | None, float | None]]:
    """Each class's mean IoU over the paired seeds, ``(baseline, method)``; a seed whose IoU is None (the class
    absent from its evaluation) is left out of that mean, and a class absent everywhere is None."""
    classes = list(pairs[0][0]["per_class_iou"])
    return {name: (mean_of([b["per_class_iou"].get(name) for _, b in pairs]),
                   mean_of([r["per_class_iou"].get(name) for r, _ in pairs])) for name in classes}


def differing_seeds(pairs: Sequence[Pair], field: str, default: str | None = None) -> list[int]:
    """The seeds whose method run and baseline run differ in ``field`` (``default`` where a run lacks it)."""
    return [r["seed"] for r, b in pairs if r.get(field, default) != b.get(field, default)]


def gap_closed(basic: float, method: float, oracle: float | None) -> float | None:
    """The share of the basic → oracle gap that ``method`` closes (None without an oracle above ``basic``)."""
    return None if oracle is None or oracle <= basic else (method - basic) / (oracle - basic)


def mean_of(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None (None when none is)."""
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None
