"""Synthetic segmentation scenes: the embedded default dataset and the test data.

Each scene is a textured, cluttered background with 2-6 objects of five classes. A class is defined by its
*shape and texture together*; colours are drawn at random for every object, so colour alone predicts nothing.
Objects vary in size (about 8-40 % of the short side), rotate, overlap (later objects occlude earlier ones)
and leave the frame. Background clutter (thin bars and blobs with object-like colours) is labelled background,
so a model has to look at shape and texture, not at "anything that is not smooth".

The dataset is written in the generic layout (see :mod:`raysemi.data.formats`) and is a pure function of its
parameters: the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from raysemi.atomic import staging_dir
from raysemi.data.formats import voc_palette
from raysemi.progress import progress

CLASSES = ("background", "disc", "square", "triangle", "ring", "cross")
VERSION = 1

Grid = tuple[np.ndarray, np.ndarray]  # (ys, xs) float pixel coordinates relative to the object's centre


def default_cache_dir() -> Path:
    return Path(os.environ.get("RAYSEMI_CACHE", Path.home() / ".cache" / "raysemi"))


def synthetic_root(num_train: int, num_val: int, height: int, width: int, seed: int, cache: Path | None = None) -> Path:
    """Where the dataset with these parameters lives (it may not exist yet)."""
    name = f"synthetic-v{VERSION}-{height}x{width}-{num_train}-{num_val}-seed{seed}"
    return (cache or default_cache_dir()) / name


def ensure_synthetic(
    num_train: int, num_val: int, height: int, width: int, seed: int, cache: Path | None = None
) -> Path:
    """Generate the dataset once (atomically: a temporary folder renamed into place) and return its root."""
    root = synthetic_root(num_train, num_val, height, width, seed, cache)
    if (root / "classes.json").is_file():
        return root
    try:
        with staging_dir(root) as staging:
            write_synthetic(staging, num_train, num_val, height, width, seed)
    except OSError:  # another process finished first; its copy is identical
        if not (root / "classes.json").is_file():
            raise
    return root


def write_synthetic(root: Path, num_train: int, num_val: int, height: int, width: int, seed: int) -> None:
    """Write ``train`` and ``val`` splits plus ``classes.json`` under ``root``."""
    for split, count, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1_000_003)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        names = []
        for index in progress(range(count), f"synthetic {split}"):
            rng = np.random.default_rng([split_seed, index])
            image, mask = render_scene(rng, height, width)
            name = f"{split}_{index:05d}.png"
            Image.fromarray(image).save(root / split / "images" / name)
            Image.fromarray(mask).save(root / split / "labels" / name)
            names.append(name)
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    info = {"classes": list(CLASSES), "palette": [list(c) for c in voc_palette(len(CLASSES))], "ignore_index": 255}
    (root / "classes.json").write_text(json.dumps(info, indent=1))


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(H, W, 3)`` uint8 image and ``(H, W)`` uint8 class mask."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = _background(rng, height, width)
    mask = np.zeros((height, width), np.uint8)
    short = min(height, width)
    for _ in range(rng.integers(3, 8)):  # clutter, labelled background
        region = _clutter_shape(rng, ys, xs, short)
        image[region] = _random_colour(rng)
    for _ in range(rng.integers(2, 7)):
        cls = int(rng.integers(1, len(CLASSES)))
        centre = (rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width)
        size = rng.uniform(0.08, 0.4) * short
        angle = rng.uniform(0, np.pi)
        local = _rotate((ys - centre[0], xs - centre[1]), angle)
        region = SHAPES[cls](local, size)
        texture = TEXTURES[cls](rng, local, size)
        image[region] = texture[region]
        mask[region] = cls
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), mask


def _rotate(grid: Grid, angle: float) -> Grid:
    ys, xs = grid
    c, s = np.cos(angle), np.sin(angle)
    return ys * c - xs * s, ys * s + xs * c


def _disc(grid: Grid, size: float) -> np.ndarray:
    ys, xs = grid
    return ys**2 + xs**2 <= size**2


def _square(grid: Grid, size: float) -> np.ndarray:
    ys, xs = grid
    return (np.abs(ys) <= 0.85 * size) & (np.abs(xs) <= 0.85 * size)


def _triangle(grid: Grid, size: float) -> np.ndarray:
    ys, xs = grid
    return (ys <= 0.6 * size) & (ys >= -size + 1.7 * np.abs(xs))


def _ring(grid: Grid, size: float) -> np.ndarray:
    radius = np.sqrt(grid[0] ** 2 + grid[1] ** 2)
    return (radius <= size) & (radius >= 0.55 * size)


def _cross(grid: Grid, size: float) -> np.ndarray:
    ys, xs = np.abs(grid[0]), np.abs(grid[1])
    arm = 0.3 * size
    return ((ys <= arm) & (xs <= size)) | ((xs <= arm) & (ys <= size))


def _two_tone(rng: np.random.Generator, pattern: np.ndarray) -> np.ndarray:
    """Blend two random colours by ``pattern`` in [0, 1] → ``(H, W, 3)`` float."""
    a, b = _random_colour(rng), _random_colour(rng)
    return a * pattern[..., None] + b * (1 - pattern[..., None])


def _dots(rng: np.random.Generator, grid: Grid, size: float) -> np.ndarray:
    period = max(3.0, size / rng.uniform(2.5, 4.0))
    ys, xs = (g % period - period / 2 for g in grid)
    return _two_tone(rng, (ys**2 + xs**2 <= (0.3 * period) ** 2).astype(np.float32))


def _stripes(rng: np.random.Generator, grid: Grid, size: float) -> np.ndarray:
    period = rng.uniform(3.0, 6.0)
    return _two_tone(rng, (np.sin(2 * np.pi * grid[1] / period) > 0).astype(np.float32))


def _checker(rng: np.random.Generator, grid: Grid, size: float) -> np.ndarray:
    cell = rng.uniform(2.5, 5.0)
    parity = (np.floor(grid[0] / cell) + np.floor(grid[1] / cell)) % 2
    return _two_tone(rng, parity.astype(np.float32))


def _bands(rng: np.random.Generator, grid: Grid, size: float) -> np.ndarray:
    radius = np.sqrt(grid[0] ** 2 + grid[1] ** 2)
    return _two_tone(rng, 0.5 + 0.5 * np.cos(2 * np.pi * radius / rng.uniform(3.0, 5.0)))


def _speckle(rng: np.random.Generator, grid: Grid, size: float) -> np.ndarray:
    return _two_tone(rng, rng.random(grid[0].shape).astype(np.float32))


ShapeFn = Callable[[Grid, float], np.ndarray]
TextureFn = Callable[[np.random.Generator, Grid, float], np.ndarray]
SHAPES: dict[int, ShapeFn] = {1: _disc, 2: _square, 3: _triangle, 4: _ring, 5: _cross}
TEXTURES: dict[int, TextureFn] = {1: _dots, 2: _stripes, 3: _checker, 4: _bands, 5: _speckle}


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour blobs: a coarse random grid upsampled bilinearly."""
    coarse = rng.uniform(40, 215, (4, 5, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float32)


def _clutter_shape(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, short: int) -> np.ndarray:
    cy, cx = rng.uniform(0, ys.shape[0]), rng.uniform(0, xs.shape[1])
    local = _rotate((ys - cy, xs - cx), rng.uniform(0, np.pi))
    if rng.random() < 0.5:  # thin bar
        return (np.abs(local[0]) <= rng.uniform(0.5, 1.5)) & (np.abs(local[1]) <= rng.uniform(0.2, 0.6) * short)
    return (local[0] / rng.uniform(0.03, 0.1)) ** 2 + (local[1] / rng.uniform(0.03, 0.1)) ** 2 <= short**2


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)
