"""A benchmark suite's outputs: its planned comparisons over its run records, as ``summary.json`` records and a
README of paired tables.

A suite's run records (:mod:`raysemi.bench.pairs`) also carry ``protocol``, ``iterations`` (the budget),
``overrides`` (an ablation's, a list), ``split`` (``report`` or ``selection``), ``baseline`` (the one its command
named, or None) and ``curve`` (``[[step, val mIoU], ...]``). The suite says, in a :class:`Plan`, which baselines
each method must beat; a comparison pairs a method's runs of one (protocol, budget, overrides, split) with the
baseline's plain runs of the same protocol and split, at the same budget or, for a chained method
(``at_total``), at the method's total iterations. On the selection split an ablation also faces the method's
own plain runs: the difference a choice is made on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from raysemi.bench import lineage, pairs, quotes, repeats, runs, tables

# each comparison side's per-seed values that its record keeps
SIDE_FIELDS = ("commit", "code_version", "machine", "total_iterations", "train_time_s")


@dataclass(frozen=True)
class Comparison:
    """A method against a baseline. ``at_total``: the baseline trains the method's total iterations (the sum
    over a chained method's stages), not the budget the method was given."""

    method: str
    baseline: str
    at_total: bool = False


@dataclass(frozen=True)
class Plan:
    """What a suite defines, as its outputs need it: ``planned`` (a method → the comparisons it must win),
    ``total_iterations`` (a variant and its budget → what it trains in all), ``protocol_budget`` (a protocol →
    its own budget, None for one the suite does not define), ``refusal`` (two runs of different code → the line
    that says so and what to do), ``oracles`` (a method → the variant whose run of the same seed its record
    quotes beside it), ``headroom`` (the variant that labels every image: the per-class reference),
    ``baseline`` (the variant whose val curves the README shows by budget) and ``remedy`` (what to do about a
    pair of different code versions, as the tables say it)."""

    planned: Callable[[str], list[Comparison]]
    total_iterations: Callable[[str, int], int]
    protocol_budget: Callable[[str], int | None]
    refusal: Callable[[dict, dict], str]
    oracles: Mapping[str, str] = field(default_factory=dict)
    headroom: str = "supervised_all_labels"
    baseline: str = "supervised"
    remedy: str = "rerun the stale side (`--rerun-stale`)"


@dataclass
class Paired:
    """A comparison's record and its ``(method run, baseline run)`` pairs in seed order."""

    record: dict
    pairs: list[pairs.Pair]


def baseline_budget(comparison: Comparison, iterations: int, total_iterations: Callable[[str, int], int]) -> int:
    """The budget the baseline of ``comparison`` trains when the method's is ``iterations``."""
    return total_iterations(comparison.method, iterations) if comparison.at_total else iterations


def baselines_to_run(plan: Plan, known: set[str], variants: list[str], iterations: int,
                     baseline: str | None = None) -> list[tuple[str, int]]:
    """The ``(baseline variant, budget)`` runs that ``variants`` at ``iterations`` are compared with: ``baseline``
    and the planned ones among the ``known`` variants, each once, in plan order. A planned ``<method>_control`` is
    not among them: it is a variant of the method, run when asked for as one of ``variants``."""
    wanted = [(baseline, iterations)] if baseline else []
    for variant in variants:
        for comparison in plan.planned(variant):
            if comparison.baseline in known and comparison.baseline not in variants \
                    and not comparison.baseline.endswith("_control"):
                wanted.append((comparison.baseline, baseline_budget(comparison, iterations, plan.total_iterations)))
    return list(dict.fromkeys(wanted))


def record_line(record: dict) -> str:
    """A record in one line, for the terminal: a comparison's name, seeds and mean ± std difference; a
    repeatability record's three mIoUs and the differences at the same and at the other thread count (points)."""
    if record["kind"] == "comparison":
        return f"{record['name']} (seeds {record['seeds']}): {pairs.difference_text(record)}"
    same, other = 100 * record["same_threads_diff"], 100 * record["other_threads_diff"]
    return (f"repeatability {record['protocol']}/{record['method']} seed {record['seed']}: mIoU "
            f"{' / '.join(f'{m:.4f}' for m in record['miou'])} at {record['torch_threads']} threads; same "
            f"threads {same:+.2f} points, other {other:+.2f}")


def load_runs(folder: Path, plan: Plan) -> list[dict]:
    """Every finished run's JSON under ``folder/<protocol>/``, with its code's lineage from
    ``folder/equivalent_versions.json`` (runs from before the fields: evaluated on the report split, and their
    total iterations the sum of the variant's stage budgets)."""
    found = lineage.with_lineage(runs.load_runs(folder, "*/*.json"), lineage.load(folder / lineage.FILE))
    for run in found:
        run["total_iterations"] = run.get("total_iterations") or plan.total_iterations(run["method"],
                                                                                       run["iterations"])
    return found


def run_key(run: dict) -> tuple:
    return (run["protocol"], run["method"], run["seed"], run["iterations"], tuple(run["overrides"]),
            run.get("split", "report"))


def speed_choices(run: dict) -> dict:
    """The memory format and compile choices a run trained with (``train.channels_last``/``compile``, often
    measured per machine): runs that chose differently time, and round, differently, so they are not paired.
    A run from before the field counts as contiguous and eager (what every CPU run then was)."""
    return run.get("speed") or {"channels_last": False, "compile": False}


def comparisons(found: list[dict], index: dict[tuple, dict], plan: Plan, allow_mixed: bool = False,
                refused: list[str] | None = None) -> list[Paired]:
    """One record per (protocol, method, overrides, split, budget) and each of its baselines (the plan's and the
    one its runs name), over the seeds where both runs exist and ran the same code version (any version with
    ``allow_mixed``; the record then says ``mixed_code``) with the same :func:`speed_choices`. On the selection
    split an ablation is also compared with the method's own runs without its overrides: the paired difference
    a choice is made on (``p2/selection/cac[cac.gamma=0.5]-vs-cac``). A refused pair's line goes to
    ``refused``."""
    groups: dict[tuple, list[dict]] = {}
    for r in found:
        groups.setdefault((r["protocol"], r["method"], r["iterations"], tuple(r["overrides"]), r["split"]),
                          []).append(r)
    records = []
    for (protocol, method, iterations, overrides, split), group in sorted(groups.items()):
        choice = bool(overrides) and split == "selection"
        for comparison in comparisons_of(plan, method, {r["baseline"] for r in group if r["baseline"]}, choice):
            budget = baseline_budget(comparison, iterations, plan.total_iterations)
            baselines = [index.get((protocol, comparison.baseline, r["seed"], budget, (), split)) for r in group]
            paired = pairs.pair_by_seed(group, filter(None, baselines),
                                        lambda r, b: speed_choices(r) == speed_choices(b))
            paired, differing = pairs.keep_same_code(paired, allow_mixed)
            if not allow_mixed and refused is not None:
                refused.extend(plan.refusal(r, b) for r, b in differing)
            if paired:
                identity = {"protocol": protocol, "method": method, "baseline": comparison.baseline,
                            "iterations": iterations}
                record = pairs.comparison_record(identity, paired, SIDE_FIELDS)
                record.update({"overrides": list(overrides)} if overrides else {})
                oracle = plan.oracles.get(method)
                record.update(pairs.group_mious(paired, [index.get((protocol, oracle, r["seed"], iterations, (), split))
                                                         for r, _ in paired] if oracle else []))
                record.update(pairs.tail_mious(paired))
                record.update(split=split, baseline_iterations=budget, mixed_code=bool(differing) and allow_mixed)
                record["name"] = record_name(record, plan)
                records.append(Paired(record, paired))
    return records


def comparisons_of(plan: Plan, method: str, named: set[str], choice: bool = False) -> list[Comparison]:
    """The plan's comparisons of ``method`` and those its runs' ``baseline`` fields name (no method against
    itself, none twice); with ``choice`` (an ablation's runs) last the method against itself, i.e. against its
    runs without the ablation's overrides."""
    planned = plan.planned(method)
    extra = [Comparison(method, b) for b in sorted(named) if b != method and Comparison(method, b) not in planned]
    return planned + extra + ([Comparison(method, method)] if choice else [])


def record_name(record: dict, plan: Plan) -> str:
    """What a record compares, as quotes name it: ``p2/cac-vs-supervised``; ``selection/`` after the protocol
    on the selection split, ``it600/`` at a budget other than the protocol's, ``[overrides]`` after an
    ablation's method, ``@it2000`` after a baseline trained at another budget (a chained method's total)."""
    overrides = f"[{','.join(record['overrides'])}]" if record.get("overrides") else ""
    at = f"@it{record['baseline_iterations']}" if record["baseline_iterations"] != record["iterations"] else ""
    return f"{_name_prefix(record, plan)}/{record['method']}{overrides}-vs-{record['baseline']}{at}"


def repeat_name(record: dict, plan: Plan) -> str:
    """A repeatability record's name, as quotes name it: ``p2/supervised-seed0-repeatability`` (the protocol
    part as in :func:`record_name`)."""
    return f"{_name_prefix(record, plan)}/{record['method']}-seed{record['seed']}-repeatability"


def _name_prefix(record: dict, plan: Plan) -> str:
    """``p2``, ``p2/selection``, ``p1/it600``: the protocol, then the split and budget where not the report
    split and the protocol's budget."""
    parts = [record["protocol"]] + (["selection"] if record["split"] == "selection" else [])
    if record["iterations"] != plan.protocol_budget(record["protocol"]):
        parts.append(f"it{record['iterations']}")
    return "/".join(parts)


def comparison_section(paired: Paired, index: dict[tuple, dict], spreads: dict[tuple, dict], plan: Plan) -> list[str]:
    """A comparison's README section: its title and record name, then :func:`raysemi.bench.tables.comparison_table`
    with both sides' cost, the run-to-run difference at a fixed seed where measured (``spreads``: repeatability
    records by protocol and split), and per class the headroom variant's IoU at the same budget."""
    record, paired_runs = paired.record, paired.pairs
    key = tuple(record.get("overrides", ()))
    defaults = " at its defaults" if record["baseline"] == record["method"] else ""
    title = (f"### {record['protocol']}: {record['method']} against {record['baseline']}{defaults}, "
             f"{record['iterations']} it")
    if record["baseline_iterations"] != record["iterations"]:
        title += f" (baseline {record['baseline_iterations']} it)"
    notes = []
    last_stage_only = [r["seed"] for r, _ in paired_runs
                       if "stages" not in r and plan.total_iterations(r["method"], r["iterations"]) != r["iterations"]]
    if last_stage_only:
        notes += [f"The method's training time of seeds {last_stage_only} is its last stage's only (runs from "
                  "before stages were summed).", ""]
    spread = spreads.get((record["protocol"], record["split"]))
    notes += repeats.spread_note(spread) if spread else []
    reference = [] if record["method"] == plan.headroom else [
        run for (protocol, method, _, its, overrides, split), run in index.items()
        if (protocol, method, its, overrides, split) == (record["protocol"], plan.headroom, record["iterations"], (),
                                                         record["split"])]
    return [title + (f" ({', '.join(key)})" if key else ""), "", f"Record `{record['name']}`.", ""] + \
        tables.comparison_table(record, paired_runs, remedy=plan.remedy, notes=notes,
                                speed=True, all_labels=reference, all_labels_name=plan.headroom)


def readme_sections(found: list[dict], compared: list[Paired], repeat_records: list[dict], index: dict[tuple, dict],
                    plan: Plan) -> list[str]:
    """Per split (report first) and protocol: the baseline's val curves by budget, the repeatability records
    and each comparison's section."""
    spreads = {(r["protocol"], r["split"]): r for r in repeat_records}
    lines = []
    for split in ("report", "selection"):
        for protocol in sorted({r["protocol"] for r in found + repeat_records if r["split"] == split}):
            lines += [f"## Protocol {protocol}, {split} split", ""]
            baseline = [r for r in found if not r["overrides"]
                        and (r["protocol"], r["method"], r["split"]) == (protocol, plan.baseline, split)]
            lines += [f"### {protocol}: the {plan.baseline}(k) budget", "", *tables.curve_table(baseline), ""] \
                if baseline else []
            lines += repeats.repeatability_section([r for r in repeat_records
                                                    if (r["protocol"], r["split"]) == (protocol, split)])
            for paired in compared:
                if (paired.record["protocol"], paired.record["split"]) == (protocol, split):
                    lines += comparison_section(paired, index, spreads, plan)
    return lines


def write_outputs(plan: Plan, results: Path, folder: Path, header: list[str], documents: tuple[Path, ...] = (),
                  allow_mixed: bool = False, say: Callable[[str], None] = print) -> list[dict]:
    """Rebuild ``results/summary.json`` and ``folder/README.md`` (``header``, :func:`readme_sections`, then
    ``folder/notes.md``) from the run JSONs under ``folder``, and fill the quotes of ``documents`` and the notes
    (:mod:`raysemi.bench.quotes`). Pairs of different code versions are left out, each with one line to ``say``,
    unless ``allow_mixed``; the records written."""
    from raysemi.atomic import write_text

    found = load_runs(folder, plan)
    index = {run_key(r): r for r in found}
    refused: list[str] = []
    compared = comparisons(found, index, plan, allow_mixed, refused)
    for line in dict.fromkeys(refused):
        say(line)
    repeat_records = [{"name": repeat_name(r, plan), **r}
                      for r in repeats.repeatability_records(runs.load_runs(folder, "*/repeatability/*.json"))]
    records = [p.record for p in compared] + repeat_records
    results.mkdir(parents=True, exist_ok=True)
    runs.write_records(results / "summary.json", records)  # atomic: many invocations rebuild it side by side
    folder.mkdir(parents=True, exist_ok=True)
    for document in [*documents, folder / "notes.md"]:
        for problem in quotes.fill_document(document, records):
            say(problem)
    lines = [*header, *readme_sections(found, compared, repeat_records, index, plan)]
    notes = folder / "notes.md"
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    write_text(folder / "README.md", "\n".join(lines))
    return records
