"""SimFormer's pixel-pair similarity head: "do these two pixels belong to the same class?"

Every pair of a point from image a and a point from image b is scored from the concatenation of their pixel
embeddings by a few residual blocks of 1×1 convolutions (here: linear layers per pair, the same thing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class PairSimilarityHead(nn.Module):
    """``(J, E)`` and ``(J', E)`` pixel embeddings → ``(J, J')`` logits of "same class"."""

    def __init__(self, embedding_dim: int, hidden: int = 128, blocks: int = 2):
        super().__init__()
        self.embed = nn.Linear(2 * embedding_dim, hidden)
        self.blocks = nn.Sequential(*(ResidualBlock(hidden) for _ in range(blocks)))
        self.score = nn.Sequential(nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, feats_a: torch.Tensor, feats_b: torch.Tensor) -> torch.Tensor:
        # embed(concat(a_i, b_j)) = W_a·a_i + W_b·b_j + bias: the first layer runs per point, not per pair
        weight_a, weight_b = self.embed.weight.split(feats_a.shape[-1], dim=1)
        left = F.linear(feats_a, weight_a, self.embed.bias)  # (J, hidden)
        right = F.linear(feats_b, weight_b)  # (J', hidden)
        return self.score(self.blocks(left[:, None] + right[None])).squeeze(-1)


def sample_pair_points(
    labels_a: torch.Tensor,
    labels_b: torch.Tensor,
    num_points: int,
    inside_share: float = 0.8,
    unknown: int = 255,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the points of two images whose J × J cross pairs the similarity losses use.

    Per image, ``round(inside_share · J)`` points are drawn uniformly from the pixels of base classes present in
    both images (same-class and different-class base pairs for the head to learn from) and the rest from the
    pixels outside every base class (``unknown``: novel or void, where distillation acts); when one kind is
    short, the other fills in, and an image with fewer usable pixels than J gives what it has, so the two
    results may differ in length.

    Args:
        labels_a, labels_b: ``(P,)`` flattened base labels: novel (and void) pixels ``unknown``, padding any
            negative value (never drawn).
        num_points: J.

    Returns:
        ``(idx_a, idx_b)`` long pixel indices into each image.
    """
    shared = _shared_base_classes(labels_a, labels_b, unknown)
    return tuple(  # type: ignore[return-value]
        _draw(labels, shared, num_points, inside_share, unknown, generator) for labels in (labels_a, labels_b)
    )


def _shared_base_classes(labels_a: torch.Tensor, labels_b: torch.Tensor, unknown: int) -> torch.Tensor:
    present_a = labels_a.unique()
    shared = present_a[torch.isin(present_a, labels_b.unique())]
    return shared[(shared != unknown) & (shared >= 0)]


def _draw(labels, shared, num_points, inside_share, unknown, generator) -> torch.Tensor:
    inside = torch.isin(labels, shared).nonzero().flatten()
    outside = (labels == unknown).nonzero().flatten()
    want_inside = min(round(inside_share * num_points), len(inside))
    want_outside = min(num_points - want_inside, len(outside))
    want_inside = min(num_points - want_outside, len(inside))  # inside fills what outside lacks
    picks = [pool[torch.randperm(len(pool), generator=generator)[:k]] for pool, k in
             ((inside, want_inside), (outside, want_outside))]
    return torch.cat(picks)
