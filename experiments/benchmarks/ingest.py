"""Ingest benchmark: how many CPUs per GPU Ray Data needs to keep a segmentation GPU fed.

Three measurements, on images generated here at VOC and Cityscapes sizes and codecs (never committed; under
``experiments/benchmarks/_work/ingest/``):

1. **Decode + augmentation throughput per CPU** through raysemi's own training stream
   (:func:`raysemi.ray.data.build_datasets` of the ``supervised`` method: read, decode, random scale, pad, crop,
   flip, colour jitter in Ray Data ``map_batches`` tasks), with 1 and 2 CPUs for the data tasks, for VOC-like
   images at crops 321 and 512 and Cityscapes-like images at crop 768.
2. **Simulated scale-out**: N consumers (Ray actors with ``num_cpus=0`` that sleep a fixed "GPU step time" per
   batch) each read one part of ``Dataset.streaming_split(N, equal=True)`` (what ``ray.train.get_dataset_shard``
   does for N training workers) through ``iter_torch_batches(prefetch_batches=4)`` as raysemi's loop does; the
   fraction of each consumer's time spent waiting for data against N.
3. **Sizing**: CPUs per GPU = (images per GPU step / step time) / (images per second per CPU) / u*, where u* is
   the largest load (demand / measured supply) at which the scale-out kept data wait under 5 %.

Usage (from the repository root)::

    python experiments/benchmarks/ingest.py                    # all of it (~20 min on a busy 2-core machine)
    python experiments/benchmarks/ingest.py --keep-throughput  # rerun the scale-out alone (~10 min)
    python experiments/benchmarks/ingest.py --table            # rebuild ingest.md from ingest.json

Writes ``experiments/benchmarks/results/ingest.json`` and ``ingest.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from raysemi.bench import ingest
from raysemi.bench.ingest import KINDS, append_row, ensure_images, measure_throughput
from raysemi.ray import ingest as ray_ingest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
WORK = REPO / "experiments" / "benchmarks" / "_work" / "ingest"

# (kind, crop, local batch, steps per CPU): a few CPU-seconds per measurement.
THROUGHPUT_CASES = (("voc_like", 321, 8, 36), ("voc_like", 512, 8, 24), ("cityscapes_like", 768, 4, 12))
PLAIN_LOOP_IMAGES = {"voc_like": 32, "cityscapes_like": 8}
SCALEOUT_CASE = ("voc_like", 321, 4)  # the cheapest images: the hardest stream to keep up with
SCALEOUT_CONSUMERS = (1, 2, 3, 4, 6)
SCALEOUT_SECONDS = 20.0  # per consumer count: steps = this / step time
SUPPLY_STEPS = 32  # per CPU: the supply measured before each scale-out point (about 4 s)

FASTER_GPU = 3.0  # an assumption, not a published number: a current GPU with AMP steps this much faster than
# the published ones the sizing is for (raysemi.bench.ingest.PUBLISHED)


def stream(name: str, root: Path, crop: int, batch: int, steps: int, consumers: int = 1):
    """raysemi's training stream (:func:`raysemi.ray.ingest.training_stream`) of the ``name`` images at ``root``."""
    return ray_ingest.training_stream(KINDS[name].format, root, crop, batch, steps, consumers)


def run_throughput(cpus: int, repeats: int, out: Path) -> None:
    """Every throughput case ``repeats`` times with ``cpus`` CPUs (one warm-up pass first, so worker start-up
    and imports are not timed); one JSON line per measurement appended to ``out``."""
    ray_ingest.start_ray(cpus)
    roots = {name: ensure_images(KINDS[name], WORK) for name in KINDS}
    measure_throughput(stream("voc_like", roots["voc_like"], 321, 8, 2 * cpus * 2), 8)  # warm-up: every worker
    for repeat in range(repeats):
        for name, crop, batch, steps in THROUGHPUT_CASES:
            if cpus == 1:
                row = ingest.plain_loop_rate(KINDS[name], roots[name], crop, PLAIN_LOOP_IMAGES[name])
                append_row(out, row | {"kind": name, "crop": crop, "cpus": 0, "repeat": repeat, "mode": "plain loop",
                                       "load_average": round(os.getloadavg()[0], 2)})
            row = measure_throughput(stream(name, roots[name], crop, batch, steps * cpus), batch)
            append_row(out, row | {"kind": name, "crop": crop, "local_batch": batch, "cpus": cpus, "repeat": repeat})


def run_scaleout(cpus: int, repeats: int, out: Path, supply: float) -> None:
    """The scale-out with ``cpus`` CPUs: the step time is set so one consumer asks for a quarter of
    ``supply`` (images/s measured with these CPUs), so N consumers put a load of about N / 4 on the stream.
    The supply is measured again (one reader, no sleep) just before each point, since the shared machine's
    load moves it; a point's load is its demand over that supply."""
    ray_ingest.start_ray(cpus)
    name, crop, batch = SCALEOUT_CASE
    root = ensure_images(KINDS[name], WORK)
    step_s = round(batch / (supply / 4), 3)
    steps = max(8, round(SCALEOUT_SECONDS / step_s))
    measure_throughput(stream(name, root, crop, batch, 2 * cpus * 2), batch)  # warm-up
    actors = ray_ingest.start_consumers(max(SCALEOUT_CONSUMERS), ingest.consume)
    for repeat in range(repeats):
        for consumers in SCALEOUT_CONSUMERS:
            supply_now = measure_throughput(stream(name, root, crop, batch, SUPPLY_STEPS * cpus),
                                            batch)["images_per_s"]
            dataset = stream(name, root, crop, batch, steps, consumers)
            row = ray_ingest.measure_scaleout(dataset, actors[:consumers], batch, step_s)
            demand = consumers * batch / step_s
            append_row(out, row | {"kind": name, "crop": crop, "cpus": cpus, "repeat": repeat,
                                   "supply_images_per_s": supply_now, "demand_images_per_s": round(demand, 2),
                                   "load": round(demand / supply_now, 3), "nominal_load": round(demand / supply, 3)})


def measure(cpus: list[int], repeats: int, keep_throughput: bool) -> dict:
    """Every part, each in its own process (the throughput with each of ``cpus`` unless ``keep_throughput``,
    then the scale-out with the most CPUs): the record ``ingest.json`` holds, without its summary."""
    images = {name: ingest.file_sizes(ensure_images(kind, WORK)) for name, kind in KINDS.items()}
    (WORK / "raw").mkdir(parents=True, exist_ok=True)
    throughput_file, scaleout_file = WORK / "raw" / "throughput.jsonl", WORK / "raw" / "scaleout.jsonl"
    for path in (scaleout_file,) if keep_throughput else (throughput_file, scaleout_file):
        path.unlink(missing_ok=True)
    for count in [] if keep_throughput else cpus:
        ingest.run_apart([__file__, "--repeats", str(repeats), "--child", "throughput", str(count),
                          str(throughput_file)], REPO)
    throughput, (name, crop, batch), scale_cpus = ingest.read_rows(throughput_file), SCALEOUT_CASE, max(cpus)
    supply = ingest.mean([r["images_per_s"] for r in throughput
                          if (r["kind"], r["crop"], r["cpus"]) == (name, crop, scale_cpus)])
    ingest.run_apart([__file__, "--repeats", str(repeats), "--child", "scaleout", str(scale_cpus), str(scaleout_file),
                      str(round(supply, 2))], REPO)
    scaleout = ingest.read_rows(scaleout_file)
    setup = {"kind": name, "crop": crop, "local_batch": batch, "cpus": scale_cpus,
             "supply_images_per_s": round(supply, 2), "step_s": scaleout[0]["step_s"] if scaleout else None}
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{os.cpu_count()} cores",
            "load_averages": [r["load_average"] for r in throughput + scaleout], "images": images,
            "throughput": throughput, "scaleout_setup": setup, "scaleout": scaleout}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2], help="CPU counts for the throughput runs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="rebuild ingest.md from ingest.json")
    parser.add_argument("--keep-throughput", action="store_true",
                        help="reuse the throughput rows of the last run (_work/ingest/raw) and rerun the scale-out")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup: stop the child and its Ray
    if args.child:
        part = {"throughput": run_throughput, "scaleout": run_scaleout}[args.child[0]]
        part(int(args.child[1]), args.repeats, Path(args.child[2]), *map(float, args.child[3:]))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.table:
        record = json.loads((RESULTS / "ingest.json").read_text())
    else:
        record = measure(args.cpus, args.repeats, args.keep_throughput)
    record["summary"] = ingest.summarise(record["throughput"], record["scaleout"], ingest.PUBLISHED, FASTER_GPU)
    (RESULTS / "ingest.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / "ingest.md").write_text(ingest.results_page(record, FASTER_GPU, ray_ingest.BENCH_BATCHES_PER_BLOCK))
    if not args.table:
        print((RESULTS / "ingest.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
