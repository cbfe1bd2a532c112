"""How much of a trained model's val mIoU its BatchNorm statistics carry: each run's final model scored on the
held-out val clip as trained, then with every BatchNorm layer's running statistics recomputed on the run's
labeled frames alone, on its unlabeled frames alone, and on both in alternate batches, as a method that runs
labeled and unlabeled passes in turn weighs them (:func:`raysemi.analysis.batchnorm.recompute_batchnorm`; the
weights stay as trained, so only the statistics differ between the columns).

A method that passes the unlabeled frames through its networks (CPS and its λ = 0 control, CAC,
``supervised_unlabeled_bn``) also fills its running statistics with them. Where the labeled and unlabeled frames
look different (P2: 12 labeled dusk frames, daytime unlabeled and val frames), those statistics alone can move
the score. If a run gains from unlabeled-frame statistics and loses with labeled-frame ones, part of its gain
over ``supervised`` is that adaptation, which its loss on the unlabeled frames did not teach.

Usage (from the repository root)::

    python experiments/benchmarks/bn_statistics.py --protocol p2 --runs cps-seed0-it1000 cps_control-seed0-it1000

reads each run's newest checkpoint under ``experiments/benchmarks/_work/gain/<protocol>/`` (``--work`` points at
another checkout's runs) and writes ``experiments/benchmarks/results/bn_statistics-<protocol>.json`` (runs already
there are kept) and the same name with ``.md``. The statistics are gathered on whole frames in eval batches,
not on training crops.
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections.abc import Iterator
from itertools import chain, cycle
from pathlib import Path

import torch

from raysemi.analysis.analyze import checkpoint_confusion, scored_images
from raysemi.analysis.batchnorm import recompute_batchnorm
from raysemi.bench.runs import add_run_folder_arguments, write_run_folder_page
from raysemi.data.dataset import DatasetSource, open_dataset
from raysemi.data.formats import Sample
from raysemi.engine.inference import LoadedModel, load_eval_model, val_batches

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
WORK = REPO / "experiments" / "benchmarks" / "_work" / "gain"
STATISTICS = ("labeled", "unlabeled", "alternating")  # the frames each recomputed column gathers statistics on
COLUMNS = ("trained", *STATISTICS)
# the differences the page shows, seed by seed, where both runs of a seed were measured: issue 36's question
# (does CPS's cross supervision gain over its λ = 0 control, and what does the control gain over supervised?)
PAIRS = (("cps", "cps_control"), ("cps", "supervised_cps_optim"), ("cps_control", "supervised_cps_optim"))
RUN_NAME = re.compile(r"^(?P<variant>.+)-seed(?P<seed>\d+)-")


def measure(run_dir: Path) -> dict:
    """Val mIoU ``trained`` and with the statistics of each of :data:`STATISTICS`, and how many labeled and
    unlabeled frames there are."""
    loaded = load_eval_model(run_dir)
    source = open_dataset(loaded.cfg.data)
    frames = {"labeled": source.split.labeled, "unlabeled": scored_images(source, "unlabeled")}
    result = {"trained": round(checkpoint_confusion(loaded, "val", threads=2).miou(), 4)}
    for column in STATISTICS:
        loaded = load_eval_model(run_dir)
        recompute_batchnorm(loaded.model, statistics_batches(loaded, source, frames, column))
        result[column] = round(checkpoint_confusion(loaded, "val", threads=2).miou(), 4)
    return result | {f"{name}_frames": len(samples) for name, samples in frames.items()}


def statistics_batches(loaded: LoadedModel, source: DatasetSource, frames: dict[str, list[Sample]],
                       column: str) -> Iterator[torch.Tensor]:
    """``(N, 3, H, W)`` normalised eval batches of the ``labeled`` or ``unlabeled`` frames, or, ``alternating``,
    each unlabeled batch after a labeled one (the labeled frames cycled)."""
    def images(samples: list[Sample]) -> Iterator[torch.Tensor]:
        return (batch["image"] for batch in val_batches(source.reader, samples, loaded, 2))

    if column == "alternating":
        return chain.from_iterable(zip(cycle(list(images(frames["labeled"]))), images(frames["unlabeled"])))
    return images(frames[column])


def markdown(results: dict[str, dict]) -> str:
    lines = ["# Val mIoU with BatchNorm statistics recomputed (`bn_statistics.py`)", "",
             "Each run's final model on the held-out val clip: as trained, and with every BatchNorm layer's running "
             "statistics recomputed on the run's labeled frames alone, its unlabeled frames alone, or both in "
             "alternate batches (weights as trained; whole frames, not training crops).", "",
             "| run | as trained | BN on labeled frames | BN on unlabeled frames | BN on both, alternating | "
             "frames (labeled / unlabeled) |",
             "|---|---|---|---|---|---|"]
    for run, r in sorted(results.items()):
        lines.append(f"| {run} | {r['trained']:.4f} | {r['labeled']:.4f} | {r['unlabeled']:.4f} | "
                     f"{r['alternating']:.4f} | {r['labeled_frames']} / {r['unlabeled_frames']} |")
    return "\n".join(lines + differences(results)) + "\n"


def differences(results: dict[str, dict]) -> list[str]:
    """The table of :data:`PAIRS`' differences (points) per seed and their mean ± std over seeds, in each column;
    a run's variant and seed are read from its name (``<variant>-seed<N>-...``)."""
    by_key = {(m["variant"], int(m["seed"])): r for run, r in results.items() if (m := RUN_NAME.match(run))}
    lines = ["", "Differences in points, seed by seed (the same frames' statistics on both sides of a recomputed "
             "column):", "", "| difference | seed | as trained | BN on labeled | BN on unlabeled | BN alternating |",
             "|---|---|---|---|---|---|"]
    for method, baseline in PAIRS:
        seeds = sorted(seed for variant, seed in by_key if variant == method and (baseline, seed) in by_key)
        rows = [[100 * (by_key[method, seed][c] - by_key[baseline, seed][c]) for c in COLUMNS] for seed in seeds]
        for seed, row in zip(seeds, rows, strict=True):
            lines.append(f"| {method} − {baseline} | {seed} | " + " | ".join(f"{d:+.1f}" for d in row) + " |")
        if len(rows) > 1:
            spread = [f"{statistics.mean(col):+.1f} ± {statistics.stdev(col):.1f}" for col in zip(*rows)]
            lines.append(f"| {method} − {baseline} | mean of {len(rows)} | " + " | ".join(spread) + " |")
    return lines


def describe(run: str, result: dict) -> str:
    return (f"{run}: val mIoU {result['trained']:.4f} as trained, {result['labeled']:.4f} with labeled-frame "
            f"statistics, {result['unlabeled']:.4f} with unlabeled-frame statistics, {result['alternating']:.4f} "
            "with both alternating")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_folder_arguments(parser, WORK)
    args = parser.parse_args()
    write_run_folder_page(args, RESULTS / f"bn_statistics-{args.protocol}.json", measure, describe, markdown)


if __name__ == "__main__":
    main()
