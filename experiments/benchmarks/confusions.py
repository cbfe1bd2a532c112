"""Where trained models err: per-class IoU and each class's most frequent wrong prediction, on the held-out val
split and on the run's own unlabeled frames (P2's unlabeled frames have masks, which training never reads).
A run with no unlabeled frame that has a mask (one trained on every image, as all-labels and weak-shot runs
are) is scored on val alone, and its page says why its unlabeled column is empty.

A semi-supervised method learns from its predictions on the unlabeled frames; comparing how a method and its
λ = 0 control segment those frames and the held-out clip says whether its pseudo-labels taught it errors there
(both worse) or a look that does not carry to the held-out clip (unlabeled better, val worse).

Usage (from the repository root)::

    python experiments/benchmarks/confusions.py --protocol p2 --runs cps-seed1-it1000 cps_control-seed1-it1000

reads each run's newest checkpoint under ``experiments/benchmarks/_work/gain/<protocol>/`` and writes
``experiments/benchmarks/results/confusions-<protocol>.json`` (runs already there are kept; ``--work``
points at another checkout's runs) and the same name with ``.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raysemi.analysis.analyze import checkpoint_confusion
from raysemi.bench.confusions import errors_by_class
from raysemi.bench.runs import add_run_folder_arguments, write_run_folder_page
from raysemi.bench.tables import fmt
from raysemi.engine.inference import LoadedModel, load_eval_model
from raysemi.errors import DataError

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
WORK = REPO / "experiments" / "benchmarks" / "_work" / "gain"


def measure(run_dir: Path) -> dict:
    """``val`` and ``unlabeled``: mIoU and per-class errors; ``unlabeled`` is None, with ``unlabeled_missing``
    saying why, when the run has no unlabeled frame with a mask on disk."""
    loaded = load_eval_model(run_dir)
    result = {"val": scored(loaded, "val")}
    try:
        result["unlabeled"] = scored(loaded, "unlabeled")
    except DataError as error:
        result["unlabeled"], result["unlabeled_missing"] = None, str(error)
    return result


def scored(loaded: LoadedModel, images: str) -> dict:
    confusion = checkpoint_confusion(loaded, images, threads=2)
    return {"miou": round(confusion.miou(), 4), "classes": errors_by_class(confusion, loaded.class_names)}


def markdown(results: dict[str, dict]) -> str:
    lines = ["# Where the models err (`confusions.py`)", "",
             "Per class: IoU on the held-out val clip (a `-selection` run's: the selection clip) / on the run's own "
             "unlabeled frames, and on val the class that takes most of its pixels (share of them).", ""]
    for run, result in sorted(results.items()):
        unlabeled = result["unlabeled"]
        lines += [f"## {describe(run, result)}", ""]
        if unlabeled is None:
            lines += [f"No unlabeled frames scored: {result['unlabeled_missing']}", ""]
        lines += ["| class | IoU val | IoU unlabeled | val: most taken by |", "|---|---|---|---|"]
        for name, row in result["val"]["classes"].items():
            unl = unlabeled["classes"][name]["iou"] if unlabeled else None
            taken = f"{row['top_error']} ({row['top_error_share']:.2f})" if row["top_error"] else "-"
            lines.append(f"| {name} | {fmt(row['iou'], 3)} | {fmt(unl, 3)} | {taken} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_folder_arguments(parser, WORK)
    args = parser.parse_args()
    write_run_folder_page(args, RESULTS / f"confusions-{args.protocol}.json", measure, describe, markdown)


def describe(run: str, result: dict) -> str:
    unlabeled = result["unlabeled"]
    return f"{run}: val mIoU {result['val']['miou']:.4f}, unlabeled frames " + (
        f"{unlabeled['miou']:.4f}" if unlabeled else "none")


if __name__ == "__main__":
    main()
