"""The engine's per-step time against a plain PyTorch step, measured pairwise: one of each, alternately.

``step_time.py`` times each variant over a stretch of steps, so on a shared machine whose load swings within
minutes the engine and the plain loop can see different loads. Here the plain loop's steps run inside the
engine's data iterator (:func:`raysemi.bench.timing.engine_alternating`): before handing the engine its next
batch, the iterator runs and times one plain step (its own model copy, same batch, optimizer and threads); the
engine's step is the time from handing over a batch to the next request (prepare, train step, logging; the
watchdog's thread hand-off included). Each pair of steps sees the same load, and the median over pairs is kept.

Variants: ``engine``'s and ``plain``'s memory format (contiguous or channels-last) and the torch threads, so
the same run shows the engine's overhead (same format) and channels-last's effect (engine NHWC against the
plain loop NCHW, and the plain loop in each format).

Usage (from the repository root)::

    python experiments/benchmarks/engine_overhead.py [--steps 8] [--threads 1 2]

Writes ``experiments/benchmarks/results/engine_overhead[-<tag>].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from raysemi.bench.camvid import CamvidProtocol
from raysemi.bench.timing import engine_alternating, paired_statistics, plain_step

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
CAMVID = CamvidProtocol.in_checkout(REPO)
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def paired_seconds(engine_format: str, plain_format: str, threads: int, steps: int, warmup: int,
                   extra: list[str]) -> dict:
    """Median seconds per step of the engine (supervised) and of the plain loop, alternating step by step."""
    overrides = [f"train.torch_threads={threads}", f"train.channels_last={engine_format == 'channels_last'}",
                 "train.log_every=1000", *extra]
    cfg = CAMVID.config("supervised", "all", 0, warmup + steps, CAMVID.work / "engine_overhead", overrides)
    plain = plain_step(cfg, memory_format=FORMATS[plain_format])
    stats = paired_statistics(engine_alternating(cfg, plain, warmup))
    return {"engine_s": stats["b_s"], "plain_s": stats["a_s"], "engine_over_plain": stats["ratio"],
            "engine_over_plain_min": stats["ratio_min"], "engine_over_plain_max": stats["ratio_max"],
            "pairs": stats["pairs"]}


def write_results(args, rows: list[dict]) -> None:
    record = {"steps": args.steps, "overrides": args.set, "warmup": args.warmup, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"engine_overhead{'-' + args.tag if args.tag else ''}"
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# Engine step against plain step, paired", "",
             f"Script: [`engine_overhead.py`](../engine_overhead.py); CPU, torch {record['torch']}; supervised, "
             f"batch 8; medians over {args.steps - 1} alternating pairs after {args.warmup}; engine overrides: "
             f"{', '.join(args.set) or 'none'}; {record['date']}.", "",
             "| threads | engine format | plain format | engine s/step | plain s/step | engine / plain (median of "
             "pairs) | load average |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['threads']} | {r['engine']} | {r['plain']} | {r['engine_s']:.3f} | {r['plain_s']:.3f} | "
              f"{r['engine_over_plain']:.2f} | {', '.join(map(str, r['load_average']))} |" for r in rows]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed pairs of steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pairs", nargs="+", default=["contiguous:contiguous", "channels_last:contiguous",
                                                       "channels_last:channels_last"],
                        help="engine:plain memory formats (contiguous or channels_last)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the engine (repeatable), e.g. train.stall_timeout_s=0")
    parser.add_argument("--tag", default="", help="suffix of the results files")
    args = parser.parse_args()
    if not CAMVID.data.is_dir():
        print(f"skipped: {CAMVID.data} not found (the benchmark needs ../shared/data)", file=sys.stderr)
        return 0
    variants = [tuple(pair.split(":")) for pair in args.pairs]
    unknown = sorted({f for pair in variants for f in pair} - set(FORMATS))
    if unknown or any(len(pair) != 2 for pair in variants):
        parser.error(f"--pairs {' '.join(args.pairs)}: each must be engine:plain with formats from {list(FORMATS)}")
    rows = []
    for threads in args.threads:
        for engine_format, plain_format in variants:
            row = {"threads": threads, "engine": engine_format, "plain": plain_format,
                   **paired_seconds(engine_format, plain_format, threads, args.steps, args.warmup, args.set),
                   "load_average": [round(x, 2) for x in os.getloadavg()]}
            rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            print(json.dumps(rows[-1]), flush=True)
    write_results(args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
