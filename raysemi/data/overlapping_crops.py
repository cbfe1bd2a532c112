"""Two partially overlapping crops of one unlabeled image, for CAC's context-aware consistency.

The image is resized and padded (bottom/right) to at least the crop size: by a factor drawn from
``scale_range``, or, with ``region_range`` set, so that its long side is ``r`` times the crop's long side for
``r`` drawn from ``region_range`` (the released CAC code crops 320 × 320 from images with a long side of
320–800: ``r`` in [1, 2.5]); a region larger than the crop is what lets the two crops see different context.
The pair is drawn uniformly among all pairs of crops inside the image whose offset is a non-zero multiple of
the feature ``stride`` (so the overlap lands on whole feature cells) and whose IoU lies in
``[iou_range[0], iou_range[1])``. If no offset gives such an IoU, the offsets whose IoU is nearest the range
are used; crop 2 = crop 1 only when the image leaves no room for another crop (it is smaller than the crop
plus one stride both ways). Each crop is then flipped left-right with probability 0.5 and gets its
own photometric augmentation (Gaussian blur p=0.5 with σ in [0.1, 2.0]; colour jitter brightness/contrast/
saturation 0.4 and hue 0.1, in random order, p=0.8; grayscale p=0.2), as in the reference implementation.

The overlap boxes are given in each crop's *unflipped* coordinates: a consumer flips crop features back
(``flips``) before cutting the overlap out. All randomness comes from the generator passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from raysemi.sections import DataConfig


@dataclass(frozen=True)
class CropPair:
    """Two crops of one image.

    Attributes:
        images: ``(2, 3, h, w)`` uint8 crops, each already flipped if its ``flips`` entry is set.
        valid: ``(2, h, w)`` uint8, 1 on image pixels, 0 on padding (flipped like the crops).
        boxes: ``(2, 4)`` int64 overlap box ``(y0, x0, y1, x1)`` in crop 1's and crop 2's unflipped coordinates;
            both boxes have the same size and are multiples of the stride.
        flips: ``(2,)`` bool, whether each crop was flipped left-right.
        iou: the two crops' IoU (1.0: the same crop twice).
    """

    images: torch.Tensor
    valid: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    iou: float


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _chance(generator: torch.Generator, p: float) -> bool:
    return torch.rand((), generator=generator).item() < p


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def overlap_boxes(top_left_1: tuple[int, int], top_left_2: tuple[int, int], size: tuple[int, int]):
    """Overlap of two ``size`` crops at the given top-left corners → (box in crop 1, box in crop 2, IoU)."""
    (t1, l1), (t2, l2), (h, w) = top_left_1, top_left_2, size
    y0, x0 = max(t1, t2), max(l1, l2)
    y1, x1 = min(t1, t2) + h, min(l1, l2) + w
    inter = max(y1 - y0, 0) * max(x1 - x0, 0)
    iou = inter / (2 * h * w - inter)
    box_1 = (y0 - t1, x0 - l1, y1 - t1, x1 - l1)
    box_2 = (y0 - t2, x0 - l2, y1 - t2, x1 - l2)
    return box_1, box_2, iou


@dataclass(frozen=True)
class OverlappingCrops:
    """``(3, H, W)`` uint8 image + generator → :class:`CropPair`.

    Args:
        crop_size: ``(h, w)``, multiples of ``stride``.
        scale_range: resize factor range (unused when ``region_range`` is set).
        iou_range: accepted IoU of the two crops, ``[low, high)``.
        stride: offsets between the crops are multiples of this (the feature stride the loss works at).
        region_range: ``(low, high)``, the resized image's long side over the crop's long side; None: resize by
            ``scale_range``.
        photometric: apply blur/jitter/grayscale (False only for tests that compare pixels).
        same_crop: take crop 2 = crop 1 (CAC's "no context" ablation); flips and photometry stay independent.
    """

    crop_size: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    iou_range: tuple[float, float] = (0.1, 1.0)
    stride: int = 8
    region_range: tuple[float, float] | None = None
    hflip: bool = True
    photometric: bool = True
    same_crop: bool = False

    @classmethod
    def from_config(
        cls,
        data: DataConfig,
        iou_range: tuple[float, float],
        stride: int = 8,
        same_crop: bool = False,
        region_range: tuple[float, float] | None = None,
    ) -> OverlappingCrops:
        return cls(
            tuple(data.crop_size), tuple(data.scale_range), tuple(iou_range), stride,
            region_range=tuple(region_range) if region_range is not None else None, hflip=data.hflip,
            same_crop=same_crop,
        )

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> CropPair:
        image, valid = self._scale_and_pad(image, generator)
        corner_1, corner_2 = self._corners(image.shape[-2:], generator)
        box_1, box_2, iou = overlap_boxes(corner_1, corner_2, self.crop_size)
        crops, valids, flips = [], [], []
        for top, left in (corner_1, corner_2):
            crop = image[:, top : top + self.crop_size[0], left : left + self.crop_size[1]]
            crop_valid = valid[top : top + self.crop_size[0], left : left + self.crop_size[1]]
            flip = self.hflip and _chance(generator, 0.5)
            if flip:
                crop, crop_valid = crop.flip(-1), crop_valid.flip(-1)
            crops.append(photometric(crop, generator) if self.photometric else crop)
            valids.append(crop_valid)
            flips.append(flip)
        return CropPair(torch.stack(crops), torch.stack(valids), torch.tensor([box_1, box_2]), torch.tensor(flips), iou)

    def _scale_and_pad(self, image: torch.Tensor, generator: torch.Generator):
        if self.region_range is None:
            factor = _uniform(generator, *self.scale_range)
        else:
            factor = _uniform(generator, *self.region_range) * max(self.crop_size) / max(image.shape[-2:])
        size = [max(1, round(image.shape[-2] * factor)), max(1, round(image.shape[-1] * factor))]
        image = F.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        valid = torch.ones(size, dtype=torch.uint8)
        pad_h, pad_w = max(self.crop_size[0] - size[0], 0), max(self.crop_size[1] - size[1], 0)
        if pad_h or pad_w:
            image = F.pad(image, [0, 0, pad_w, pad_h], fill=0)
            valid = F.pad(valid[None], [0, 0, pad_w, pad_h], fill=0)[0]
        return image, valid

    def _corners(self, image_size, generator: torch.Generator):
        """Top-left corners of crop 1 and crop 2 in the padded image.

        The pair is drawn uniformly among all pairs whose offset is a non-zero multiple of the stride and whose
        IoU is in range (the released code's rejection sampling, without its give-up): an offset weighted by
        the number of places the pair fits, then a place.
        """
        (height, width), (crop_h, crop_w) = image_size, self.crop_size
        offsets, ious = self._offsets(image_size)
        if self.same_crop or len(offsets) == 0:  # no room for another crop
            corner = (_randint(generator, 0, height - crop_h), _randint(generator, 0, width - crop_w))
            return corner, corner
        low, high = self.iou_range
        fits = (ious >= low) & (ious < high)
        if not fits.any():  # the nearest IoU to the range
            distance = torch.where(ious < low, low - ious, ious - high)
            fits = distance <= distance.min() + 1e-12
        places = (height - crop_h - offsets[:, 0].abs() + 1) * (width - crop_w - offsets[:, 1].abs() + 1)
        choice = int(torch.multinomial((places * fits).double(), 1, generator=generator))
        dy, dx = offsets[choice].tolist()
        top = _randint(generator, 0, height - crop_h - abs(dy)) + max(-dy, 0)
        left = _randint(generator, 0, width - crop_w - abs(dx)) + max(-dx, 0)
        return (top, left), (top + dy, left + dx)

    def _offsets(self, image_size) -> tuple[torch.Tensor, torch.Tensor]:
        """Every non-zero offset ``(K, 2)`` (whole strides) at which two crops fit in the image, and its IoU."""
        (height, width), (crop_h, crop_w), s = image_size, self.crop_size, self.stride
        reach_y, reach_x = (height - crop_h) // s, (width - crop_w) // s
        dy, dx = s * torch.arange(-reach_y, reach_y + 1), s * torch.arange(-reach_x, reach_x + 1)
        offsets = torch.cartesian_prod(dy, dx).reshape(-1, 2)
        offsets = offsets[(offsets != 0).any(1)]
        inter = (crop_h - offsets[:, 0].abs()).clamp_min(0) * (crop_w - offsets[:, 1].abs()).clamp_min(0)
        return offsets, inter / (2 * crop_h * crop_w - inter)


def photometric(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(3, h, w)`` uint8 → blurred (p=0.5), colour-jittered (p=0.8), grayscale (p=0.2), uint8."""
    if _chance(generator, 0.5):
        sigma = _uniform(generator, 0.1, 2.0)
        kernel = 2 * math.ceil(3 * sigma) + 1
        image = F.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
    if _chance(generator, 0.8):
        image = _color_jitter(image, generator)
    if _chance(generator, 0.2):
        image = F.rgb_to_grayscale(image, num_output_channels=3)
    return image


def _color_jitter(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation (factors in [0.6, 1.4]) and hue (shift in [-0.1, 0.1]), random order."""
    operations = [
        lambda im: F.adjust_brightness(im, _uniform(generator, 0.6, 1.4)),
        lambda im: F.adjust_contrast(im, _uniform(generator, 0.6, 1.4)),
        lambda im: F.adjust_saturation(im, _uniform(generator, 0.6, 1.4)),
        lambda im: F.adjust_hue(im, _uniform(generator, -0.1, 0.1)),
    ]
    for index in torch.randperm(4, generator=generator).tolist():
        image = operations[index](image)
    return image
