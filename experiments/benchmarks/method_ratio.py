"""Each method's training step relative to supervised, measured pairwise: one supervised step, one method step,
alternately, in one process.

Beside each time ratio, the ratio of the two steps' counted FLOPs (:func:`raysemi.bench.timing.step_flops`):
the work a step does, on any machine, against which the time ratio is read.

``step_time.py`` times each method over a stretch of steps, so on a shared machine whose load swings within
minutes two methods can see different loads. Here a supervised step and the method's step alternate
(:func:`raysemi.bench.timing.alternate` of two :class:`raysemi.bench.timing.PlainStep`: ``training_step``,
backward, optimizer step, batches prepared in memory, the same model protocol as ``step_time.py``), so each
pair sees the same load, and the median of the per-pair ratios is kept. The engine adds no measurable per-step
work to such a step (``engine_overhead.py``).

Usage (from the repository root)::

    python experiments/benchmarks/method_ratio.py [--steps 10] [--threads 1] [--methods cps cac] [--tag after]

Writes ``experiments/benchmarks/results/method_ratio-<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from raysemi.bench.camvid import TIMED_METHODS, CamvidProtocol
from raysemi.bench.tables import fmt
from raysemi.bench.timing import alternate, paired_statistics, plain_step, step_flops

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
CAMVID = CamvidProtocol.in_checkout(REPO)
METHODS = [name for name in TIMED_METHODS if name != "supervised"]


def paired_ratio(name: str, steps: int, warmup: int, extra: list[str]) -> dict:
    supervised, other = (plain_step(CAMVID.timing_config(n, 1000, CAMVID.work / f"method_ratio-{n}", extra))
                         for n in ("supervised", name))
    flops = step_flops(supervised), step_flops(other)  # one counted call each, before the timed warm-up
    stats = paired_statistics(alternate(supervised, other, steps, warmup))
    return {"method": name, "supervised_s": stats["a_s"], "method_s": stats["b_s"], "vs_supervised": stats["ratio"],
            "vs_supervised_min": stats["ratio_min"], "vs_supervised_max": stats["ratio_max"],
            "flops_vs_supervised": flops[1] / flops[0], "supervised_gflops": flops[0] / 1e9,
            "pairs": stats["pairs"], "load_average": [round(x, 2) for x in os.getloadavg()]}


def markdown(record: dict) -> str:
    """The result page of ``record`` (what :func:`main` writes to ``method_ratio-<tag>.json``)."""
    lines = [f"# Step time per method relative to supervised, paired ({record['tag']})", "",
             f"Script: [`method_ratio.py`](../method_ratio.py); CPU, {record['threads']} torch thread(s), torch "
             f"{record['torch']}; median of {record['steps']} alternating supervised / method steps after "
             f"{record['warmup']}; {record['date']}.", "",
             "| method | × supervised (median of pairs) | × supervised by FLOPs | method s/step | supervised s/step | "
             "load average |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['vs_supervised']:.2f} | {fmt(r.get('flops_vs_supervised'), 2)} | "
              f"{r['method_s']:.3f} | {r['supervised_s']:.3f} | {', '.join(map(str, r['load_average']))} |"
              for r in record["rows"]]
    lines += ["", "× supervised by FLOPs: the matrix products and convolutions of one step (forward, backward, "
              "optimizer; `torch.utils.flop_counter`), the method's over supervised's: its work, on any machine. "
              "A time ratio above it is work the count leaves out (elementwise operations, matching, sampling); "
              "one below it, larger batches running faster per image here."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed pairs per method")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--tag", default="after", help="names the results files (e.g. before / after)")
    args = parser.parse_args()
    if not CAMVID.data.is_dir():
        print(f"skipped: {CAMVID.data} not found (the benchmark needs ../shared/data)", file=sys.stderr)
        return 0
    rows = []
    for name in args.methods:
        row = paired_ratio(name, args.steps, args.warmup, [f"train.torch_threads={args.threads}"])
        rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        print(json.dumps(rows[-1]), flush=True)
    record = {"tag": args.tag, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"method_ratio-{args.tag}.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / f"method_ratio-{args.tag}.md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
