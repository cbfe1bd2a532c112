"""Time per training iteration of every method relative to supervised, all in one process on one machine.

Each method trains through the engine's own loop (:func:`raysemi.bench.timing.engine_seconds_per_step`: local
mode, without Ray) on the CamVid 96×128 protocol's model (EfficientNet-Lite0 + DeepLabv3+, batch 8, + 8
unlabeled for semi-supervised methods), its batches decoded once and repeated in memory, so the figure is
compute alone. The same script also times a plain PyTorch loop on the supervised model and batch
(:func:`raysemi.bench.timing.plain_images_per_s`), so the engine's overhead shows in the same run.

Methods run round-robin (``--rounds`` times, the median of each method's rounds is kept) so that a busy
machine slows every method alike; each round times ``--steps`` iterations after ``--warmup``. Ratios to
supervised, not absolute times, are what compare across runs and machines.

Usage (from the repository root)::

    python experiments/benchmarks/step_time.py [--steps 20] [--rounds 2] [--tag after]

Writes ``experiments/benchmarks/results/step_time-<tag>.json`` and ``step_time-<tag>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from raysemi.bench.camvid import TIMED_METHODS, CamvidProtocol
from raysemi.bench.timing import engine_seconds_per_step, plain_images_per_s

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
CAMVID = CamvidProtocol.in_checkout(REPO)
PLAIN = "plain PyTorch loop (supervised)"


def seconds_per_step(label: str, name: str, extra: list[str], args) -> float:
    """One round of variant ``label``: method ``name`` in the engine, or the plain loop."""
    steps = 1000 if label == PLAIN else args.warmup + args.steps
    cfg = CAMVID.timing_config(name, steps, CAMVID.work / f"step_time-{name}", extra)
    if label == PLAIN:
        return cfg.train.batch_size / plain_images_per_s(cfg, args.steps, args.warmup)
    return engine_seconds_per_step(cfg, torch.device(args.device), args.warmup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed iterations per method and round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(TIMED_METHODS), choices=list(TIMED_METHODS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (AMP on, as train.amp)")
    parser.add_argument("--tag", default="after", help="names the results files (e.g. before / after)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every method (repeatable)")
    parser.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE",
                        help="also time supervised with this override (repeatable, one variant each)")
    args = parser.parse_args()
    if not CAMVID.data.is_dir():
        print(f"skipped: {CAMVID.data} not found (the benchmark needs ../shared/data)", file=sys.stderr)
        return 0
    variants = {name: (name, args.set) for name in args.methods}
    variants |= {f"supervised ({c})": ("supervised", [*args.set, c]) for c in args.compare}
    if args.device == "cpu":  # the plain loop runs on the CPU
        variants[PLAIN] = ("supervised", args.set)
    times: dict[str, list[float]] = {label: [] for label in variants}
    started = time.time()
    for round_number in range(args.rounds):
        for label, (name, extra) in variants.items():
            try:
                times[label].append(seconds_per_step(label, name, extra, args))
            except Exception as exc:  # noqa: BLE001 - one method's failure is reported, the others still run
                print(f"round {round_number}: {label} failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            print(f"round {round_number}: {label} {times[label][-1]:.3f} s/it", flush=True)
        done = {k: v for k, v in times.items() if v}  # written after every round: a stopped run keeps its rounds
        write_results(args, {k: statistics.median(v) for k, v in done.items()}, done, time.time() - started,
                      round_number + 1)
    return 0


def write_results(args, median: dict[str, float], every: dict[str, list[float]], wall: float, rounds: int) -> None:
    base = median["supervised"] if "supervised" in median else next(iter(median.values()))
    rows = [{"variant": k, "s_per_it": round(v, 4), "vs_supervised": round(v / base, 2),
             "rounds_s_per_it": [round(x, 4) for x in every[k]]} for k, v in median.items()]
    record = {"tag": args.tag, "steps": args.steps, "warmup": args.warmup, "rounds": rounds,
              "load_average": [round(x, 2) for x in os.getloadavg()], "overrides": args.set,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "wall_s": round(wall), "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"step_time-{args.tag}.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# Step time per method ({args.tag})", "",
             f"Script: [`step_time.py`](../step_time.py); {record['device']}, {record['threads']} torch threads, "
             f"torch {record['torch']}; {args.steps} timed iterations after {args.warmup} of warm-up, "
             f"median of {rounds} round-robin rounds; {record['date']}, load average at the end "
             f"{', '.join(map(str, record['load_average']))}.", "",
             "| variant | s / iteration | × supervised | each round (s / it) |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['s_per_it']:.3f} | {r['vs_supervised']:.2f} "
              f"| {', '.join(f'{x:.3f}' for x in r['rounds_s_per_it'])} |" for r in rows]
    print("\n".join(lines))
    (RESULTS / f"step_time-{args.tag}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
