"""CutMix box masks and mixing, as used by CPS (after French et al., BMVC 2020, and TorchSemiSeg's
``BoxMaskGenerator`` with the settings of its CPS+CutMix configs).

A mask is 1 where the second image is pasted. With the reference's settings (``prop_range=(0.25, 0.5)``,
``n_boxes=3``, ``split_area=True``, ``random_aspect_ratio=True``, ``invert=True``) each of the three boxes covers
a third of a share drawn from U(0.25, 0.5), 0.125 of the image on average; where boxes overlap they toggle, so a
mask pastes about a quarter of the image (0.25 on 96×128 masks). Without the ``1 / n_boxes`` factor
(``split_area=False``, raysemi's earlier masks) each box covers the whole share and a mask pastes about 42 %.
"""

from __future__ import annotations

import torch


def draw_boxes(
    n: int,
    height: int,
    width: int,
    prop_range: tuple[float, float] = (0.25, 0.5),
    n_boxes: int = 3,
    generator: torch.Generator | None = None,
    split_area: bool = True,
    random_aspect_ratio: bool = True,
) -> torch.Tensor:
    """``(n, n_boxes, 4)`` long boxes ``(y0, x0, y1, x1)`` (end exclusive) inside a ``height × width`` image.

    Each box's area share is ``p / n_boxes`` (``p / 1`` without ``split_area``) for ``p ~ U(prop_range)``; with
    ``random_aspect_ratio`` its height share is ``s**u`` and its width share ``s**(1-u)`` of the undivided share
    ``s = p`` for ``u ~ U(0, 1)``, each then times ``√(1 / n_boxes)`` (square boxes otherwise). Sides and corners
    are rounded to whole pixels, corners uniform over the positions that keep the box inside.
    """
    low, high = prop_range
    props = low + (high - low) * torch.rand(n, n_boxes, generator=generator)
    if random_aspect_ratio:
        split = torch.rand(n, n_boxes, generator=generator)
        height_share, width_share = props**split, props ** (1 - split)
    else:
        height_share = width_share = props.sqrt()
    factor = (1.0 / n_boxes) ** 0.5 if split_area else 1.0
    sizes = torch.stack([height_share * factor * height, width_share * factor * width], dim=2).round()
    room = torch.tensor([height, width], dtype=sizes.dtype) - sizes
    corners = (room * torch.rand(n, n_boxes, 2, generator=generator)).round()
    return torch.cat([corners, corners + sizes], dim=2).long()


def paint_boxes(boxes: torch.Tensor, height: int, width: int, invert: bool = True) -> torch.Tensor:
    """``(n, 1, height, width)`` float 0/1 masks from ``(n, k, 4)`` boxes: each box toggles the pixels it covers,
    on masks that start at 0 (``invert``, the reference's default: the boxes are pasted) or at 1 (the boxes are
    holes in a pasted image)."""
    masks = torch.full((len(boxes), 1, height, width), 0.0 if invert else 1.0)
    for mask, sample_boxes in zip(masks, boxes.tolist()):
        for y0, x0, y1, x1 in sample_boxes:
            region = mask[0, y0:y1, x0:x1]
            region.copy_(1 - region)
    return masks


def box_mask(
    n: int,
    height: int,
    width: int,
    prop_range: tuple[float, float] = (0.25, 0.5),
    n_boxes: int = 3,
    generator: torch.Generator | None = None,
    split_area: bool = True,
    random_aspect_ratio: bool = True,
    invert: bool = True,
) -> torch.Tensor:
    """``(n, 1, height, width)`` float 0/1 CutMix masks, 1 where the second image is pasted: the boxes of
    :func:`draw_boxes`, painted by :func:`paint_boxes`."""
    boxes = draw_boxes(n, height, width, prop_range, n_boxes, generator, split_area, random_aspect_ratio)
    return paint_boxes(boxes, height, width, invert)


def mix(first: torch.Tensor, second: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``first * (1 - mask) + second * mask`` for ``(N, C, H, W)`` tensors and an ``(N, 1, H, W)`` mask."""
    return first * (1 - mask) + second * mask
