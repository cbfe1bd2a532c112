"""What the Ray Data streams are made of, without Ray: record plans and the decode/augment functions.

:mod:`raysemi.data.streams` turns a method's stream specs into these
(:func:`~raysemi.data.streams.stream_records`, :func:`~raysemi.data.streams.stream_decoder`) by asking each
stream's view (:mod:`raysemi.data.views`); a view's decoder is built from the pieces here.

A training stream is planned on the driver as a list of records, one per image the stream will deliver over
the whole run: ``steps × global batch`` records, each epoch a fresh seeded permutation of the samples, each
record with its own augmentation seed. A short labeled set therefore repeats (epoch after epoch) to the length
of the run, exactly as long as the unlabeled stream. Because the plan is a pure function of the config, a run
resumed at step ``s`` builds the plan from record ``s × batch`` on and sees exactly the images and
augmentations the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysemi.data.dataset import load_sample
from raysemi.data.formats import DatasetFormat, Sample, open_format
from raysemi.data.transforms import Geometry, TrainAugment, to_tensors
from raysemi.data.weak_labels import (
    Box,
    mask_box_raster,
    mask_boxes,
    rasterize_boxes,
)
from raysemi.sections import BoxesConfig

Record = dict[str, Any]


def plan_records(
    samples: list[Sample],
    batch_size: int,
    total_steps: int,
    start_step: int,
    seed: int,
    stream: str,
    columns: Callable[[Sample], Record] | None = None,
) -> list[Record]:
    """Records for steps ``start_step .. total_steps - 1`` of a stream with ``batch_size`` images per step.

    Returns:
        ``[{"image_path", "mask_path" ("" for no mask), "seed"}]`` in delivery order, plus ``"tags"`` (class ids
        separated by spaces) or ``"boxes"`` (``label,y0,x0,y1,x1`` separated by spaces) when the samples carry
        image-level tags or boxes, and the columns ``columns(sample)`` returns (a view's own, e.g. SimFormer's
        reference image paths).
    """
    stream_id = sum(stream.encode())  # distinct, stable seeds per stream name
    first, last = start_step * batch_size, total_steps * batch_size
    records: list[Record] = []
    epoch = first // len(samples)
    while epoch * len(samples) < last:
        order = np.random.default_rng([seed, stream_id, epoch]).permutation(len(samples))
        for offset, index in enumerate(order):
            position = epoch * len(samples) + offset
            if first <= position < last:
                sample = samples[index]
                record = {
                    "image_path": str(sample.image),
                    "mask_path": str(sample.mask) if sample.mask else "",
                    "seed": int(np.random.default_rng([seed, stream_id, position]).integers(2**62)),
                }
                if sample.tags is not None:
                    record["tags"] = " ".join(str(t) for t in sample.tags)
                if sample.boxes is not None:
                    record["boxes"] = " ".join(box.to_text() for box in sample.boxes)
                if columns is not None:
                    record.update(columns(sample))
                records.append(record)
        epoch += 1
    return records


def val_records(samples: list[Sample], world_size: int) -> list[Record]:
    """Val records padded to a multiple of ``world_size`` with ``valid=False`` copies, so equal shards drop
    nothing and the padding counts for nothing."""
    records = [{"image_path": str(s.image), "mask_path": str(s.mask), "valid": True} for s in samples]
    padding = (-len(records)) % world_size
    records += [{**records[i % len(records)], "valid": False} for i in range(padding)]
    return records


@lru_cache(maxsize=8)
def cached_reader(format_name: str, root: str) -> DatasetFormat:
    """The reader of ``root`` in ``format_name``, opened once per process (decode tasks call this per batch)."""
    return open_format(format_name, root)


def record_sample(row: Record) -> Sample:
    """A record's image and (for labeled records) mask as a :class:`Sample`."""
    return Sample(Path(row["image_path"]), Path(row["mask_path"]) if row["mask_path"] else None)


@dataclass(frozen=True)
class DecodeTrainBatch:
    """Ray Data ``map_batches`` function: records → augmented crops.

    Output: ``image`` ``(B, 3, h, w)`` uint8 and, for labeled records, ``mask`` ``(B, h, w)`` uint8 (255 =
    ignore); ``image_tags`` ``(B, C)`` for records with tags; ``boxes`` ``(B, C + 1, h, w)`` uint8 for records
    with boxes: the boxes carried through the crop's scale/crop/flip and rasterised (channel c inside boxes
    of class c, channel C outside every box, all channels 0 on padding). Normalisation happens on the training
    device, so a quarter of the bytes travel.
    """

    format_name: str
    root: str
    augment: TrainAugment
    boxes_from_masks: BoxesConfig | None = None  # labeled streams: the raster of each mask's boxes, by this rule

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reader = cached_reader(self.format_name, self.root)
        num_classes = reader.classes.num_classes
        images, masks, rasters = [], [], []
        for row in batch_rows(batch):
            image_np, mask_np = load_sample(reader, record_sample(row))
            boxes = parse_boxes(str(row["boxes"])) if "boxes" in row else None
            if self.boxes_from_masks is not None and mask_np is not None:
                boxes = mask_boxes(mask_np, reader.classes, self.boxes_from_masks)
            image, mask = to_tensors(image_np, mask_np)
            generator = torch.Generator().manual_seed(int(row["seed"]))
            image, mask, geometry = self.augment.augment(image, mask, generator)
            images.append(image.numpy())
            if mask is not None:
                masks.append(mask.numpy())
            if boxes is not None:
                rasters.append(box_raster(boxes, geometry, image_np.shape[:2], num_classes).numpy())
        out = {"image": np.stack(images)}
        if masks:
            out["mask"] = np.stack(masks)
        if rasters:
            out["boxes"] = np.stack(rasters)
        return out | tag_columns(batch, num_classes)


def parse_boxes(text: str) -> list[Box]:
    """``"label,y0,x0,y1,x1 ..."`` (a record's ``boxes``) → boxes."""
    return [Box.from_text(cell) for cell in text.split()]


def box_raster(boxes: list[Box], geometry: Geometry, original_size: tuple[int, int],
               num_classes: int) -> torch.Tensor:
    """Boxes of an image of ``original_size`` → ``(C + 1, h, w)`` uint8 raster of its training crop."""
    crop_h, crop_w = geometry.crop_size
    raster = rasterize_boxes(geometry.boxes(boxes, original_size), num_classes, crop_h, crop_w)
    raster[:, ~geometry.valid()] = 0
    return raster.to(torch.uint8)


def tag_columns(batch: dict[str, np.ndarray], num_classes: int) -> dict[str, np.ndarray]:
    """``{"image_tags": (B, C) float32 multi-hot}`` from the records' ``tags`` strings, or ``{}``."""
    if "tags" not in batch:
        return {}
    tags = np.zeros((len(batch["tags"]), num_classes), np.float32)
    for row, text in enumerate(batch["tags"]):
        tags[row, [int(t) for t in str(text).split()]] = 1.0
    return {"image_tags": tags}


@dataclass(frozen=True)
class DecodeEvalRow:
    """Ray Data ``map`` function: a val record → full-size ``image`` ``(3, H, W)`` uint8, ``mask``, ``valid``,
    and with ``boxes_from_masks`` (a ``data.boxes`` rule) a ``boxes`` raster ``(C + 1, H, W)`` of the boxes of
    its mask (for the box-conditioned ancillary model of self-correction)."""

    format_name: str
    root: str
    boxes_from_masks: BoxesConfig | None = None

    def __call__(self, row: Record) -> Record:
        reader = cached_reader(self.format_name, self.root)
        image, mask = load_sample(reader, record_sample(row))
        out = {"image": to_tensors(image, None)[0].numpy(), "mask": mask, "valid": bool(row["valid"])}
        if self.boxes_from_masks is not None:
            out["boxes"] = mask_box_raster(mask, reader.classes, self.boxes_from_masks).to(torch.uint8).numpy()
        return out


def batch_rows(batch: dict[str, np.ndarray]) -> list[Record]:
    """Columns of a ``map_batches`` batch → one dict per record."""
    keys = list(batch)
    return [dict(zip(keys, values, strict=True)) for values in zip(*(batch[k] for k in keys), strict=True)]
