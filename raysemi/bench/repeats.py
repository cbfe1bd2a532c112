"""Repeatability: one (protocol, variant, seed) trained three times at one code version, ``a`` and ``b`` at one
torch thread count and ``c`` at another, to measure the run-to-run difference a paired difference sits in.

A repeatability run is a run record (:mod:`raysemi.bench.pairs`) with ``repeat`` (``repeat-a`` …), ``protocol``,
``iterations``, ``split``, ``torch_threads`` and ``curve`` (``[[step, val mIoU], ...]``).
"""

from __future__ import annotations

REPEATS = ("a", "b", "c")  # a and b at one thread count, c at another


def repeat_of(run: dict) -> str:
    """Which repeat (``a``, ``b``, ``c``) a repeatability run is, from its ``repeat`` field."""
    return run["repeat"].removeprefix("repeat-")


def repeatability_records(runs: list[dict]) -> list[dict]:
    """One ``repeatability`` record per (protocol, variant, seed, iterations, split, code version) whose three
    runs exist: their mIoUs, thread counts, ``same_threads_diff`` (b − a), ``other_threads_diff`` (c − a) and
    whether a and b logged the same val curve."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in runs:
        key = (r["protocol"], r["method"], r["seed"], r["iterations"], r["split"], r.get("code_version"))
        groups.setdefault(key, {})[repeat_of(r)] = r
    records = []
    for (protocol, method, seed, iterations, split, version), group in sorted(groups.items(), key=str):
        if set(group) != set(REPEATS):
            continue
        a, b, c = (group[name] for name in REPEATS)
        records.append({
            "kind": "repeatability", "protocol": protocol, "method": method, "seed": seed,
            "iterations": iterations, "split": split, "commit": a.get("commit"), "code_version": version,
            "device": a.get("device", "cpu"), "torch_threads": [r.get("torch_threads") for r in (a, b, c)],
            "miou": [r["val_miou"] for r in (a, b, c)],
            "same_threads_diff": round(b["val_miou"] - a["val_miou"], 4),
            "other_threads_diff": round(c["val_miou"] - a["val_miou"], 4),
            "same_threads_same_curve": a["curve"] == b["curve"],
        })
    return records


def repeatability_section(records: list[dict]) -> list[str]:
    """A Markdown section of ``records`` (nothing without any): per record the three mIoUs and both differences
    in points."""
    if not records:
        return []
    lines = ["### Repeatability: one (variant, seed) three times at one code version", "",
             "| variant | seed | device | torch threads | mIoU | b − a (same threads) | c − a (other threads) | "
             "a and b: same curve |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['method']} | {r['seed']} | {r['device']} | {' / '.join(map(str, r['torch_threads']))} "
                     f"| {' / '.join(f'{m:.4f}' for m in r['miou'])} | {100 * r['same_threads_diff']:+.2f} "
                     f"| {100 * r['other_threads_diff']:+.2f} | {'yes' if r['same_threads_same_curve'] else 'no'} |")
    return lines + [""]


def spread_note(record: dict) -> list[str]:
    """The run-to-run difference at a fixed seed, as a paired comparison quotes it beside its differences."""
    return [f"Run-to-run difference at a fixed seed (repeatability, {record['method']} seed {record['seed']}): "
            f"{100 * record['same_threads_diff']:+.1f} points at one thread count, "
            f"{100 * record['other_threads_diff']:+.1f} at another.", ""]
