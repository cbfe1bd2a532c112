"""Which pixels a confidence threshold lets through, per class: trained runs' pseudo-labels at several thresholds
on their own unlabeled frames (P2's unlabeled frames have masks, which training never reads).

A method that trains on ``argmax p`` only where ``max p ≥ τ`` (UniMatch, CPS with a threshold) gets no
unlabeled signal for a class whose pixels rarely pass. Per class (:class:`raysemi.analysis.pseudo_labels.
PseudoLabelCounts`): the share of its pixels that pass τ, the share given a passing and right pseudo-label
(recall), and the precision of the passing pixels predicted as the class. The prediction is the checkpoint's
whole-frame eval prediction, the model at the end of training.

Usage (from the repository root)::

    python experiments/benchmarks/pseudo_labels.py --protocol p2 --runs unimatch-seed0-it1000-selection \\
        --thresholds 0.8 0.95

reads each run's newest checkpoint under ``experiments/benchmarks/_work/gain/<protocol>/`` (``--work`` points at
another checkout's runs) and writes ``experiments/benchmarks/results/pseudo_labels-<protocol>.json`` (runs already
there are kept) and the same name with ``.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raysemi.analysis.analyze import checkpoint_pseudo_labels
from raysemi.analysis.pseudo_labels import COLUMNS, by_class
from raysemi.bench.runs import add_run_folder_arguments, write_run_folder_page
from raysemi.bench.tables import fmt
from raysemi.engine.inference import load_eval_model

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
WORK = REPO / "experiments" / "benchmarks" / "_work" / "gain"


def measure(run_dir: Path, thresholds: list[float]) -> list[dict]:
    loaded = load_eval_model(run_dir)
    return checkpoint_pseudo_labels(loaded, thresholds).rows(loaded.class_names)


def markdown(results: dict[str, list[dict]]) -> str:
    lines = ["# Pseudo-labels per class at each confidence threshold (`pseudo_labels.py`)", "",
             "On each run's own unlabeled frames, with the checkpoint's whole-frame prediction. passed: share of "
             "the class's pixels whose confidence is at least τ; recall: share given a passing, right "
             "pseudo-label; precision: of the passing pixels predicted as the class, the share that are.", ""]
    for run, rows in sorted(results.items()):
        thresholds, table = by_class(rows)
        header = [f"{column} τ={t:g}" for t in thresholds for column in COLUMNS]
        lines += [f"## {run}", "", "| class | pixels | " + " | ".join(header) + " |",
                  "|---|---|" + "---|" * len(header)]
        lines += [f"| {name} | {pixels} | " + " | ".join(fmt(v, 3) for v in values) + " |"
                  for name, pixels, values in table]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_folder_arguments(parser, WORK)
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.8, 0.95])
    args = parser.parse_args()
    write_run_folder_page(args, RESULTS / f"pseudo_labels-{args.protocol}.json",
                          lambda run_dir: measure(run_dir, args.thresholds), describe, markdown)


def describe(run: str, rows: list[dict]) -> str:
    overall = [row for row in rows if row["class"] == "all"]
    return f"{run}: " + ", ".join(f"τ={row['threshold']:g} passes {row['passed']:.3f}" for row in overall)


if __name__ == "__main__":
    main()
