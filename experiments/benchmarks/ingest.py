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
import subprocess
import sys
import time
from pathlib import Path

from raysemi.bench.ingest import (
    KINDS,
    VOC,
    VOC_JPEG_QUALITY,
    Kind,
    PublishedStep,
    consume,
    ensure_images,
    file_sizes,
    mean,
    measure_throughput,
    plain_loop_rate,
    summarise,
)

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
WORK = REPO / "experiments" / "benchmarks" / "_work" / "ingest"

# ----------------------------------------------------------------------------------------------------------------
# Measurements (Ray)
# ----------------------------------------------------------------------------------------------------------------

# Blocks of 2 batches instead of raysemi's 32 (raysemi.ray.data.BATCHES_PER_BLOCK), asked of build_datasets: a
# run of thousands of steps has dozens of 32-batch blocks, a benchmark of a few hundred images would have one (a
# single task, no overlap between CPUs).
BENCH_BATCHES_PER_BLOCK = 2


def training_stream(kind: Kind, root: Path, crop: int, local_batch: int, steps: int, consumers: int = 1):
    """The ``labeled`` Ray Dataset that raysemi builds for a ``supervised`` run on ``root`` with
    ``data.crop_size=crop`` and ``consumers`` training workers of ``local_batch`` images each."""
    import raysemi.ray.data as ray_data
    from raysemi.config import load_config
    from raysemi.data.dataset import open_dataset
    from raysemi.methods.registry import build_method

    cfg = load_config(None, [f"data.format={kind.format}", f"data.root={root}", f"data.crop_size=[{crop},{crop}]",
                             f"train.batch_size={local_batch * consumers}",
                             f"train.unlabeled_batch_size={local_batch * consumers}", f"train.steps={steps}",
                             f"scaling.num_workers={consumers}", "method=supervised"])
    return ray_data.build_datasets(cfg, open_dataset(cfg.data), build_method(cfg).streams(), 0,
                                   batches_per_block=BENCH_BATCHES_PER_BLOCK)["labeled"]


class Consumer:
    """One simulated training worker (a Ray actor with ``num_cpus=0``, kept across runs so its start-up and
    imports are paid once): :func:`raysemi.bench.ingest.consume` of its shard, read as raysemi's loop reads."""

    def run(self, shard, local_batch: int, step_s: float) -> dict:
        return consume(shard.iter_torch_batches(batch_size=local_batch, drop_last=True, prefetch_batches=4), step_s)


def start_consumers(count: int) -> list:
    """``count`` :class:`Consumer` actors that reserve no CPU (consumers holding CPUs would starve the decode
    tasks: on 2 CPUs a streaming read then hangs)."""
    import ray
    from ray import cloudpickle

    if Consumer.__module__ != "__main__":  # imported (tests, notebooks): ship the class, not its module name
        cloudpickle.register_pickle_by_value(sys.modules[Consumer.__module__])
    return [ray.remote(num_cpus=0)(Consumer).remote() for _ in range(count)]


def measure_scaleout(kind: Kind, root: Path, crop: int, local_batch: int, steps: int, consumers: list,
                     step_s: float) -> dict:
    """Each of the ``consumers`` actors reads one part of ``streaming_split(len(consumers), equal=True)`` (what
    ``ray.train.get_dataset_shard`` hands N workers) and sleeps ``step_s`` per batch of ``local_batch``."""
    import ray

    dataset = training_stream(kind, root, crop, local_batch, steps, len(consumers))
    shards = dataset.streaming_split(len(consumers), equal=True)
    results = ray.get([actor.run.remote(shard, local_batch, step_s) for actor, shard in zip(consumers, shards)])
    wait = sum(r["wait_s"] for r in results)
    seconds = sum(r["seconds"] for r in results)
    delivered = sum(r["steps"] - 1 for r in results) * local_batch / max(r["seconds"] for r in results)
    return {"consumers": len(consumers), "step_s": step_s, "local_batch": local_batch,
            "wait_fraction": round(wait / seconds, 4), "delivered_images_per_s": round(delivered, 2),
            "first_wait_s": round(max(r["first_wait_s"] for r in results), 2),
            "steps_per_consumer": min(r["steps"] for r in results),
            "load_average": round(os.getloadavg()[0], 2)}


# ----------------------------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------------------------

# (kind, crop, local batch, steps per CPU): a few CPU-seconds per measurement.
THROUGHPUT_CASES = (("voc_like", 321, 8, 36), ("voc_like", 512, 8, 24), ("cityscapes_like", 768, 4, 12))
PLAIN_LOOP_IMAGES = {"voc_like": 32, "cityscapes_like": 8}
SCALEOUT_CASE = ("voc_like", 321, 4)  # the cheapest images: the hardest stream to keep up with
SCALEOUT_CONSUMERS = (1, 2, 3, 4, 6)
SCALEOUT_SECONDS = 20.0  # per consumer count: steps = this / step time
SUPPLY_STEPS = 32  # per CPU: the supply measured before each scale-out point (about 4 s)


def start_ray(cpus: int) -> None:
    """A fresh local Ray with ``cpus`` CPUs, pinned (with everything it starts) to the first ``cpus`` cores, so
    "1 CPU" means one core and not two half-CPU tasks spread over two."""
    import ray

    from raysemi.ray.data import configure_data_context

    available = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, available[:cpus])
    # Idle workers stay up between runs, as they do through a long training run: otherwise Ray ends the
    # second half-CPU worker after each run and the next run pays for a new process importing torch.
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="error",
             _system_config={"kill_idle_workers_interval_ms": 0})
    configure_data_context()


def run_throughput(cpus: int, repeats: int, out: Path) -> None:
    """Every throughput case ``repeats`` times with ``cpus`` CPUs (one warm-up pass first, so worker start-up
    and imports are not timed); one JSON line per measurement appended to ``out``."""
    start_ray(cpus)
    roots = {name: ensure_images(KINDS[name], WORK) for name in KINDS}
    measure_throughput(training_stream(VOC, roots["voc_like"], 321, 8, 2 * cpus * 2), 8)  # warm-up: every worker
    for repeat in range(repeats):
        for name, crop, batch, steps in THROUGHPUT_CASES:
            if cpus == 1:
                row = plain_loop_rate(KINDS[name], roots[name], crop, PLAIN_LOOP_IMAGES[name])
                append_row(out, row | {"kind": name, "crop": crop, "cpus": 0, "repeat": repeat, "mode": "plain loop",
                                       "load_average": round(os.getloadavg()[0], 2)})
            row = measure_throughput(training_stream(KINDS[name], roots[name], crop, batch, steps * cpus), batch)
            append_row(out, row | {"kind": name, "crop": crop, "local_batch": batch, "cpus": cpus, "repeat": repeat})


def run_scaleout(cpus: int, repeats: int, supply: float, out: Path) -> None:
    """The scale-out with ``cpus`` CPUs: the step time is set so one consumer asks for a quarter of
    ``supply`` (images/s measured with these CPUs), so N consumers put a load of about N / 4 on the stream.
    The supply is measured again (one reader, no sleep) just before each point, since the shared machine's
    load moves it; a point's load is its demand over that supply."""
    start_ray(cpus)
    name, crop, batch = SCALEOUT_CASE
    root = ensure_images(KINDS[name], WORK)
    step_s = round(batch / (supply / 4), 3)
    steps = max(8, round(SCALEOUT_SECONDS / step_s))
    measure_throughput(training_stream(KINDS[name], root, crop, batch, 2 * cpus * 2), batch)  # warm-up
    actors = start_consumers(max(SCALEOUT_CONSUMERS))
    for repeat in range(repeats):
        for consumers in SCALEOUT_CONSUMERS:
            supply_now = measure_throughput(training_stream(KINDS[name], root, crop, batch, SUPPLY_STEPS * cpus),
                                            batch)["images_per_s"]
            row = measure_scaleout(KINDS[name], root, crop, batch, steps, actors[:consumers], step_s)
            demand = consumers * batch / step_s
            append_row(out, row | {"kind": name, "crop": crop, "cpus": cpus, "repeat": repeat,
                                   "supply_images_per_s": supply_now, "demand_images_per_s": round(demand, 2),
                                   "load": round(demand / supply_now, 3), "nominal_load": round(demand / supply, 3)})


def child(argv: list[str]) -> None:
    """Run one part in a fresh process (its own Ray, its own CPU pinning); stopped with this one."""
    process = subprocess.Popen([sys.executable, __file__, *argv], cwd=REPO)
    try:
        if process.wait() != 0:
            raise SystemExit(f"ingest benchmark: part {argv[-3:]} failed with exit code {process.returncode}")
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()


def append_row(out: Path, row: dict) -> None:
    """Print a measurement and append it to ``out`` (one JSON line)."""
    print(json.dumps(row), flush=True)
    with out.open("a") as file:
        file.write(json.dumps(row) + "\n")


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


# ----------------------------------------------------------------------------------------------------------------
# Published GPU step times and the report
# ----------------------------------------------------------------------------------------------------------------


MMSEG = ("open-mmlab/mmsegmentation `docs/en/model_zoo.md`, \"Speed benchmark\": DeepLabV3+ R-101-V1c (output "
         "stride 8), input 1024×512, batch 2 per GPU, 8× V100 32 GB, PyTorch 1.5: 0.85 s/iter")
UNIMATCH = "LiheYoung/UniMatch `training-logs/{}` (timestamps of the `Iters:` lines; GPU model not stated)"
PUBLISHED = (
    PublishedStep("Cityscapes 512×1024, supervised, 2 img/GPU, V100", "cityscapes_like", 768, 2, 0.85, MMSEG),
    PublishedStep("Cityscapes 801, UniMatch, 2 labeled + 2 + 2 unlabeled img/GPU, 4 GPUs", "cityscapes_like", 768, 6,
                  0.592, UNIMATCH.format("Cityscapes/ResNet-101/1_8.log") + ": iters 40→320 in 165.8 s"),
    PublishedStep("VOC 321, UniMatch, 2 labeled + 2 + 2 unlabeled img/GPU", "voc_like", 321, 6, 0.669,
                  UNIMATCH.format("Pascal-VOC-2012/High-Quality-Split-Size321/ResNet-101/1464-run1.log")
                  + ": iters 0→1136 in 760 s"),
    PublishedStep("VOC 513, UniMatch, 4 labeled + 4 + 4 unlabeled img/GPU, 2 GPUs", "voc_like", 512, 12, 0.479,
                  UNIMATCH.format("Pascal-VOC-2012/U2PL-Split-Size513/ResNet-101/1_4.log")
                  + ": iters 0→868 in 416.1 s"),
)
FASTER_GPU = 3.0  # assumption, not a published number: a current GPU with AMP steps this much faster than these


def markdown(record: dict) -> str:
    """The results page (``ingest.md``) from the JSON record."""
    summary = record["summary"]
    sections = (images_section(record), throughput_section(summary), scaleout_section(record),
                sizing_section(summary))
    return "\n".join(line for section in sections for line in section)


def images_section(record: dict) -> list[str]:
    """The title, the machine's load, and the test images against the real datasets' files."""
    lines = [
        "# Ingest: Ray Data decode + augmentation per CPU, scale-out, CPUs per GPU",
        "",
        f"Run {record['date']} with `python experiments/benchmarks/ingest.py` on the shared 2-core machine, "
        f"**busy** (1-minute load average {min(record['load_averages'])}–{max(record['load_averages'])} during "
        "the measurements; another benchmark runs continuously). Absolute images/s of wall clock are from this "
        "loaded machine; images per CPU-second (CPU time of the Ray workers and the driver) and the ratios are "
        "what carry over.",
        "",
        "## Synthetic images",
        "",
        "| kind | size | codec | count | mean image | mean mask | real files |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, info in record["images"].items():
        kind = KINDS[name]
        codec = (f"JPEG q{VOC_JPEG_QUALITY} + palette PNG mask" if kind.format == "voc"
                 else "RGB PNG + 8-bit PNG labelIds")
        lines.append(f"| {name} | {kind.size[1]}×{kind.size[0]} | {codec} | {kind.count} | {info['image_kb']} KB | "
                     f"{info['mask_kb']} KB | {kind.reference_bytes} |")
    lines += [
        "",
        "Content: regions of the mask (VOC: background + 1–3 ellipses with a 4-pixel void border; Cityscapes: sky, "
        "buildings/vegetation, road, sidewalk, poles, cars, people, ego vehicle) each with its own colour, plus a "
        "smooth lighting gradient, a 1/f (\"pink\") texture in octaves down to 2 pixels, mostly in brightness, and "
        "Gaussian sensor noise, so the files compress like photographs (flat colours would compress far better, "
        "noise far worse).",
    ]
    return lines


def throughput_section(summary: dict) -> list[str]:
    """The per-CPU decode + augmentation cost of each stream, and the plain loop's."""
    lines = [
        "",
        "## Decode + augmentation throughput",
        "",
        "raysemi's own `labeled` stream of a `supervised` run (`raysemi.ray.data.build_datasets`: read, decode, "
        "random scale 0.75–1.5, pad, crop, flip, colour jitter in `map_batches` tasks of 0.5 CPU), read to the end "
        "on the driver; Ray pinned to 1 or 2 cores; one warm-up pass first; two repeats (values: repeat 1 / "
        "repeat 2). CPU-seconds are read from every process of the Ray tree (psutil), so they do not stretch "
        "with the machine's load as wall time does: the CPU of the Ray workers (decode tasks, Ray Data's "
        "actors) plus the driver (which batches, as a training worker would) is the cost per image; the daemons "
        "(raylet, GCS) cost CPU per second and node, not per image. The plain loop calls the same "
        "`DecodeTrainBatch` in one process without Ray.",
        "",
        "| stream | CPUs | images/s (wall, loaded machine) | images per CPU-s (Ray workers + driver) | "
        "images per worker CPU-s | daemons' CPU-s per s | load average |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in summary["cases"].values():
        values = " / ".join(str(v) for v in case["images_per_cpu_s"])
        loads = " / ".join(str(v) for v in case["load_average"])
        if not case["cpus"]:
            lines.append(f"| {case['kind']} crop {case['crop']} | plain loop, no Ray, 1 thread | – | {values} (of "
                         f"this process) | – | – | {loads} |")
            continue
        lines.append(f"| {case['kind']} crop {case['crop']} | {case['cpus']} | "
                     f"{' / '.join(str(v) for v in case['images_per_s'])} | {values} | "
                     f"{' / '.join(str(v) for v in case['images_per_worker_cpu_s'])} | "
                     f"{' / '.join(str(v) for v in case['daemon_cpu_per_s'])} | {loads} |")
    return lines


def scaleout_section(record: dict) -> list[str]:
    """The data wait of N simulated workers against the load they put on the stream, and u*."""
    scale, summary = record.get("scaleout_setup", {}), record["summary"]
    lines = [
        "",
        "## Simulated scale-out",
        "",
        f"N consumers (Ray actors, `num_cpus=0`) each read one part of `streaming_split(N, equal=True)` of the "
        f"{scale.get('kind')} crop {scale.get('crop')} stream with `iter_torch_batches(prefetch_batches=4)` and "
        f"sleep a fixed step time of {scale.get('step_s')} s per batch of {scale.get('local_batch')}, so that one "
        f"consumer asks for a quarter of the {scale.get('supply_images_per_s')} images/s the stream delivered with "
        f"{scale.get('cpus')} CPUs in the throughput runs: the load (demand / supply) is N / 4. The shared "
        "machine's load moves the supply: each point also shows the supply read just before it (one reader, no "
        "sleep; a short read that includes the pipeline filling, so it reads low) and the images the N "
        "consumers received per second (delivered). Data wait = time blocked in `next()` / time after the "
        "first batch (the first wait, the pipeline filling, is shown apart). Values per repeat are separated "
        "by /.",
        "",
        "| consumers N | load | data wait (mean) | data wait per repeat | delivered (img/s) | supply just before "
        "(img/s) | first batch wait (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for point in summary["scaleout"]:
        delivered = " / ".join(str(v) for v in point.get("delivered_images_per_s", []) if v is not None) or "–"
        supply = " / ".join(str(v) for v in point.get("supply_before", [])) or "–"
        lines.append(f"| {point['consumers']} | {point['load']:.2f} | {100 * point['wait_fraction']:.1f} % | "
                     f"{' / '.join(f'{100 * w:.1f} %' for w in point['wait_fractions'])} | {delivered} | "
                     f"{supply} | {' / '.join(str(w) for w in point['first_wait_s'])} |")
    max_load = summary["max_load_under_5pct_wait"]
    if record.get("scaleout_note"):
        lines += ["", f"Repeats: {record['scaleout_note']}."]
    lines += [
        "",
        "On a loaded machine the wait at one load varies from repeat to repeat (the other jobs take the CPUs at "
        "will; see the values per repeat), so u\\* below is read from the means.",
        "",
        f"Largest load with data wait under 5 % (mean of the repeats, every lighter point under 5 % too): "
        f"**u\\* = {max_load if max_load is None else round(max_load, 2)}**.",
    ]
    return lines


def sizing_section(summary: dict) -> list[str]:
    """CPUs per GPU for each published step, its sources and the caveats."""
    lines = [
        "",
        "## CPUs per GPU to keep data wait under 5 %",
        "",
        "CPUs per GPU = (images per GPU step / step time) / (images per CPU-second) / u\\*, with images per "
        "CPU-second the lower of the 1- and 2-CPU means of the matching stream. Step times are **published** "
        "numbers for DeepLabv3+ ResNet-101 (sources below the table); the last column assumes a GPU "
        f"{FASTER_GPU:g}× faster than the published one (an assumption, not a published number).",
        "",
        "| published setting | images / GPU step | step (s) | GPU demand (img/s) | our stream | img per CPU-s | "
        f"CPUs per GPU | CPUs per GPU, {FASTER_GPU:g}× faster GPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["sizing"]:
        lines.append(f"| {row['setting']} | {row['images_per_step']} | {row['step_s']} | "
                     f"{row['demand_images_per_s']} | {row['stream']} | {row['images_per_cpu_s']} | "
                     f"**{row['cpus_per_gpu']}** | {row['cpus_per_gpu_faster_gpu']} |")
    lines += ["", "Sources:", ""]
    lines += [f"- {row['setting']}: {row['source']}." for row in summary["sizing"]]
    lines += [
        "",
        "UniMatch reads a labeled and two unlabeled loaders of `batch_size` images each per step (its "
        "`unimatch.py`), so a GPU step consumes 3 × batch images.",
        "",
        "Caveats: UniMatch's unlabeled images also get strong augmentation (colour jitter, grey, blur, CutMix) that "
        "raysemi's stream here does not, so its real CPU need is higher than this table; the Cityscapes rows use "
        "our 768 crop for 512×1024 and 801 crops (the cost is dominated by decoding and resizing the whole "
        "2048×1024 image, not by the crop). The benchmark uses blocks of "
        f"{BENCH_BATCHES_PER_BLOCK} batches (raysemi's runs: 32) so that short runs spread over every CPU.",
        "",
    ]
    return lines


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
        part, cpus, out = args.child[0], int(args.child[1]), Path(args.child[2])
        if part == "throughput":
            run_throughput(cpus, args.repeats, out)
        else:
            run_scaleout(cpus, args.repeats, float(args.child[3]), out)
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.table:
        record = json.loads((RESULTS / "ingest.json").read_text())
        record["summary"] = summarise(record["throughput"], record["scaleout"], PUBLISHED, FASTER_GPU)
        (RESULTS / "ingest.json").write_text(json.dumps(record, indent=1) + "\n")
        (RESULTS / "ingest.md").write_text(markdown(record))
        return 0
    images = {name: file_sizes(ensure_images(kind, WORK)) for name, kind in KINDS.items()}
    raw = WORK / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    throughput_file, scaleout_file = raw / "throughput.jsonl", raw / "scaleout.jsonl"
    for path in (scaleout_file,) if args.keep_throughput else (throughput_file, scaleout_file):
        path.unlink(missing_ok=True)
    for cpus in [] if args.keep_throughput else args.cpus:
        child(["--repeats", str(args.repeats), "--child", "throughput", str(cpus), str(throughput_file)])
    throughput = read_lines(throughput_file)
    scale_cpus = max(args.cpus)
    name, crop, batch = SCALEOUT_CASE
    supply = mean([r["images_per_s"] for r in throughput
                   if (r["kind"], r["crop"], r["cpus"]) == (name, crop, scale_cpus)])
    child(["--repeats", str(args.repeats), "--child", "scaleout", str(scale_cpus), str(scaleout_file),
           str(round(supply, 2))])
    scaleout = read_lines(scaleout_file)
    setup = {"kind": name, "crop": crop, "local_batch": batch, "cpus": scale_cpus,
             "supply_images_per_s": round(supply, 2), "step_s": scaleout[0]["step_s"] if scaleout else None}
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{os.cpu_count()} cores",
              "load_averages": [r["load_average"] for r in throughput + scaleout], "images": images,
              "throughput": throughput, "scaleout_setup": setup, "scaleout": scaleout,
              "summary": summarise(throughput, scaleout, PUBLISHED, FASTER_GPU)}
    (RESULTS / "ingest.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / "ingest.md").write_text(markdown(record))
    print((RESULTS / "ingest.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
