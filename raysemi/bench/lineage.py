"""Code versions shown to train identically, so that an edit of the training code that changes no number keeps a
benchmark's finished runs comparable with new ones.

A code version (:mod:`raysemi.bench.versions`) changes with any edit of the training code, a comment included,
and runs of two versions are never paired. An edit that changes no number (a refactor, a docstring, a code path
no protocol takes) is shown to be one by rerunning a finished run at the new version: when every number its record
holds comes out the same (:data:`COMPARED`, and the loss at every logged step where the recorded run's directory
is still there), the suite's ``equivalent_versions.json`` gets an entry ``version → same_as``. A version's
*lineage* is then the earliest version it was shown to equal (:func:`lineage`); pairing
(:func:`raysemi.bench.pairs.same_code`) and staleness (:meth:`raysemi.bench.store.RunStore.result`) compare
lineages.

One rerun checks one path through the code: the entry names the run that was checked, and the run to check is
one that executes what the edit touched (a method's file: that method's run).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from raysemi.errors import RaysemiError
from raysemi.tracking import read_metrics

FILE = "equivalent_versions.json"  # beside a suite's run JSONs: a list of entries, oldest first
ENTRY_KEYS = ("protocol", "version", "same_as", "run", "compared", "commit", "date")
# What a rerun must reproduce exactly: every number of the record that training produced (not its timings).
COMPARED = ("val_miou", "per_class_iou", "curve", "total_iterations", "torch_threads", "speed")


class NotSameCode(RaysemiError):
    """A rerun at the new code version did not reproduce the recorded run."""


def load(path: Path) -> dict[str, str]:
    """``version → same_as`` from the entries in ``path`` (none when it does not exist); a malformed file is a
    one-line :class:`RaysemiError` naming it and what an entry holds."""
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
        return {e["version"]: e["same_as"] for e in entries}
    except (ValueError, TypeError, KeyError) as error:
        raise RaysemiError(f"{path}: not a list of entries with keys {', '.join(ENTRY_KEYS)} "
                           f"({type(error).__name__}: {error})") from None


def lineage(version: str | None, same_as: dict[str, str]) -> str | None:
    """The earliest version ``version`` was shown to train identically to, following ``same_as`` (itself when
    it has no entry; None stays None)."""
    seen = set()
    while version in same_as and version not in seen:
        seen.add(version)
        version = same_as[version]
    return version


def with_lineage(runs: Iterable[dict], same_as: dict[str, str]) -> list[dict]:
    """``runs`` with ``code_lineage`` set on each whose ``code_version`` has an earlier equal."""
    out = []
    for run in runs:
        root = lineage(run.get("code_version"), same_as)
        out.append({**run, "code_lineage": root} if root != run.get("code_version") else run)
    return out


def compare(recorded: dict, rerun: dict, recorded_dir: Path | None = None,
            rerun_dir: Path | None = None) -> tuple[str | None, list[str]]:
    """The first number ``rerun`` does not reproduce from ``recorded``, as ``<field>: <recorded> then <rerun>``
    (None when all agree), and what was compared: :data:`COMPARED`, the group mIoUs (``miou_*``) and, where both
    run directories are given and hold a ``metrics.jsonl``, the loss at every logged step (``losses``)."""
    compared = [*COMPARED, *sorted({k for k in (*recorded, *rerun) if k.startswith("miou_")})]
    for field in compared:
        if recorded.get(field) != rerun.get(field):
            return f"{field}: {recorded.get(field)} then {rerun.get(field)}", compared
    if recorded_dir and rerun_dir and (recorded_dir / "metrics.jsonl").is_file() \
            and (rerun_dir / "metrics.jsonl").is_file():
        compared.append("losses")
        recorded_losses, rerun_losses = _losses(recorded_dir), _losses(rerun_dir)
        for (step, a), (_, b) in zip(recorded_losses, rerun_losses):
            if a != b:
                return f"loss at step {step}: {a} then {b}", compared
        if len(recorded_losses) != len(rerun_losses):
            return f"logged losses: {len(recorded_losses)} then {len(rerun_losses)}", compared
    return None, compared


def add(path: Path, protocol: str, version: str, same_as: str, run: str, compared: list[str],
        commit: str) -> dict:
    """Append the entry ``version → same_as`` (``run``: the record rerun; ``compared``: what agreed) to
    ``path``, written atomically; the entry."""
    from raysemi.atomic import write_json

    entries = json.loads(path.read_text()) if path.is_file() else []
    entry = dict(zip(ENTRY_KEYS, (protocol, version, same_as, run, compared, commit, time.strftime("%Y-%m-%d"))))
    write_json(path, [*entries, entry])
    return entry


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]
