"""Training time of each method before and after the measured speed choices (issue 41), on one machine in one run.

*Before* is the previous default: contiguous on the CPU (channels-last on CUDA, where AMP is on) and eager.
*After* is ``train.channels_last=auto train.compile=auto``: both chosen by timing at start-up
(:mod:`raysemi.engine.probe`). Each method trains its benchmark variant of the protocol (as ``gain.py`` builds
it) from scratch once each way, before then after, method by method, so a drift of the machine's speed falls
on both halves of a pair. Recorded per run: the training time (:func:`raysemi.bench.runs.step_times`: from the
logged intervals, start-up and evaluation left out), the steady it/s, the wall time (start-up with the probes
and evaluation included), the val mIoU and the run's ``speed`` record (the choices, how they were made, the
probes' timings and cost).

Usage (from the repository root; P2's 1,000 iterations take hours on a CPU: the lead schedules it)::

    python experiments/benchmarks/speed_auto.py [--protocol p2] [--steps 1000] [--methods supervised cps ...]
        [--runner ray|plain] [--tag NAME]

Writes ``experiments/benchmarks/results/speed_auto-<tag>.json`` and ``speed_auto-<tag>.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import gain  # a sibling script (Python puts a script's folder first on its path): the protocols' variants

from raysemi.bench.runs import step_times, write_result
from raysemi.bench.versions import commit_id

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
WORK = REPO / "experiments" / "benchmarks" / "_work" / "speed_auto"
METHODS = ("supervised", "cps", "cac", "self_correction_linear", "simformer_full", "unimatch")
AFTER = ("train.channels_last=auto", "train.compile=auto")


def before_settings(cuda: bool) -> tuple[str, ...]:
    """The previous default: channels-last only on CUDA (with AMP, on by default), never compiled."""
    return (f"train.channels_last={str(cuda).lower()}", "train.compile=false")


def timed_run(protocol_name: str, variant: str, steps: int, label: str, settings: tuple[str, ...],
              trainer, work: Path) -> dict:
    """Train ``variant`` from scratch with ``settings``; its times, mIoU and speed record."""
    from raysemi.tracking import read_metrics

    run_dir = work / protocol_name / f"{variant}-{label}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: a finished one would return without training
    cfg = gain.variant_config(protocol_name, variant, steps, ("run.seed=0", f"run.dir={run_dir}"), settings)
    started = time.perf_counter()
    summary = trainer(cfg)
    wall = time.perf_counter() - started
    return {"method": variant, "label": label, "settings": list(settings), "val_miou": round(summary["miou"], 4),
            **step_times(read_metrics(Path(summary["run_dir"])), steps), "wall_time_s": round(wall, 1),
            "speed": summary["speed"]}


def markdown(record: dict) -> str:
    """A table: each method's training time before and after, the ratio and what ``auto`` chose."""
    lines = [f"# Training time before and after the measured speed choices ({record['protocol']}, "
             f"{record['steps']} iterations)", "",
             f"One run on `{record['device']}`, commit `{record['commit']}`, {record['date']}. Before: "
             f"`{' '.join(record['before'])}`; after: `{' '.join(AFTER)}`. Training time from the logged "
             "intervals (start-up and evaluation left out); the steady pace leaves out the first logged interval too "
             "(the input pipeline's start); wall time includes them and the probes. A chained method's "
             "choices and probe time are its last stage's.", "",
             "| method | before: train s | after: train s | before / after | steady it/s before → after | "
             "steady speed-up | before: wall s | after: wall s | auto's choices | probe s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for before, after in zip(record["runs"][::2], record["runs"][1::2], strict=True):
        speed = after["speed"]
        probe_s = speed["timings"].get("format_probe_s", 0.0) + speed["timings"].get("compile_probe_s", 0.0)
        choices = ", ".join(f"{key} {'on' if speed[key] else 'off'} ({speed['how'][key]})"
                            for key in ("channels_last", "compile"))
        lines.append(f"| {before['method']} | {before['train_time_s']:.0f} | {after['train_time_s']:.0f} | "
                     f"{before['train_time_s'] / max(after['train_time_s'], 1e-9):.2f}× | {before['it_per_s']:.2f} → "
                     f"{after['it_per_s']:.2f} | {after['it_per_s'] / max(before['it_per_s'], 1e-9):.2f}× | "
                     f"{before['wall_time_s']:.0f} | {after['wall_time_s']:.0f} | {choices} | {probe_s:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="p2", choices=sorted(gain.PROTOCOLS))
    parser.add_argument("--steps", type=int, default=1000, help="iterations per run (P2's benchmark: 1000)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="benchmark variants (gain.py's names)")
    parser.add_argument("--runner", choices=("ray", "plain"), default="ray",
                        help="ray: Ray Train, as the gain benchmark; plain: gain.py's train_run_plain")
    parser.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M"), help="names the result files")
    args = parser.parse_args(argv)
    import torch

    trainer = gain.train_run_plain if args.runner == "plain" else gain.train_run
    before = before_settings(args.runner == "plain" and torch.cuda.is_available())
    runs = []
    for variant in args.methods:
        for label, settings in (("before", before), ("after", AFTER)):
            runs.append(timed_run(args.protocol, variant, args.steps, label, settings, trainer, WORK / args.tag))
            print(json.dumps({k: runs[-1][k] for k in ("method", "label", "train_time_s", "wall_time_s")}),
                  flush=True)
    record = {"protocol": args.protocol, "steps": args.steps, "date": time.strftime("%Y-%m-%d"),
              "commit": commit_id(REPO), "device": gain.device_name(trainer), "before": list(before),
              "runs": runs}
    print(f"wrote {write_result(RESULTS, f'speed_auto-{args.tag}', record, markdown(record))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
