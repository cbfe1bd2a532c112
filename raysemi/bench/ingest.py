"""Sizing data loading: how many CPUs per GPU keep a segmentation GPU fed.

The answer is (images per GPU step / step time) / (images one CPU decodes and augments per second) / u*, where
u* is the highest load (demand / supply) at which training still waits for data less than a limit
(:func:`cpus_per_gpu`, :func:`max_load_under`, :func:`summarise`). The pieces to measure it:

- test images at VOC and Cityscapes sizes and codecs, in their real folder layouts, that compress like photos
  (:func:`ensure_images`, :func:`write_voc_like`, :func:`write_cityscapes_like`);
- images per CPU-second of a stream read to its end (:func:`measure_throughput`, counting the CPU of every
  process under this one with :class:`TreeCpu`), and of the same decoding in one process with no Ray
  (:func:`plain_loop_rate`);
- a simulated training worker that reads its shard and sleeps a fixed step time (:func:`consume`);
- measurement rows kept as JSON lines (:func:`append_row`, :func:`read_rows`), each part of a benchmark in a
  process of its own (:func:`run_apart`);
- the published step times to size for (:data:`PUBLISHED`) and the results page (:func:`results_page`).

The streams themselves are Ray Datasets that :mod:`raysemi.ray.ingest` builds (raysemi's training stream,
:func:`raysemi.ray.data.build_datasets`) and reads with simulated workers; this module takes them as arguments
and never imports Ray (``experiments/benchmarks/ingest.py`` puts the two together).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from raysemi.progress import say

GENERATOR_VERSION = 1  # bump when the images change, so cached ones are rebuilt

# ----------------------------------------------------------------------------------------------------------------
# Test images
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
    """One set of test images: its raysemi format, image size ``(H, W)``, how many images, and what the real
    dataset's files weigh (for comparison in a report)."""

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
    """A VOC2012 tree under ``root``: ``JPEGImages/*.jpg`` (500×375, quality :data:`VOC_JPEG_QUALITY`),
    ``SegmentationClass/*.png`` (palette PNGs) and ``ImageSets/Segmentation/{train,val}.txt`` (all images in
    train, the first 2 in val)."""
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


def ensure_images(kind: Kind, work: Path) -> Path:
    """The root of ``kind``'s test images under ``work``, generated on first use (a marker file records the
    generator's version)."""
    root = work / kind.name
    marker = root / f".done-v{GENERATOR_VERSION}-{kind.count}"
    if not marker.is_file():
        say(f"generating {kind.count} {kind.name} images in {root}")
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
# Measuring
# ----------------------------------------------------------------------------------------------------------------


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


def measure_throughput(dataset: Any, local_batch: int) -> dict:
    """Read ``dataset`` (a Ray Dataset: anything with ``iter_batches``) to its end in this process: images/s of
    wall clock (which the machine's other load stretches) and images per CPU-second of the Ray workers, of
    workers + driver, and of the whole process tree (:class:`TreeCpu`)."""
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


def consume(batches: Iterable[Any], step_s: float, clock: Callable[[], float] = time.perf_counter,
            sleep: Callable[[float], None] = time.sleep) -> dict[str, float]:
    """A simulated training worker: take a batch, 'compute' for ``step_s`` (a sleep: no CPU), repeat to the
    end of ``batches``. Returns ``steps``, the wait for the first batch (``first_wait_s``: the pipeline
    filling) and, after it, the total wait for data (``wait_s``) and the time (``seconds``)."""
    iterator: Iterator[Any] = iter(batches)
    waits = []
    start = clock()
    while True:
        asked = clock()
        try:
            next(iterator)
        except StopIteration:
            break
        waits.append(clock() - asked)
        sleep(step_s)
    if not waits:
        raise ValueError("consume: the stream held no batch")
    return {"steps": len(waits), "first_wait_s": waits[0], "wait_s": sum(waits[1:]),
            "seconds": clock() - start - waits[0]}


def append_row(out: Path, row: dict) -> None:
    """Print a measurement and append it to ``out`` (one JSON line)."""
    print(json.dumps(row), flush=True)
    with out.open("a") as file:
        file.write(json.dumps(row) + "\n")


def read_rows(path: Path) -> list[dict]:
    """The rows :func:`append_row` wrote to ``path`` (none when it does not exist)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def run_apart(argv: list[str], cwd: Path) -> None:
    """Run ``python *argv`` in ``cwd`` in a fresh process (a measurement with its own Ray and its own CPU
    pinning) and wait for it; it is stopped with this one, and its failure ends this one (``SystemExit``)."""
    process = subprocess.Popen([sys.executable, *argv], cwd=cwd)
    try:
        if process.wait() != 0:
            raise SystemExit(f"{' '.join(argv)} failed with exit code {process.returncode}")
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()


# ----------------------------------------------------------------------------------------------------------------
# Sizing
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


@dataclass(frozen=True)
class PublishedStep:
    """A published training step time (seconds) and the images each GPU decodes per step; ``kind`` and ``crop``
    name the measured stream that stands in for its data, ``source`` where the number comes from."""

    setting: str
    kind: str
    crop: int
    images_per_step: int
    step_s: float
    source: str


_MMSEG = ("open-mmlab/mmsegmentation `docs/en/model_zoo.md`, \"Speed benchmark\": DeepLabV3+ R-101-V1c (output "
         "stride 8), input 1024×512, batch 2 per GPU, 8× V100 32 GB, PyTorch 1.5: 0.85 s/iter")
_UNIMATCH = "LiheYoung/UniMatch `training-logs/{}` (timestamps of the `Iters:` lines; GPU model not stated)"
# Published DeepLabv3+ ResNet-101 training steps, each with the measured stream that stands in for its data.
PUBLISHED = (
    PublishedStep("Cityscapes 512×1024, supervised, 2 img/GPU, V100", "cityscapes_like", 768, 2, 0.85, _MMSEG),
    PublishedStep("Cityscapes 801, UniMatch, 2 labeled + 2 + 2 unlabeled img/GPU, 4 GPUs", "cityscapes_like", 768, 6,
                  0.592, _UNIMATCH.format("Cityscapes/ResNet-101/1_8.log") + ": iters 40→320 in 165.8 s"),
    PublishedStep("VOC 321, UniMatch, 2 labeled + 2 + 2 unlabeled img/GPU", "voc_like", 321, 6, 0.669,
                  _UNIMATCH.format("Pascal-VOC-2012/High-Quality-Split-Size321/ResNet-101/1464-run1.log")
                  + ": iters 0→1136 in 760 s"),
    PublishedStep("VOC 513, UniMatch, 4 labeled + 4 + 4 unlabeled img/GPU, 2 GPUs", "voc_like", 512, 12, 0.479,
                  _UNIMATCH.format("Pascal-VOC-2012/U2PL-Split-Size513/ResNet-101/1_4.log")
                  + ": iters 0→868 in 416.1 s"),
)

def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarise(throughput: list[dict], scaleout: list[dict], published: Iterable[PublishedStep],
              faster_gpu: float) -> dict:
    """From the measurement rows: the per-case lists (:func:`case_lists`), the scale-out curve
    (:func:`scaleout_points`), u* (:func:`max_load_under` of its means, 5 % wait) and the CPUs per GPU of each
    ``published`` step (:func:`sizing_rows`; also at a step ``faster_gpu`` times shorter)."""
    cases = case_lists(throughput)
    points = scaleout_points(scaleout)
    max_load = max_load_under(points) if points else None
    return {"cases": cases, "scaleout": points, "max_load_under_5pct_wait": max_load,
            "sizing": sizing_rows(published, cheapest_per_cpu(cases), max_load, faster_gpu)}


def case_lists(throughput: list[dict]) -> dict[str, dict]:
    """``"<kind>/<crop>/<cpus or plain>"`` → that case's values, one per repeat: images per CPU-second and load
    average, and for Ray Data runs (``cpus`` > 0) images/s, images per worker CPU-second and the daemons'
    CPU-seconds per second."""
    grouped: dict[tuple, list[dict]] = {}
    for row in throughput:
        grouped.setdefault((row["kind"], row["crop"], row["cpus"]), []).append(row)
    cases = {}
    for (kind, crop, cpus), rows in grouped.items():
        case = {"kind": kind, "crop": crop, "cpus": cpus, "mode": rows[0].get("mode", "ray data"),
                "images_per_cpu_s": [r["images_per_cpu_s"] for r in rows],
                "load_average": [r["load_average"] for r in rows]}
        if cpus:
            case |= {"images_per_s": [r["images_per_s"] for r in rows],
                     "images_per_worker_cpu_s": [r["images_per_worker_cpu_s"] for r in rows],
                     "daemon_cpu_per_s": [round(r["cpu_seconds"]["daemons"] / r["seconds"], 3) for r in rows]}
        cases[f"{kind}/{crop}/{cpus or 'plain'}"] = case
    return cases


def cheapest_per_cpu(cases: dict[str, dict]) -> dict[tuple[str, int], float]:
    """``(kind, crop)`` → the lower of the Ray Data cases' means of images per CPU-second (over CPU counts)."""
    per_cpu: dict[tuple[str, int], float] = {}
    for case in cases.values():
        if case["cpus"]:
            key = (case["kind"], case["crop"])
            per_cpu[key] = min(per_cpu.get(key, float("inf")), mean(case["images_per_cpu_s"]))
    return per_cpu


def scaleout_points(scaleout: list[dict]) -> list[dict]:
    """One point per consumer count, over its repeats: the mean load and wait fraction, and each repeat's.

    The load is the demand over the supply of the throughput runs (``nominal_load`` where recorded): the supply
    measured just before each point is a short read that includes the pipeline filling, so it reads low; it is
    shown (``supply_before``), not used."""
    curve: dict[int, list[dict]] = {}
    for row in scaleout:
        curve.setdefault(row["consumers"], []).append(row)
    return [{"consumers": n, "load": mean([r.get("nominal_load", r["load"]) for r in rows]),
             "wait_fraction": mean([r["wait_fraction"] for r in rows]),
             "wait_fractions": [r["wait_fraction"] for r in rows],
             "first_wait_s": [r["first_wait_s"] for r in rows],
             "supply_before": [r["supply_images_per_s"] for r in rows if "nominal_load" in r],
             "delivered_images_per_s": [r.get("delivered_images_per_s") for r in rows]}
            for n, rows in sorted(curve.items())]


def sizing_rows(published: Iterable[PublishedStep], per_cpu: dict[tuple[str, int], float], max_load: float | None,
                faster_gpu: float) -> list[dict]:
    """CPUs per GPU for each published step whose stream was measured (none without a ``max_load``)."""
    rows = []
    for step in published:
        rate = per_cpu.get((step.kind, step.crop))
        if rate is None or max_load is None:
            continue
        rows.append({"setting": step.setting, "source": step.source, "images_per_step": step.images_per_step,
                     "step_s": step.step_s, "demand_images_per_s": round(step.images_per_step / step.step_s, 2),
                     "stream": f"{step.kind} crop {step.crop}", "images_per_cpu_s": round(rate, 2),
                     "cpus_per_gpu": round(cpus_per_gpu(step.images_per_step, step.step_s, rate, max_load), 2),
                     "cpus_per_gpu_faster_gpu": round(cpus_per_gpu(step.images_per_step, step.step_s / faster_gpu,
                                                                   rate, max_load), 2)})
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The results page
# ----------------------------------------------------------------------------------------------------------------


def results_page(record: dict, faster_gpu: float, batches_per_block: int) -> str:
    """The results page (``ingest.md``, Markdown) from the JSON record that ``experiments/benchmarks/ingest.py``
    writes (its measurement rows and their :func:`summarise`); ``faster_gpu`` is the step-time factor of the
    sizing's last column and ``batches_per_block`` the block size the measured streams used."""
    summary = record["summary"]
    sections = (images_section(record), throughput_section(summary), scaleout_section(record),
                sizing_section(summary, faster_gpu, batches_per_block))
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


def sizing_section(summary: dict, faster_gpu: float, batches_per_block: int) -> list[str]:
    """CPUs per GPU for each published step (and at a GPU ``faster_gpu`` times faster), its sources and the
    caveats (which name ``batches_per_block``)."""
    lines = [
        "",
        "## CPUs per GPU to keep data wait under 5 %",
        "",
        "CPUs per GPU = (images per GPU step / step time) / (images per CPU-second) / u\\*, with images per "
        "CPU-second the lower of the 1- and 2-CPU means of the matching stream. Step times are **published** "
        "numbers for DeepLabv3+ ResNet-101 (sources below the table); the last column assumes a GPU "
        f"{faster_gpu:g}× faster than the published one (an assumption, not a published number).",
        "",
        "| published setting | images / GPU step | step (s) | GPU demand (img/s) | our stream | img per CPU-s | "
        f"CPUs per GPU | CPUs per GPU, {faster_gpu:g}× faster GPU |",
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
        f"{batches_per_block} batches (raysemi's runs: 32) so that short runs spread over every CPU.",
        "",
    ]
    return lines
