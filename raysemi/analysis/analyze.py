"""``raysemi analyze``: calibration, pseudo-label quality, Grad-CAM and side-by-side predictions of trained
checkpoints."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from raysemi.analysis.calibration import CalibrationBins
from raysemi.analysis.gradcam import grad_cam
from raysemi.analysis.pseudo_labels import PseudoLabelCounts
from raysemi.data.dataset import DatasetSource, open_dataset
from raysemi.data.formats import IMAGE_SUFFIXES, Sample, read_image
from raysemi.engine.evaluate import evaluate, palette_table, predict_logits
from raysemi.engine.inference import LoadedModel, image_batch, predict_image, val_batches
from raysemi.engine.metrics import ConfusionMatrix
from raysemi.errors import DataError

C = TypeVar("C", CalibrationBins, PseudoLabelCounts)  # the per-pixel accumulators of probabilities
DEFAULT_LAYERS = ("segmenter.head", "model.pixel_decoder")  # decoder features of a segmenter / a MaskFormer


def probabilities(model: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """``(N, K, H, W)`` eval-model output → class probabilities: softmax of logits, or scores normalised over
    the classes for a model that outputs scores (``outputs_scores``, e.g. SimFormer's)."""
    if getattr(model, "outputs_scores", False):
        return output / output.sum(1, keepdim=True).clamp_min(1e-12)
    return output.softmax(1)


def checkpoint_calibration(loaded: LoadedModel, bins: int = 10) -> CalibrationBins:
    """Confidence bins of ``loaded`` over its config's val split."""
    return accumulate_probabilities(loaded, "val", CalibrationBins.empty(bins))


def write_calibration(loaded: LoadedModel, out: Path, bins: int = 10) -> tuple[float, list[Path]]:
    """``calibration.csv`` and ``calibration.png`` in ``out``; returns the expected calibration error."""
    from raysemi.analysis.plots import plot_calibration

    result = checkpoint_calibration(loaded, bins)
    rows = result.rows()
    table, figure = write_rows(out / "calibration.csv", rows), out / "calibration.png"
    plot_calibration(rows, figure)
    return result.expected_calibration_error(), [table, figure]


def checkpoint_pseudo_labels(loaded: LoadedModel, thresholds: list[float],
                             images: str = "unlabeled") -> PseudoLabelCounts:
    """Per-class pseudo-label counts of ``loaded`` at each threshold, on the ``images`` of
    :func:`scored_images`.

    The prediction is the eval model's on the whole image (no augmentation, eval-mode BatchNorm): a method's
    weak view in training is a crop of the same image, so the shares are those of the model at the checkpoint,
    not of any one training step.
    """
    return accumulate_probabilities(loaded, images, PseudoLabelCounts.empty(thresholds, len(loaded.class_names)))


def write_pseudo_labels(loaded: LoadedModel, out: Path, thresholds: list[float],
                        images: str = "unlabeled") -> tuple[list[dict], Path]:
    """``pseudo_labels.csv`` in ``out`` (:meth:`PseudoLabelCounts.rows`); returns the rows and the file."""
    rows = checkpoint_pseudo_labels(loaded, thresholds, images).rows(loaded.class_names)
    return rows, write_rows(out / "pseudo_labels.csv", rows)


def checkpoint_confusion(loaded: LoadedModel, images: str = "val", threads: int = 4) -> ConfusionMatrix:
    """The confusion matrix of ``loaded`` on the ``images`` of :func:`scored_images`."""
    source, batches = scored_batches(loaded, images, threads)
    return evaluate(loaded.model, batches, len(loaded.class_names), loaded.cfg.eval, source.classes.ignore_index)


@torch.no_grad()
def accumulate_probabilities(loaded: LoadedModel, images: str, counts: C) -> C:
    """``counts.update(probabilities, mask, ignore_index)`` (a :class:`CalibrationBins`, a
    :class:`PseudoLabelCounts`) over the eval batches of ``images`` (:func:`scored_images`); returns ``counts``."""
    source, batches = scored_batches(loaded, images)
    for batch in batches:
        output = predict_logits(loaded.model, batch["image"], loaded.cfg.eval)
        counts.update(probabilities(loaded.model, output), batch["mask"], source.classes.ignore_index)
    return counts


def scored_batches(loaded: LoadedModel, images: str,
                   threads: int = 4) -> tuple[DatasetSource, Iterator[dict[str, torch.Tensor]]]:
    """The dataset of ``loaded``'s config and the eval batches of its ``images`` (:func:`scored_images`)."""
    source = open_dataset(loaded.cfg.data)
    return source, val_batches(source.reader, scored_images(source, images), loaded, threads)


def scored_images(source: DatasetSource, images: str) -> list[Sample]:
    """``val``: the samples evaluation scores (the val split, or the selection split's); ``unlabeled``: the
    train samples with a mask on disk that the split lists as unlabeled (the split's own unlabeled samples never
    carry their masks).

    Raises:
        DataError: when no unlabeled image has a mask.
    """
    if images == "val":
        return source.val
    unlabeled = {sample.image for sample in source.split.unlabeled}
    masked = [sample for sample in source.train if sample.mask is not None and sample.image in unlabeled]
    if not masked:
        raise DataError(f"--images=unlabeled: none of the {len(unlabeled)} unlabeled images of "
                        f"{source.root} has a mask on disk to score pseudo-labels against; use --images=val")
    return masked


def write_rows(path: Path, rows: list[dict]) -> Path:
    """``rows`` (dicts with the same keys) as a CSV file at ``path``, its folder made; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def find_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """The module ``name`` of ``model`` (default: its decoder features, :data:`DEFAULT_LAYERS`).

    Raises:
        DataError: naming the layer and a few accepted names.
    """
    modules = dict(model.named_modules())
    names = [name] if name else [n for n in DEFAULT_LAYERS if n in modules]
    if not names or names[0] not in modules:
        sample = ", ".join(n for n in list(modules)[1:8])
        raise DataError(f"--layer={name}: no such module in this model; accepted: dotted module names such as "
                        f"{sample}")
    return names[0], modules[names[0]]


def write_gradcam(loaded: LoadedModel, image_path: Path, pixel: tuple[int, int], out: Path,
                  layer_name: str | None = None) -> tuple[Path, int]:
    """Grad-CAM of one pixel as a heat-map overlay PNG at ``out``; returns the file and the class explained."""
    image = _image(image_path)
    height, width = image.shape[:2]
    if not (0 <= pixel[0] < height and 0 <= pixel[1] < width):
        raise DataError(f"--pixel={pixel[0]},{pixel[1]} lies outside {image_path} ({height}x{width}, as y,x)")
    name, layer = find_layer(loaded.model, layer_name)
    heat, explained = grad_cam(loaded.model, layer, image_batch(loaded, image), pixel)
    overlay = _overlay(image, heat.cpu().numpy(), pixel)
    out.parent.mkdir(parents=True, exist_ok=True)
    overlay.save(out)
    return out, explained


def write_comparison(models: list[LoadedModel], images_dir: Path, out: Path, limit: int = 8) -> Path:
    """A grid PNG, one row per image: input | ground truth (when the first model's dataset has the image) |
    each model's prediction, in the dataset palette."""
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit] \
        if images_dir.is_dir() else []
    if not paths:
        raise DataError(f"{images_dir}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    source = open_dataset(models[0].cfg.data)
    samples = {s.image.name: s for s in [*source.train, *source.val] if s.mask is not None}
    palette = palette_table(models[0].palette)
    rows = []
    for path in paths:
        image = _image(path)
        truth = source.reader.decode_mask(samples[path.name].mask) if path.name in samples else None
        panels = [image, palette[truth] if truth is not None else np.full_like(image, 128)]
        panels += [palette[predict_image(loaded, image).argmax(0).cpu().numpy()] for loaded in models]
        rows.append(np.concatenate(panels, axis=1))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    titles = ["input", "ground truth", *(m.checkpoint.path.parent.parent.name for m in models)]
    canvas = _with_titles(grid, titles, rows[0].shape[1] // len(titles))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def _image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    return read_image(path)


def _overlay(image: np.ndarray, heat: np.ndarray, pixel: tuple[int, int]) -> Image.Image:
    """Blend a jet-like colouring of ``heat`` (H, W in [0, 1]) over ``image`` and mark ``pixel``."""
    red = np.clip(1.5 - np.abs(4 * heat - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * heat - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * heat - 1), 0, 1)
    colour = (np.stack([red, green, blue], axis=-1) * 255).astype(np.float32)
    blended = Image.fromarray((0.5 * image + 0.5 * colour).astype(np.uint8))
    draw = ImageDraw.Draw(blended)
    y, x = pixel
    draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=(255, 255, 255), width=2)
    return blended


def _with_titles(grid: np.ndarray, titles: list[str], panel_width: int) -> Image.Image:
    canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + 14), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (0, 14))
    draw = ImageDraw.Draw(canvas)
    for index, title in enumerate(titles):
        draw.text((index * panel_width + 2, 1), title[: max(panel_width // 6, 4)], fill=(0, 0, 0))
    return canvas
