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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
WORK = REPO / "experiments" / "benchmarks" / "_work" / "ingest"
GENERATOR_VERSION = 1  # bump when the images change, so cached ones are rebuilt

# ----------------------------------------------------------------------------------------------------------------
# Synthetic photo-like images
# ----------------------------------------------------------------------------------------------------------------


def upsampled_noise(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int]) -> np.ndarray:
    """``(height, width)`` float32 in about [-1, 1]: a ``cells`` grid of uniform noise, bicubic-upsampled (a
    smooth field whose features are ``height / cells[0]`` pixels across)."""
    grid = rng.uniform(-1.0, 1.0, size=(max(cells[0], 2), max(cells[1], 2))).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((width, height), Image.BICUBIC))


def pink_texture(rng: np.random.Generator, height: int, width: int, finest: int = 2) -> np.ndarray:
    """``(height, width)`` float32 texture with an amplitude about proportional to feature size (the 1/f
    spectrum of natural images): octaves of :func:`upsampled_noise` from 1/32 of the image down to ``finest``
    pixels, each half the amplitude of the coarser one; standard deviation about 0.5."""
    texture = np.zeros((height, width), np.float32)
    cell, amplitude = max(height, width) / 32, 1.0
    while cell >= finest:
        texture += amplitude * upsampled_noise(rng, height, width, (round(height / cell), round(width / cell)))
        cell, amplitude = cell / 2, amplitude / 2
    return texture


def photo_like(rng: np.random.Generator, regions: np.ndarray, sensor_noise: float = 2.0) -> np.ndarray:
    """``(H, W)`` region ids (any ints) → ``(H, W, 3)`` uint8 RGB that compresses like a photograph.

    Each region gets its own colour; on top lie a smooth lighting gradient over the whole image (a 3×4 grid,
    bicubic), a 1/f texture (:func:`pink_texture`) mostly in brightness (±40 grey levels, shared by the three
    channels) with a weaker colour part (±10 per channel), and Gaussian sensor noise (``sensor_noise`` levels):
    flat colours would compress far better than photos, pure noise far worse.
    """
    height, width = regions.shape
    ids, inverse = np.unique(regions, return_inverse=True)
    colours = rng.uniform(40, 215, size=(len(ids), 3)).astype(np.float32)
    image = colours[inverse.reshape(height, width)]
    brightness = 35.0 * upsampled_noise(rng, height, width, (3, 4)) + 40.0 * pink_texture(rng, height, width)
    for channel in range(3):
        image[..., channel] += brightness + 10.0 * pink_texture(rng, height, width)
    image += rng.normal(0.0, sensor_noise, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _ellipse(height: int, width: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.ogrid[:height, :width]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """``(H, W)`` bool: pixels within ``width`` of a label change (VOC marks these 255, "void")."""
    edge = np.zeros(mask.shape, bool)
    edge[1:] |= mask[1:] != mask[:-1]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    grown = edge.copy()
    for shift in range(1, width // 2 + 1):
        grown[shift:] |= edge[:-shift]
        grown[:-shift] |= edge[shift:]
        grown[:, shift:] |= edge[:, :-shift]
        grown[:, :-shift] |= edge[:, shift:]
    return grown


def voc_like_scene(rng: np.random.Generator, height: int = 375, width: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """``(regions, mask)``, both ``(H, W)`` uint8 VOC class ids: background 0 and one to three elliptical
    objects of classes 1..20; the mask adds a 4-pixel void border (255) along every object outline, as VOC's
    masks have (the image is drawn from ``regions``, without the border)."""
    regions = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.1, 0.4) * height, rng.uniform(0.1, 0.4) * width
        regions[_ellipse(height, width, cy, cx, ry, rx)] = rng.integers(1, 21)
    mask = regions.copy()
    mask[_boundary(regions, 4)] = 255
    return regions, mask


CITYSCAPES_IDS = {"road": 7, "sidewalk": 8, "building": 11, "pole": 17, "vegetation": 21, "sky": 23,
                  "person": 24, "car": 26, "ego_vehicle": 1}  # fmt: skip


def cityscapes_like_mask(rng: np.random.Generator, height: int = 1024, width: int = 2048) -> np.ndarray:
    """``(H, W)`` uint8 Cityscapes label ids (``*_labelIds.png`` values): sky, buildings, vegetation, road and
    sidewalk in horizontal bands with a wavy skyline, then poles, cars and people as boxes, and the ego vehicle
    (id 1, ignored) along the bottom."""
    ids = CITYSCAPES_IDS
    mask = np.full((height, width), ids["road"], np.uint8)
    skyline = (0.25 + 0.15 * upsampled_noise(rng, 1, width, (1, 12))[0]) * height
    rows = np.arange(height)[:, None]
    mask[rows < skyline[None, :]] = ids["sky"]
    horizon = int(rng.uniform(0.45, 0.55) * height)
    buildings = (rows >= skyline[None, :]) & (rows < horizon)
    mask[buildings] = ids["building"]
    trees = upsampled_noise(rng, height, width, (8, 16)) > 0.3
    mask[buildings & trees] = ids["vegetation"]
    mask[horizon : horizon + height // 12, : width // 3] = ids["sidewalk"]
    for name, count, (h_lo, h_hi), aspect in (("pole", 6, (0.2, 0.4), 0.05), ("car", 4, (0.08, 0.18), 2.0),
                                              ("person", 5, (0.08, 0.2), 0.4)):
        for _ in range(count):
            box_h = int(rng.uniform(h_lo, h_hi) * height)
            box_w = max(4, int(box_h * aspect))
            bottom = int(rng.uniform(horizon + 0.02 * height, 0.85 * height))
            left = int(rng.uniform(0, width - box_w))
            mask[max(bottom - box_h, 0) : bottom, left : left + box_w] = ids[name]
    mask[int(0.88 * height) :] = ids["ego_vehicle"]
    return mask


@lru_cache(maxsize=1)
def _voc_palette_bytes() -> tuple[int, ...]:
    """raysemi's VOC colour map for all 256 indices, flattened ``(r, g, b, r, g, b, ...)``."""
    from raysemi.data.formats import voc_palette

    return tuple(channel for colour in voc_palette(256) for channel in colour)


def save_voc_mask(mask: np.ndarray, path: Path) -> None:
    """A palette ("P") PNG with the VOC colour map, as VOC's ``SegmentationClass`` files are stored."""
    image = Image.fromarray(mask, mode="P")
    image.putpalette(list(_voc_palette_bytes()))
    image.save(path)


@dataclass(frozen=True)
class Kind:
    """One synthetic dataset: its raysemi format, image size ``(H, W)``, how many images, and what real files
    of that kind weigh (for comparison in the report)."""

    name: str
    format: str
    size: tuple[int, int]
    count: int
    reference_bytes: str


VOC = Kind("voc_like", "voc", (375, 500), 48,
           "VOC2012 JPEGs ≈ 0.1 MB (VOCtrainval_11-May-2012.tar: 1.9 GB, 17,125 images, annotations included)")
CITYSCAPES = Kind("cityscapes_like", "cityscapes", (1024, 2048), 24,
                  "Cityscapes leftImg8bit PNGs ≈ 2.2 MB (leftImg8bit_trainvaltest.zip: 11 GB, 5,000 images)")
VOC_JPEG_QUALITY, VOC_SENSOR_NOISE, CITYSCAPES_SENSOR_NOISE = 95, 3.0, 1.5  # files near the real sizes
KINDS = {kind.name: kind for kind in (VOC, CITYSCAPES)}


def write_voc_like(root: Path, count: int, seed: int = 0) -> None:
    """A VOC2012 tree under ``root``: ``JPEGImages/*.jpg`` (500×375, quality 90), ``SegmentationClass/*.png``
    (palette PNGs) and ``ImageSets/Segmentation/{train,val}.txt`` (all images in train, the first 2 in val)."""
    base = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    names = [f"2007_{index:06d}" for index in range(count)]
    for index, name in enumerate(names):
        rng = np.random.default_rng([seed, index])
        regions, mask = voc_like_scene(rng, *VOC.size)
        image = photo_like(rng, regions, sensor_noise=VOC_SENSOR_NOISE)
        Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg", quality=VOC_JPEG_QUALITY)
        save_voc_mask(mask, base / "SegmentationClass" / f"{name}.png")
    (base / "ImageSets/Segmentation/train.txt").write_text("\n".join(names) + "\n")
    (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(names[:2]) + "\n")


def write_cityscapes_like(root: Path, count: int, seed: int = 0, size: tuple[int, int] = CITYSCAPES.size) -> None:
    """A Cityscapes tree under ``root``: ``leftImg8bit/{train,val}/synth/*_leftImg8bit.png`` (RGB, ``size`` =
    ``(H, W)``, 1024×2048 by default) and ``gtFine/.../*_gtFine_labelIds.png`` (8-bit grey label ids); the first
    2 images also form val."""
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        mask = cityscapes_like_mask(rng, *size)
        image = Image.fromarray(photo_like(rng, mask, sensor_noise=CITYSCAPES_SENSOR_NOISE))
        for split in ("train", "val") if index < 2 else ("train",):
            stem = f"synth_{index:06d}_000019"
            image_dir, mask_dir = root / "leftImg8bit" / split / "synth", root / "gtFine" / split / "synth"
            image_dir.mkdir(parents=True, exist_ok=True)
            mask_dir.mkdir(parents=True, exist_ok=True)
            image.save(image_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(mask, mode="L").save(mask_dir / f"{stem}_gtFine_labelIds.png")


def ensure_images(kind: Kind, work: Path = WORK) -> Path:
    """The root of ``kind``'s synthetic dataset, generated on first use (a marker file records the version)."""
    root = work / kind.name
    marker = root / f".done-v{GENERATOR_VERSION}-{kind.count}"
    if not marker.is_file():
        print(f"generating {kind.count} {kind.name} images in {root}", flush=True)
        (write_voc_like if kind.format == "voc" else write_cityscapes_like)(root, kind.count)
        marker.write_text("")
    return root


def file_sizes(root: Path) -> dict[str, float]:
    """Mean size in KB of the images and the masks of a generated tree."""
    images = [p for p in root.rglob("*") if p.suffix == ".jpg" or p.name.endswith("_leftImg8bit.png")]
    masks = [p for p in root.rglob("*.png") if p not in set(images)]
    return {"image_kb": round(float(np.mean([p.stat().st_size for p in images])) / 1e3, 1),
            "mask_kb": round(float(np.mean([p.stat().st_size for p in masks])) / 1e3, 1)}


# ----------------------------------------------------------------------------------------------------------------
# Sizing arithmetic
# ----------------------------------------------------------------------------------------------------------------


def cpus_per_gpu(images_per_step: float, step_time_s: float, images_per_cpu_s: float,
                 max_load: float = 1.0) -> float:
    """CPUs that keep one GPU fed: the GPU's demand (``images_per_step / step_time_s`` images/s) over what one
    CPU supplies (``images_per_cpu_s``), divided by ``max_load``, the highest demand / supply ratio at which
    data wait stayed under the limit (so 0.8 asks for 25 % spare supply)."""
    for name, value in (("images_per_step", images_per_step), ("step_time_s", step_time_s),
                        ("images_per_cpu_s", images_per_cpu_s), ("max_load", max_load)):
        if not value > 0:
            raise ValueError(f"{name}={value!r}: must be a positive number")
    return images_per_step / step_time_s / images_per_cpu_s / max_load


def max_load_under(points: list[dict], wait_limit: float = 0.05) -> float | None:
    """The largest ``load`` (demand / supply) among scale-out points whose ``wait_fraction`` is under
    ``wait_limit`` and below which every point also stayed under it; None when even the lightest failed."""
    best = None
    for point in sorted(points, key=lambda p: p["load"]):
        if point["wait_fraction"] >= wait_limit:
            break
        best = point["load"]
    return best


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


class TreeCpu:
    """CPU seconds (user + system) used since construction by this process and all its descendants, split
    into ``workers`` (Ray's task and actor processes, ``ray::*``: decoding, augmentation, Ray Data's own
    actors), ``driver`` (this process: batching, the consumer's side) and ``daemons`` (raylet, GCS, log
    monitor: a cost per node and second, not per image). :meth:`sample` between batches keeps the last reading
    of every process, so a worker that Ray ends during the measurement still counts up to its last sample."""

    def __init__(self) -> None:
        self.start = self._read()
        self.last = dict(self.start)

    @staticmethod
    def _read() -> dict[tuple[int, float, str], float]:
        import psutil

        readings = {}
        root = psutil.Process()
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
                role = "driver" if process.pid == root.pid else (
                    "workers" if process.name().startswith("ray::") else "daemons")
                readings[(process.pid, process.create_time(), role)] = times.user + times.system
            except psutil.Error:  # exited between listing and reading
                pass
        return readings

    def sample(self) -> dict[str, float]:
        """``{"workers", "driver", "daemons": CPU seconds used since construction, "started": processes
        started since}``."""
        self.last.update(self._read())
        used = {"workers": 0.0, "driver": 0.0, "daemons": 0.0, "started": 0}
        for key, seconds in self.last.items():
            used[key[2]] += seconds - self.start.get(key, 0.0)
            used["started"] += key not in self.start
        return used


def plain_loop_rate(kind: Kind, root: Path, crop: int, images: int) -> dict:
    """The same decode + augmentation (raysemi's ``DecodeTrainBatch``) called in this process, one thread, no
    Ray: images per CPU-second of this process alone, the floor that Ray's per-image overhead adds to."""
    import torch

    from raysemi.data.pipeline import DecodeTrainBatch
    from raysemi.data.transforms import TrainAugment

    torch.set_num_threads(1)
    decode = DecodeTrainBatch(kind.format, str(root), TrainAugment((crop, crop)))
    names = sorted(Path(root).rglob("*.jpg" if kind.format == "voc" else "*_leftImg8bit.png"))
    records = [_record(kind, path, seed) for seed, path in zip(range(images), names * (images // len(names) + 1))]
    decode({key: np.array([r[key] for r in records[:2]]) for key in records[0]})  # warm-up: imports, caches
    start = time.process_time()
    for first in range(0, images, 8):
        chunk = records[first : first + 8]
        decode({key: np.array([r[key] for r in chunk]) for key in chunk[0]})
    cpu = time.process_time() - start
    return {"images": images, "cpu_seconds": round(cpu, 2), "images_per_cpu_s": round(images / cpu, 2)}


def _record(kind: Kind, image: Path, seed: int) -> dict:
    """A stream record (as :func:`raysemi.data.pipeline.plan_records` writes) for a generated image."""
    if kind.format == "voc":
        mask = image.parents[1] / "SegmentationClass" / f"{image.stem}.png"
    else:
        stem = image.name.removesuffix("_leftImg8bit.png")
        mask = Path(str(image.parent).replace("leftImg8bit", "gtFine")) / f"{stem}_gtFine_labelIds.png"
    return {"image_path": str(image), "mask_path": str(mask), "seed": seed}


def measure_throughput(kind: Kind, root: Path, crop: int, local_batch: int, steps: int) -> dict:
    """Read one stream to its end on the driver: images/s of wall clock (which the machine's other load
    stretches) and images per CPU-second of the Ray workers, of workers + driver, and of the whole tree."""
    dataset = training_stream(kind, root, crop, local_batch, steps)
    cpu, start = TreeCpu(), time.perf_counter()
    images = 0
    for batch in dataset.iter_batches(batch_size=local_batch, batch_format="numpy", prefetch_batches=4):
        images += len(batch["image"])
        cpu.sample()
    seconds, used = time.perf_counter() - start, cpu.sample()
    return {"images": images, "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 2),
            "cpu_seconds": {role: round(value, 2) for role, value in used.items()},
            "images_per_cpu_s": round(images / (used["workers"] + used["driver"]), 2),
            "images_per_worker_cpu_s": round(images / used["workers"], 2),
            "images_per_tree_cpu_s": round(images / (used["workers"] + used["driver"] + used["daemons"]), 2),
            "load_average": round(os.getloadavg()[0], 2)}


class Consumer:
    """One simulated training worker (a Ray actor with ``num_cpus=0``, kept across runs so its start-up and
    imports are paid once): take a batch, 'compute' for ``step_s`` (a sleep: no CPU), repeat."""

    def run(self, shard, local_batch: int, step_s: float) -> dict:
        """Read ``shard`` to its end as raysemi's loop does. Returns the wait for the first batch (the pipeline
        filling) and, after it, the total wait and time."""
        batches = iter(shard.iter_torch_batches(batch_size=local_batch, drop_last=True, prefetch_batches=4))
        waits = []
        start = time.perf_counter()
        while True:
            asked = time.perf_counter()
            try:
                next(batches)
            except StopIteration:
                break
            waits.append(time.perf_counter() - asked)
            time.sleep(step_s)
        total = time.perf_counter() - start
        return {"steps": len(waits), "first_wait_s": waits[0], "wait_s": sum(waits[1:]),
                "seconds": total - waits[0]}


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
    roots = {name: ensure_images(KINDS[name]) for name in KINDS}
    measure_throughput(VOC, roots["voc_like"], 321, 8, 2 * cpus * 2)  # warm-up: start every decode worker
    for repeat in range(repeats):
        for name, crop, batch, steps in THROUGHPUT_CASES:
            if cpus == 1:
                row = plain_loop_rate(KINDS[name], roots[name], crop, PLAIN_LOOP_IMAGES[name])
                row |= {"kind": name, "crop": crop, "cpus": 0, "repeat": repeat, "mode": "plain loop",
                        "load_average": round(os.getloadavg()[0], 2)}
                print(json.dumps(row), flush=True)
                with out.open("a") as file:
                    file.write(json.dumps(row) + "\n")
            row = measure_throughput(KINDS[name], roots[name], crop, batch, steps * cpus)
            row |= {"kind": name, "crop": crop, "local_batch": batch, "cpus": cpus, "repeat": repeat}
            print(json.dumps(row), flush=True)
            with out.open("a") as file:
                file.write(json.dumps(row) + "\n")


def run_scaleout(cpus: int, repeats: int, supply: float, out: Path) -> None:
    """The scale-out with ``cpus`` CPUs: the step time is set so one consumer asks for a quarter of
    ``supply`` (images/s measured with these CPUs), so N consumers put a load of about N / 4 on the stream.
    The supply is measured again (one reader, no sleep) just before each point, since the shared machine's
    load moves it; a point's load is its demand over that supply."""
    start_ray(cpus)
    name, crop, batch = SCALEOUT_CASE
    root = ensure_images(KINDS[name])
    step_s = round(batch / (supply / 4), 3)
    steps = max(8, round(SCALEOUT_SECONDS / step_s))
    measure_throughput(KINDS[name], root, crop, batch, 2 * cpus * 2)  # warm-up
    actors = start_consumers(max(SCALEOUT_CONSUMERS))
    for repeat in range(repeats):
        for consumers in SCALEOUT_CONSUMERS:
            supply_now = measure_throughput(KINDS[name], root, crop, batch, SUPPLY_STEPS * cpus)["images_per_s"]
            row = measure_scaleout(KINDS[name], root, crop, batch, steps, actors[:consumers], step_s)
            demand = consumers * batch / step_s
            row |= {"kind": name, "crop": crop, "cpus": cpus, "repeat": repeat, "supply_images_per_s": supply_now,
                    "demand_images_per_s": round(demand, 2), "load": round(demand / supply_now, 3),
                    "nominal_load": round(demand / supply, 3)}
            print(json.dumps(row), flush=True)
            with out.open("a") as file:
                file.write(json.dumps(row) + "\n")


def child(argv: list[str]) -> None:
    """Run one part in a fresh process (its own Ray, its own CPU pinning); stopped with this one."""
    process = subprocess.Popen([sys.executable, __file__, *argv], cwd=REPO, env={
        **os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    try:
        if process.wait() != 0:
            raise SystemExit(f"ingest benchmark: part {argv[-3:]} failed with exit code {process.returncode}")
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


# ----------------------------------------------------------------------------------------------------------------
# Published GPU step times and the report
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedStep:
    """A published training step time of DeepLabv3+ ResNet-101 and the images each GPU decodes per step."""

    setting: str
    kind: str  # which of our measured streams stands in for its data
    crop: int
    images_per_step: int
    step_s: float
    source: str


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


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarise(throughput: list[dict], scaleout: list[dict]) -> dict:
    """Per-case means of the measurements, the scale-out curve, u* and the sizing table."""
    cases = {}
    for row in throughput:
        cases.setdefault((row["kind"], row["crop"], row["cpus"]), []).append(row)
    per_case = {}
    for (kind, crop, cpus), rows in cases.items():
        case = {"kind": kind, "crop": crop, "cpus": cpus, "mode": rows[0].get("mode", "ray data"),
                "images_per_cpu_s": [r["images_per_cpu_s"] for r in rows],
                "load_average": [r["load_average"] for r in rows]}
        if cpus:  # Ray Data runs
            case |= {"images_per_s": [r["images_per_s"] for r in rows],
                     "images_per_worker_cpu_s": [r["images_per_worker_cpu_s"] for r in rows],
                     "daemon_cpu_per_s": [round(r["cpu_seconds"]["daemons"] / r["seconds"], 3) for r in rows]}
        per_case[f"{kind}/{crop}/{cpus or 'plain'}"] = case
    # Sizing: the lower of the 1- and 2-CPU means of images per CPU-second (Ray workers + driver).
    per_cpu = {}
    for case in per_case.values():
        if case["cpus"]:
            key = (case["kind"], case["crop"])
            per_cpu[key] = min(per_cpu.get(key, float("inf")), mean(case["images_per_cpu_s"]))
    curve = {}
    for row in scaleout:
        curve.setdefault(row["consumers"], []).append(row)
    # Load = demand over the supply of the throughput runs (nominal): the supply measured just before each
    # point is a short read that includes the pipeline filling, so it reads low; it is shown, not used.
    points = [{"consumers": n, "load": mean([r.get("nominal_load", r["load"]) for r in rows]),
               "wait_fraction": mean([r["wait_fraction"] for r in rows]),
               "wait_fractions": [r["wait_fraction"] for r in rows],
               "first_wait_s": [r["first_wait_s"] for r in rows],
               "supply_before": [r["supply_images_per_s"] for r in rows if "nominal_load" in r],
               "delivered_images_per_s": [r.get("delivered_images_per_s") for r in rows]}
              for n, rows in sorted(curve.items())]
    max_load = max_load_under(points) if points else None
    sizing = []
    for step in PUBLISHED:
        rate = per_cpu.get((step.kind, step.crop))
        if rate is None or max_load is None:
            continue
        demand = step.images_per_step / step.step_s
        sizing.append({"setting": step.setting, "source": step.source, "images_per_step": step.images_per_step,
                       "step_s": step.step_s, "demand_images_per_s": round(demand, 2), "stream": f"{step.kind} "
                       f"crop {step.crop}", "images_per_cpu_s": round(rate, 2),
                       "cpus_per_gpu": round(cpus_per_gpu(step.images_per_step, step.step_s, rate, max_load), 2),
                       "cpus_per_gpu_faster_gpu": round(cpus_per_gpu(step.images_per_step, step.step_s / FASTER_GPU,
                                                                     rate, max_load), 2)})
    return {"cases": per_case, "scaleout": points, "max_load_under_5pct_wait": max_load, "sizing": sizing}


def markdown(record: dict) -> str:
    """The results page (``ingest.md``) from the JSON record."""
    summary = record["summary"]
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
    scale = record.get("scaleout_setup", {})
    lines += [
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
    return "\n".join(lines)


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
        record["summary"] = summarise(record["throughput"], record["scaleout"])
        (RESULTS / "ingest.json").write_text(json.dumps(record, indent=1) + "\n")
        (RESULTS / "ingest.md").write_text(markdown(record))
        return 0
    images = {name: file_sizes(ensure_images(kind)) for name, kind in KINDS.items()}
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
              "summary": summarise(throughput, scaleout)}
    (RESULTS / "ingest.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / "ingest.md").write_text(markdown(record))
    print((RESULTS / "ingest.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
