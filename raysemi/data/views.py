"""Data views: how a training stream presents its images to a method.

A view says what each record carries beyond the image (:meth:`View.record_columns`), how a batch of records is
decoded and augmented (:meth:`View.decoder`, a Ray Data ``map_batches`` function that torch ``DataLoader``
processes call too), which batch keys hold uint8 images that the training device normalises
(:attr:`View.image_keys`) and which hold label maps it turns into int64 (:attr:`View.label_keys`), and what a
small batch of it looks like after that (:meth:`View.fake_batch`, for the method contract test).

The engine asks the view and names no key of its own: a method that needs a new view declares it beside itself
(a :class:`View` subclass in the method's file) and passes it in its :class:`~raysemi.data.streams.StreamSpec`;
no file of the data pipeline, the loop or the contract test changes. :class:`PlainCrops` is the default view
(one augmented crop per image); CAC's crop pairs and SimFormer's image/reference pairs are views of their methods.
Every view delivers an ``image`` key (the engine counts images by it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from raysemi.data.dataset import DatasetSource
from raysemi.data.formats import Sample
from raysemi.data.pipeline import DecodeTrainBatch, Record
from raysemi.data.transforms import TrainAugment
from raysemi.sections import BoxesConfig

Decoder = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
RecordColumns = Callable[[Sample], Record]


class View(ABC):
    """A stream's presentation of its samples (see the module docstring). Subclasses are frozen dataclasses
    (the decoder travels to Ray Data tasks, so a view holds plain values only)."""

    image_keys: ClassVar[tuple[str, ...]] = ("image",)
    label_keys: ClassVar[tuple[str, ...]] = ("mask",)

    def record_columns(self, source: DatasetSource, samples: list[Sample]) -> RecordColumns | None:
        """Extra record columns for a sample, planned on the driver (e.g. a partner image's path), or None."""
        return None

    @abstractmethod
    def decoder(self, format_name: str, root: str, augment: TrainAugment) -> Decoder:
        """The ``map_batches`` function: columns of records → columns of numpy arrays (images uint8)."""

    @abstractmethod
    def fake_batch(self, n: int, size: tuple[int, int], num_classes: int, labeled: bool,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``n`` random items of ``size`` as ``training_step`` receives them (images normalised floats, labels
        int64 with some 255), for the method contract test; ``labeled`` streams carry masks."""


@dataclass(frozen=True)
class PlainCrops(View):
    """One augmented crop per image (:class:`~raysemi.data.pipeline.DecodeTrainBatch`): ``image``, ``mask`` on
    labeled streams, ``image_tags``/``boxes`` when the records carry tags/boxes, and with ``boxes_from_masks``
    (a ``data.boxes`` rule) the raster of the boxes drawn on each image's mask."""

    boxes_from_masks: BoxesConfig | None = None

    def decoder(self, format_name: str, root: str, augment: TrainAugment) -> Decoder:
        return DecodeTrainBatch(format_name, root, augment, boxes_from_masks=self.boxes_from_masks)

    def fake_batch(self, n: int, size: tuple[int, int], num_classes: int, labeled: bool,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = {"image": torch.randn(n, 3, *size, generator=generator)} | fake_labels(n, size, num_classes, labeled,
                                                                                     generator)
        if self.boxes_from_masks is not None:
            batch["boxes"] = fake_box_raster(n, size, num_classes, generator)
        return batch


def fake_labels(n: int, size: tuple[int, int], num_classes: int, labeled: bool,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"mask": (n, h, w)}`` int64 with its first 3 rows ignore (255) for a labeled stream, else
    ``{"image_tags": (n, C)}`` random multi-hot tags (what an unlabeled stream with ``data.unlabeled_tags``
    carries; a method that does not read them ignores them)."""
    if labeled:
        mask = torch.randint(0, num_classes, (n, *size), generator=generator)
        mask[:, :3] = 255
        return {"mask": mask}
    return {"image_tags": torch.randint(0, 2, (n, num_classes), generator=generator).float()}


def fake_box_raster(n: int, size: tuple[int, int], num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, C + 1, h, w)`` uint8 random box raster (C classes + "outside every box")."""
    return torch.randint(0, 2, (n, num_classes + 1, *size), generator=generator, dtype=torch.uint8)
