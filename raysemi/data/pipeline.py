"""What the Ray Data streams are made of, without Ray: record plans and the decode/augment functions.

:mod:`raysemi.data.streams` turns a method's stream specs into these (:func:`~raysemi.data.streams.stream_records`,
:func:`~raysemi.data.streams.stream_decoder`).

A training stream is planned on the driver as a list of records, one per image the stream will deliver over
the whole run: ``steps × global batch`` records, each epoch a fresh seeded permutation of the samples, each
record with its own augmentation seed. A short labeled set therefore repeats (epoch after epoch) to the length
of the run, exactly as long as the unlabeled stream. Because the plan is a pure function of the config, a run
resumed at step ``s`` builds the plan from record ``s × batch`` on and sees exactly the images and
augmentations the uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysemi.data.dataset import load_sample
from raysemi.data.formats import DatasetFormat, Sample, open_format
from raysemi.data.overlapping_crops import OverlappingCrops
from raysemi.data.transforms import Geometry, TrainAugment, to_tensors
from raysemi.data.weak_labels import (
    Box,
    ClassSplit,
    hide_novel,
    image_tags,
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
    partners: dict[Path, Sample] | None = None,
) -> list[Record]:
    """Records for steps ``start_step .. total_steps - 1`` of a stream with ``batch_size`` images per step.

    Returns:
        ``[{"image_path", "mask_path" ("" for no mask), "seed"}]`` in delivery order, plus ``"tags"`` (class ids
        separated by spaces) or ``"boxes"`` (``label,y0,x0,y1,x1`` separated by spaces) when the samples carry
        image-level tags or boxes, and ``"partner_image_path"``, ``"partner_mask_path"`` with ``partners``
        (``{image: reference sample}``, SimFormer's pairs).
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
                if partners is not None:
                    partner = partners[sample.image]
                    record["partner_image_path"] = str(partner.image)
                    record["partner_mask_path"] = str(partner.mask)
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
def _reader(format_name: str, root: str) -> DatasetFormat:
    return open_format(format_name, root)


def _sample(row: Record) -> Sample:
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
        reader = _reader(self.format_name, self.root)
        num_classes = reader.classes.num_classes
        images, masks, rasters = [], [], []
        for row in _rows(batch):
            image_np, mask_np = load_sample(reader, _sample(row))
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
        return out | _tags(batch, num_classes)


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


@dataclass(frozen=True)
class DecodeCropPairs:
    """Ray Data ``map_batches`` function: unlabeled records → two overlapping crops per image (CAC).

    Output: ``image`` and ``image_2`` ``(B, 3, h, w)`` uint8 (crop 1, crop 2, each maybe flipped), ``valid``
    ``(B, 2, h, w)`` uint8 (1 on image pixels), ``crop_boxes`` ``(B, 2, 4)`` int64 overlap boxes in unflipped
    crop coordinates, ``flips`` ``(B, 2)`` bool, ``crop_iou`` ``(B,)`` float32 (each pair's IoU), and
    ``image_tags`` ``(B, C)`` when the records carry tags. See :mod:`raysemi.data.overlapping_crops`.
    """

    format_name: str
    root: str
    crops: OverlappingCrops

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reader = _reader(self.format_name, self.root)
        pairs = []
        for row in _rows(batch):
            image, _ = to_tensors(*load_sample(reader, _sample(row)))
            pairs.append(self.crops(image, torch.Generator().manual_seed(int(row["seed"]))))
        out = {
            "image": np.stack([p.images[0].numpy() for p in pairs]),
            "image_2": np.stack([p.images[1].numpy() for p in pairs]),
            "valid_pixels": np.stack([p.valid.numpy() for p in pairs]),
            "crop_boxes": np.stack([p.boxes.numpy() for p in pairs]),
            "flips": np.stack([p.flips.numpy() for p in pairs]),
            "crop_iou": np.array([p.iou for p in pairs], dtype=np.float32),
        }
        return out | _tags(batch, reader.classes.num_classes)


@dataclass(frozen=True)
class DecodeWeakShotPairs:
    """Ray Data ``map_batches`` function: records with partners → augmented crops of each image and of its
    reference image.

    Output per image: ``image`` ``(B, 3, h, w)`` uint8; ``mask`` ``(B, h, w)`` uint8 with the novel classes'
    pixels set to ignore (255) when ``hide_novel``, so novel, void and padding pixels look alike, as they do to
    a user whose masks annotate base classes only; ``image_tags`` ``(B, C)`` float32, the classes present in
    the whole image's full mask, computed before the crop: image-level tags are the weak label the method is
    defined on, and tags of the crop would tell the model where a novel class is (a crop that cut a tagged
    class away still carries its tag, as the image's annotation does); ``valid_pixels`` ``(B, h, w)`` uint8,
    1 on image pixels (0 on padding). The
    same four with a ``partner_`` prefix for the reference images, each augmented with its own seed.
    """

    format_name: str
    root: str
    augment: TrainAugment
    classes: ClassSplit
    hide_novel: bool = True

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reader = _reader(self.format_name, self.root)
        _, novel = self.classes.resolve(reader.classes.num_classes)
        rows = _rows(batch)
        images = [self._view(reader, novel, row["image_path"], row["mask_path"], int(row["seed"])) for row in rows]
        partners = [
            self._view(reader, novel, row["partner_image_path"], row["partner_mask_path"], int(row["seed"]) ^ 0x5EED)
            for row in rows
        ]
        out = {key: np.stack([view[key] for view in images]) for key in images[0]}
        return out | {f"partner_{key}": np.stack([view[key] for view in partners]) for key in partners[0]}

    def _view(self, reader: DatasetFormat, novel: list[int], image_path: str, mask_path: str,
              seed: int) -> dict[str, np.ndarray]:
        image_np, mask_np = load_sample(reader, Sample(Path(image_path), Path(mask_path)))
        classes = reader.classes
        tags = image_tags(mask_np, classes.num_classes, classes.ignore_index)  # the whole image's, not the crop's
        image, mask = to_tensors(image_np, mask_np)
        image, mask, geometry = self.augment.augment(image, mask, torch.Generator().manual_seed(seed))
        mask_np = mask.numpy()
        return {
            "image": image.numpy(),
            "mask": hide_novel(mask_np, novel, classes.ignore_index) if self.hide_novel else mask_np,
            "image_tags": tags,
            "valid_pixels": geometry.valid().numpy().astype(np.uint8),
        }


def _tags(batch: dict[str, np.ndarray], num_classes: int) -> dict[str, np.ndarray]:
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
        reader = _reader(self.format_name, self.root)
        image, mask = load_sample(reader, _sample(row))
        out = {"image": to_tensors(image, None)[0].numpy(), "mask": mask, "valid": bool(row["valid"])}
        if self.boxes_from_masks is not None:
            out["boxes"] = mask_box_raster(mask, reader.classes, self.boxes_from_masks).to(torch.uint8).numpy()
        return out


def _rows(batch: dict[str, np.ndarray]) -> list[Record]:
    keys = list(batch)
    return [dict(zip(keys, values, strict=True)) for values in zip(*(batch[k] for k in keys), strict=True)]
