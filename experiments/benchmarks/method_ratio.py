"""Each method's training step relative to supervised, measured pairwise: one supervised step, one method step,
alternately, in one process.

``step_time.py`` times each method over a stretch of steps, so on a shared machine whose load swings within
minutes two methods can see different loads. Here a supervised step and the method's step alternate (plain
loop: ``training_step``, backward, optimizer step, batches prepared in memory, the same model protocol as
``step_time.py``), so each pair sees the same load, and the median of the per-pair ratios is kept. The engine
adds no measurable per-step work to such a step (``engine_overhead.py``).

Usage (from the repository root; also runs in an older checkout with ``step_time.py`` copied beside it)::

    python experiments/benchmarks/method_ratio.py [--steps 10] [--threads 1] [--methods cps cac] [--tag after]

Writes ``experiments/benchmarks/results/method_ratio-<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "experiments" / "benchmarks"))

import camvid_protocol as protocol  # noqa: E402
from step_time import METHODS, in_memory_batches, method_config  # noqa: E402

RESULTS = REPO / "experiments" / "benchmarks" / "results"


def step_runner(name: str, extra: list[str]):
    """A closure running one plain training step of method ``name`` on its in-memory batches; returns seconds."""
    from raysemi.engine.loop import prepare_batch
    from raysemi.engine.optim import build_optimizer
    from raysemi.methods import build_method

    cfg = method_config(name, 1000, protocol.WORK / f"method_ratio-{name}", extra)
    method = build_method(cfg)
    raw, source = in_memory_batches(cfg, method)
    views = {stream: spec.view for stream, spec in method.streams().items()}
    batch = {stream: prepare_batch(b, torch.device("cpu"), view=views[stream]) for stream, b in raw.items()}
    torch.manual_seed(cfg.run.seed)
    models = method.build_models(source.classes.num_classes)
    for model in models.values():
        model.train()
    optimizer, _ = build_optimizer(models, cfg.optim, cfg.train.steps)

    return partial(protocol.timed_plain_step, method, models, batch, optimizer, cfg.train.steps // 2)


def paired_ratio(name: str, steps: int, warmup: int, extra: list[str]) -> dict:
    supervised, other = step_runner("supervised", extra), step_runner(name, extra)
    pairs = [(supervised(), other()) for _ in range(warmup + steps)][warmup:]
    return {"method": name, "supervised_s": statistics.median(s for s, _ in pairs),
            "method_s": statistics.median(m for _, m in pairs),
            "vs_supervised": statistics.median(m / s for s, m in pairs), "pairs": len(pairs),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed pairs per method")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "supervised"],
                        choices=[m for m in METHODS if m != "supervised"])
    parser.add_argument("--tag", default="after", help="names the results files (e.g. before / after)")
    args = parser.parse_args()
    if not protocol.CAMVID.is_dir():
        print(f"skipped: {protocol.CAMVID} not found (the benchmark needs ../shared/data)", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    extra = [f"train.torch_threads={args.threads}"]
    rows = []
    for name in args.methods:
        row = paired_ratio(name, args.steps, args.warmup, extra)
        rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        print(json.dumps(rows[-1]), flush=True)
    record = {"tag": args.tag, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"method_ratio-{args.tag}.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# Step time per method relative to supervised, paired ({args.tag})", "",
             f"Script: [`method_ratio.py`](../method_ratio.py); CPU, {args.threads} torch thread(s), torch "
             f"{record['torch']}; median of {args.steps} alternating supervised / method steps after "
             f"{args.warmup}; {record['date']}.", "",
             "| method | × supervised (median of pairs) | method s/step | supervised s/step | load average |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['vs_supervised']:.2f} | {r['method_s']:.3f} | {r['supervised_s']:.3f} | "
              f"{', '.join(map(str, r['load_average']))} |" for r in rows]
    (RESULTS / f"method_ratio-{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
