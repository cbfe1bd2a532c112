"""Figures a document quotes from comparison records, filled in so they cannot drift from the results.

A quoted figure is a marker ``<!-- gain:NAME[#FIELD] -->TEXT<!-- /gain -->``: NAME a comparison record's
``name``, FIELD what of it (:data:`QUOTE_FIELDS`; none: the mean ± std of the paired differences, in points),
or NAME a repeatability record's (``p2/supervised-seed0-repeatability``) and FIELD one of
:data:`REPEAT_FIELDS`. :func:`fill_quotes` rewrites every TEXT from the records.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from pathlib import Path

from raysemi.bench.pairs import TAIL_EVALUATIONS, difference_text, gap_closed, mean_of
from raysemi.bench.tables import fmt, gap_of_means

QUOTE = re.compile(r"<!-- gain:(?P<key>[^ ]+) -->(?P<text>.*?)<!-- /gain -->")


def _gap_shares(record: dict) -> list[float | None]:
    return [gap_closed(b, m, o) for b, m, o in zip(record["baseline_novel_miou"], record["novel_miou"],
                                                   record["oracle_novel_miou"])]


def _novel_headroom(record: dict) -> list[float | None]:
    """Each seed's oracle − baseline novel mIoU (None without an oracle run): what the novel masks add, the most a
    weak-shot method can gain on the novel classes."""
    return [None if o is None else o - b for o, b in zip(record["oracle_novel_miou"], record["baseline_novel_miou"])]


def _diffs(record: dict, prefix: str = "") -> list[float]:
    return [m - b for m, b in zip(record[f"{prefix}miou"], record[f"baseline_{prefix}miou"])]


def _signed_points(value: float | None) -> str:
    """A difference in mIoU as signed points (``+5.3``); ``-`` for None."""
    return "-" if value is None else f"{100 * value:+.1f}"


def _points(record: dict, prefix: str = "") -> list[str]:
    """Each seed's ``{prefix}miou`` difference, in signed points."""
    return [_signed_points(d) for d in _diffs(record, prefix)]


def _with_tails(record: dict) -> dict:
    """``record``, checked to hold a tail mean (:func:`raysemi.bench.pairs.tail_mious`) for every run."""
    if None in record.get("tail_miou", [None]) + record.get("baseline_tail_miou", [None]):
        raise ValueError(f"record {record['name']} has a run without a tail mean (a curve of fewer than "
                         f"{TAIL_EVALUATIONS} evaluations, or a summary.json from before the field)")
    return record


def _mean_points(record: dict, prefix: str) -> str:
    return _signed_points(statistics.mean(_diffs(record, prefix)))


# Each field's figures per seed (a list; its name ends in "seeds"), or its one figure (a string)
QUOTE_FIELDS: dict[str, Callable[[dict], str | list[str]]] = {
    "": lambda r: difference_text(r).removesuffix(" points"),
    "seeds": _points,
    "n": lambda r: str(len(r["seeds"])),
    "miou": lambda r: f"{statistics.mean(r['miou']):.3f}",
    "baseline-miou": lambda r: f"{statistics.mean(r['baseline_miou']):.3f}",
    "gap": lambda r: fmt(mean_of(_gap_shares(r)), 2),
    "gap-seeds": lambda r: [fmt(v, 2) for v in _gap_shares(r)],
    "gap-means": lambda r: fmt(gap_of_means(r), 2),
    "base": lambda r: _mean_points(r, "base_"),
    "base-seeds": lambda r: _points(r, "base_"),
    "novel": lambda r: _mean_points(r, "novel_"),
    "novel-seeds": lambda r: _points(r, "novel_"),
    "tail": lambda r: difference_text(_with_tails(r), "tail_").removesuffix(" points"),  # TAIL_EVALUATIONS
    "tail-seeds": lambda r: _points(_with_tails(r), "tail_"),
    "headroom": lambda r: _signed_points(mean_of(_novel_headroom(r))),
    "headroom-seeds": lambda r: [_signed_points(v) for v in _novel_headroom(r)],
    "code": lambda r: "mixed code versions" if r.get("mixed_code") else "one code version",
}


# A repeatability record's figures (:mod:`raysemi.bench.repeats`): runs a, b at one thread count, c at another
REPEAT_FIELDS: dict[str, Callable[[dict], str]] = {
    "same-threads": lambda r: _signed_points(r["same_threads_diff"]),
    "other-threads": lambda r: _signed_points(r["other_threads_diff"]),
    "miou": lambda r: " / ".join(f"{m:.4f}" for m in r["miou"]),
    "threads": lambda r: " / ".join(map(str, r["torch_threads"])),
}


def _quoted_repeat(field: str, record: dict) -> str:
    if field not in REPEAT_FIELDS:
        raise ValueError(f"#{field} is not a repeatability quote field; choose one of {', '.join(REPEAT_FIELDS)}")
    return REPEAT_FIELDS[field](record)


def quoted(key: str, records: dict[str, dict]) -> str:
    """The text of the quote ``key``: ``NAME``, ``NAME#FIELD``, or for a per-seed field one seed's figure
    (``NAME#seed1``, ``NAME#gap-seed2``, ``NAME#base-seed0``, ``NAME#novel-seed1``); for a repeatability record
    ``NAME#FIELD`` of :data:`REPEAT_FIELDS`. ValueError naming what is missing."""
    name, _, field = key.partition("#")
    if name not in records:
        raise ValueError(f"no summary.json record named {name}")
    record = records[name]
    if record.get("kind") == "repeatability":
        return _quoted_repeat(field, record)
    one_seed = re.fullmatch(r"(?P<field>(?:\w+-)?seed)(?P<seed>\d+)", field)
    if one_seed:
        field = one_seed["field"] + "s"
        if int(one_seed["seed"]) not in record["seeds"]:
            raise ValueError(f"record {name} has no seed {one_seed['seed']} (seeds {record['seeds']})")
    if field not in QUOTE_FIELDS:
        fields = ", ".join(f for f in QUOTE_FIELDS if f)
        one_seed_fields = ", ".join(f"{f[:-1]}S" for f in QUOTE_FIELDS if f.endswith("seeds"))
        raise ValueError(f"#{field} is not a quote field; choose one of {fields}, or {one_seed_fields}")
    try:
        value = QUOTE_FIELDS[field](record)
    except KeyError as missing:
        raise ValueError(f"record {name} has no {missing} (not a weak-shot record)") from None
    if one_seed:
        return value[record["seeds"].index(int(one_seed["seed"]))]
    return " / ".join(value) if isinstance(value, list) else value


def quotable(records: list[dict]) -> dict[str, dict]:
    """The comparison and repeatability records of ``records``, by ``name``."""
    return {r["name"]: r for r in records if r.get("kind") in ("comparison", "repeatability") and "name" in r}


def fill_quotes(text: str, records: list[dict]) -> tuple[str, list[str]]:
    """``text`` with every quote set from ``records`` (the comparison ones, by ``name``), and one line per quote
    that cannot be (left as it was)."""
    by_name = quotable(records)
    problems = []

    def fill(match: re.Match) -> str:
        try:
            return f"<!-- gain:{match['key']} -->{quoted(match['key'], by_name)}<!-- /gain -->"
        except ValueError as error:
            problems.append(f"gain:{match['key']}: {error}")
            return match[0]

    return QUOTE.sub(fill, text), problems


def fill_document(path: Path, records: list[dict]) -> list[str]:
    """Fill ``path``'s quotes from ``records`` in place (a missing document is skipped); the lines
    ``<path>: <problem>`` of the quotes that could not be filled (left as they were)."""
    from raysemi.atomic import write_text

    if not path.is_file():
        return []
    text = path.read_text()
    filled, problems = fill_quotes(text, records)
    if filled != text:
        write_text(path, filled)
    return [f"{path}: {problem}" for problem in problems]
