"""Paired image/mask augmentation, seeded.

Random parameters come from an explicit ``torch.Generator``, never from global state, so a sample's
augmentation is a function of its seed: the same seed gives the same crop on any worker, and a resumed run
replays exactly the augmentations an uninterrupted one would have drawn. The operations are torchvision's
``transforms.v2.functional`` kernels (bilinear for images, nearest for masks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from raysemi.data.formats import IGNORE_INDEX
from raysemi.data.weak_labels import Box
from raysemi.sections import DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensors(image: np.ndarray, mask: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(H, W, 3)`` uint8 and ``(H, W)`` uint8 arrays → ``(3, H, W)`` and ``(H, W)`` uint8 tensors."""
    image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return image_t, None if mask is None else torch.from_numpy(np.ascontiguousarray(mask))


def normalize(image: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` uint8 → float32 normalised with the ImageNet mean and std."""
    return F.normalize(image.float().div_(255.0), IMAGENET_MEAN, IMAGENET_STD)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


@dataclass(frozen=True)
class Geometry:
    """Where a training crop came from: the resized image size, the crop's top-left corner in the resized
    (bottom/right padded) image, whether it was flipped, and the crop size; all ``(height, width)``."""

    scaled_size: tuple[int, int]
    top: int
    left: int
    flip: bool
    crop_size: tuple[int, int]

    def valid(self) -> torch.Tensor:
        """``(h, w)`` bool: crop pixels that lie on the image (False on padding)."""
        (crop_h, crop_w), (height, width) = self.crop_size, self.scaled_size
        valid = torch.zeros(crop_h, crop_w, dtype=torch.bool)
        valid[: max(height - self.top, 0), : max(width - self.left, 0)] = True
        return valid.flip(-1) if self.flip else valid

    def boxes(self, boxes: list[Box], original_size: tuple[int, int]) -> list[Box]:
        """Boxes in original image coordinates → in crop coordinates (clipped; boxes left empty dropped).

        Scaled corners round outwards (floor the start, ceil the end), so a box still covers every pixel of its
        object in the nearest-neighbour resized mask.
        """
        (height, width), (crop_h, crop_w) = original_size, self.crop_size
        sy, sx = self.scaled_size[0] / height, self.scaled_size[1] / width
        moved = []
        for box in boxes:
            y0 = min(max(math.floor(box.y0 * sy) - self.top, 0), crop_h)
            y1 = min(max(math.ceil(box.y1 * sy) - self.top, 0), crop_h)
            x0 = min(max(math.floor(box.x0 * sx) - self.left, 0), crop_w)
            x1 = min(max(math.ceil(box.x1 * sx) - self.left, 0), crop_w)
            if y1 > y0 and x1 > x0:
                if self.flip:
                    x0, x1 = crop_w - x1, crop_w - x0
                moved.append(Box(box.label, y0, x0, y1, x1))
        return moved


@dataclass(frozen=True)
class TrainAugment:
    """Random scale → pad (image 0, mask ignore) → random crop → horizontal flip → colour jitter.

    Output stays uint8: normalisation (:func:`normalize`) runs on the training device, so a quarter of the
    bytes travel from the data workers.

    Args:
        crop_size: ``(height, width)`` of the output.
        scale_range: the image is resized by a factor drawn uniformly from this range.
        hflip: flip left-right with probability 0.5.
        color_jitter: brightness, contrast and saturation factors drawn from ``[1 - s, 1 + s]``; 0 disables.
    """

    crop_size: tuple[int, int]
    scale_range: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    color_jitter: float = 0.2
    ignore_index: int = IGNORE_INDEX

    @classmethod
    def from_config(cls, cfg: DataConfig, ignore_index: int = IGNORE_INDEX) -> TrainAugment:
        return cls(tuple(cfg.crop_size), tuple(cfg.scale_range), cfg.hflip, cfg.color_jitter, ignore_index)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(3, H, W)`` uint8 image, ``(H, W)`` uint8 mask or None → ``(3, h, w)``, ``(h, w)`` uint8."""
        image, mask, _ = self.augment(image, mask, generator)
        return image, mask

    def augment(
        self, image: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None, Geometry]:
        """As ``__call__``, plus the :class:`Geometry` drawn (to carry boxes along)."""
        factor = _uniform(generator, *self.scale_range)
        size = (max(1, round(image.shape[-2] * factor)), max(1, round(image.shape[-1] * factor)))
        image, mask = self._scale(image, mask, size)
        image, mask, (top, left) = self._crop(image, mask, generator)
        flip = self.hflip and torch.rand((), generator=generator).item() < 0.5
        if flip:
            image = image.flip(-1)
            mask = None if mask is None else mask.flip(-1)
        if self.color_jitter > 0:
            image = self._jitter(image, generator)
        return image, mask, Geometry(size, top, left, flip, tuple(self.crop_size))

    def _scale(self, image, mask, size):
        image = F.resize(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        if mask is not None:
            mask = F.resize(mask[None], list(size), interpolation=InterpolationMode.NEAREST)[0]
        return image, mask

    def _crop(self, image, mask, generator):
        crop_h, crop_w = self.crop_size
        pad_h, pad_w = max(crop_h - image.shape[-2], 0), max(crop_w - image.shape[-1], 0)
        if pad_h or pad_w:
            image = F.pad(image, [0, 0, pad_w, pad_h], fill=0)
            if mask is not None:
                mask = F.pad(mask[None], [0, 0, pad_w, pad_h], fill=self.ignore_index)[0]
        top = int(torch.randint(0, image.shape[-2] - crop_h + 1, (), generator=generator))
        left = int(torch.randint(0, image.shape[-1] - crop_w + 1, (), generator=generator))
        image = image[:, top : top + crop_h, left : left + crop_w]
        mask = None if mask is None else mask[top : top + crop_h, left : left + crop_w]
        return image, mask, (top, left)

    def _jitter(self, image, generator):
        low, high = 1 - self.color_jitter, 1 + self.color_jitter
        image = F.adjust_brightness(image, _uniform(generator, low, high))
        image = F.adjust_contrast(image, _uniform(generator, low, high))
        return F.adjust_saturation(image, _uniform(generator, low, high))
