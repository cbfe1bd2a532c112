"""Time per training iteration of every method relative to supervised, all in one process on one machine.

Each method trains through the engine's own loop (:class:`raysemi.engine.loop.TrainingRun`, as in local mode,
without Ray) on the CamVid 96×128 protocol's model (EfficientNet-Lite0 + DeepLabv3+, batch 8, + 8 unlabeled
for semi-supervised methods), its batches decoded once and repeated in memory, so the figure is compute alone.
The same script also times a plain PyTorch loop on the supervised model and batch
(:func:`camvid_protocol.plain_pytorch_images_per_s`), so the engine's overhead shows in the same run.

Methods run round-robin (``--rounds`` times, the median of each method's rounds is kept) so that a busy
machine slows every method alike; each round times ``--steps`` iterations after ``--warmup``. Ratios to
supervised, not absolute times, are what compare across runs and machines.

Usage (from the repository root)::

    python experiments/benchmarks/step_time.py [--steps 20] [--rounds 2] [--tag after]

Writes ``experiments/benchmarks/results/step_time-<tag>.json`` and ``step_time-<tag>.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "experiments" / "benchmarks"))

import camvid_protocol as protocol  # noqa: E402

RESULTS = REPO / "experiments" / "benchmarks" / "results"

# name → (config file's method, overrides). CAC's L_dc is on from step 0 (the protocol starts it at 100);
# self_correction times its primary stage (linear mode: the frozen ancillary's forward, then the primary).
METHODS = {
    "supervised": ("supervised", []),
    "cps": ("cps", []),
    "cac": ("cac", ["cac.start_step=0", "cac.rampup_steps=0"]),
    "self_correction": ("self_correction", ["self_correction.stage=primary", "self_correction.mode=linear"]),
    "simformer": ("simformer", []),
    "unimatch": ("unimatch", []),
}


def method_config(name: str, steps: int, run_dir: Path, extra: list[str]):
    method, overrides = METHODS[name]
    if method == "self_correction":
        overrides = [*overrides, *protocol.boxes_split("1/8", 0)]
    labels = "all" if method in ("supervised", "simformer") else "1/8"
    return protocol.protocol_config(method, labels, 0, steps, run_dir, [*overrides, *extra])


def in_memory_batches(cfg, method) -> dict[str, dict[str, torch.Tensor]]:
    """One decoded batch per stream, as the Ray Data pipeline hands it to the loop (uint8 images)."""
    from raysemi.data.dataset import open_dataset
    from raysemi.data.streams import stream_decoder, stream_records
    from raysemi.data.transforms import TrainAugment

    source = open_dataset(cfg.data)
    augment = TrainAugment.from_config(cfg.data, source.classes.ignore_index)
    batches = {}
    for stream, spec in method.streams().items():
        records = stream_records(source, spec, 1, 0, cfg.run.seed, stream)
        decode = stream_decoder(spec, cfg.data.format, str(source.root), augment)
        raw = decode({key: np.array([r[key] for r in records]) for key in records[0]})
        batches[stream] = {k: torch.from_numpy(v) for k, v in raw.items()}
    return batches, source


def engine_seconds_per_step(name: str, steps: int, warmup: int, extra: list[str],
                            device: torch.device) -> float:
    """Median seconds per iteration of ``TrainingRun`` over ``steps`` iterations after ``warmup``."""
    from raysemi.engine.loop import RunInfo, TrainingRun, WorkerEnv
    from raysemi.methods import build_method

    run_dir = protocol.WORK / f"step_time-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = method_config(name, warmup + steps, run_dir, [f"train.log_every={warmup}", *extra])
    torch.set_num_threads(cfg.train.torch_threads or 2)
    batches, source = in_memory_batches(cfg, build_method(cfg))
    val = {k: v for k, v in batches[next(iter(batches))].items() if k in ("image", "mask")}
    reports = []
    env = WorkerEnv(
        rank=0, world_size=1, device=device,
        streams={stream: itertools.repeat(batch) for stream, batch in batches.items()},
        val_batches=lambda: [val], report=reports.append,
    )
    classes = source.classes
    run_dir.mkdir(parents=True)
    TrainingRun(cfg, RunInfo(run_dir, tuple(classes.names), tuple(classes.palette), classes.ignore_index), env).fit()
    timed = [r for r in reports if r["step"] > warmup]  # the first interval holds the warm-up
    return statistics.fmean(1 / r["steps_per_s"] for r in timed)


def plain_seconds_per_step(steps: int, warmup: int, extra: list[str]) -> float:
    cfg = method_config("supervised", 1000, protocol.WORK / "step_time-plain", extra)
    return cfg.train.batch_size / protocol.plain_pytorch_images_per_s(cfg, steps, warmup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed iterations per method and round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (AMP on, as train.amp)")
    parser.add_argument("--tag", default="after", help="names the results files (e.g. before / after)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every method (repeatable)")
    parser.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE",
                        help="also time supervised with this override (repeatable, one variant each)")
    args = parser.parse_args()
    if not protocol.CAMVID.is_dir():
        print(f"skipped: {protocol.CAMVID} not found (the benchmark needs ../shared/data)", file=sys.stderr)
        return 0
    variants = {name: (name, args.set) for name in args.methods}
    variants |= {f"supervised ({c})": ("supervised", [*args.set, c]) for c in args.compare}
    device = torch.device(args.device)
    plain = "plain PyTorch loop (supervised)" if device.type == "cpu" else None  # the plain loop runs on CPU
    times: dict[str, list[float]] = {name: [] for name in [*variants, *([plain] if plain else [])]}
    started = time.time()
    for round_number in range(args.rounds):
        for label, (name, extra) in variants.items():
            try:
                times[label].append(engine_seconds_per_step(name, args.steps, args.warmup, extra, device))
            except Exception as exc:  # noqa: BLE001 - one method's failure is reported, the others still run
                print(f"round {round_number}: {label} failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            print(f"round {round_number}: {label} {times[label][-1]:.3f} s/it", flush=True)
        if plain:
            times[plain].append(plain_seconds_per_step(args.steps, args.warmup, args.set))
            print(f"round {round_number}: {plain} {times[plain][-1]:.3f} s/it", flush=True)
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
