"""CutMix box masks and mixing, as used by CPS (after French et al., BMVC 2020, and TorchSemiSeg)."""

from __future__ import annotations

import torch


def box_mask(
    n: int,
    height: int,
    width: int,
    prop_range: tuple[float, float] = (0.25, 0.5),
    n_boxes: int = 3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(n, 1, height, width)`` float 0/1 masks, each the XOR of ``n_boxes`` random boxes.

    Each box covers a share of the image drawn uniformly from ``prop_range``, with a random aspect ratio
    (height share ``p**u``, width share ``p**(1-u)`` for ``u ~ U(0, 1)``), and lies inside the image. Where
    boxes overlap they toggle the mask, so overlaps return to 0.
    """
    low, high = prop_range
    props = low + (high - low) * torch.rand(n, n_boxes, generator=generator)
    split = torch.rand(n, n_boxes, generator=generator)
    box_h = (props**split * height).round().long().clamp(1, height)
    box_w = (props ** (1 - split) * width).round().long().clamp(1, width)
    top = ((height - box_h) * torch.rand(n, n_boxes, generator=generator)).floor().long()
    left = ((width - box_w) * torch.rand(n, n_boxes, generator=generator)).floor().long()
    masks = torch.zeros(n, 1, height, width)
    for i in range(n):
        for b in range(n_boxes):
            y0, x0 = int(top[i, b]), int(left[i, b])
            region = masks[i, 0, y0 : y0 + int(box_h[i, b]), x0 : x0 + int(box_w[i, b])]
            region.copy_(1 - region)
    return masks


def mix(first: torch.Tensor, second: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``first * (1 - mask) + second * mask`` for ``(N, C, H, W)`` tensors and an ``(N, 1, H, W)`` mask."""
    return first * (1 - mask) + second * mask
