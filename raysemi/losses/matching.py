"""Hungarian matching of a mask-classification model's queries to an image's classes (SimFormer's
proposal–pixel similarity transfer): base targets are matched on class and mask, novel targets (which have
image tags but no mask) on class alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from raysemi.losses.mask_classification import pairwise_dice_cost, pairwise_focal_cost


@dataclass(frozen=True)
class MatchCosts:
    """Weights of the matching cost (SimFormer / MaskFormer defaults: class 1, focal 20, dice 1)."""

    class_weight: float = 1.0
    focal_weight: float = 20.0
    dice_weight: float = 1.0


DEFAULT_COSTS = MatchCosts()


def matching_cost(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    target_labels: torch.Tensor,
    target_masks: torch.Tensor,
    target_is_base: torch.Tensor,
    costs: MatchCosts = DEFAULT_COSTS,
) -> torch.Tensor:
    """The ``(Q, T)`` cost of assigning query q to target t.

    ``class_weight · (−softmax(class_q)[label_t])``, plus, for base targets only,
    ``focal_weight · focal(mask_q, mask_t) + dice_weight · dice(mask_q, mask_t)``.

    Args:
        class_logits: ``(Q, K + 1)`` per-query class logits (last = no-object).
        mask_logits: ``(Q, P...)`` per-query mask logits.
        target_labels: ``(T,)`` class ids of the image's classes.
        target_masks: ``(T, P...)`` 0/1 masks (rows of novel targets are ignored).
        target_is_base: ``(T,)`` bool, which targets have a mask.
    """
    with torch.no_grad():
        cost = -costs.class_weight * class_logits.float().softmax(-1)[:, target_labels]
        base = target_is_base.nonzero().flatten()
        if len(base):
            masks, targets = mask_logits.flatten(1), target_masks[base].flatten(1)
            mask_cost = costs.focal_weight * pairwise_focal_cost(masks, targets)
            mask_cost = mask_cost + costs.dice_weight * pairwise_dice_cost(masks, targets)
            cost[:, base] += mask_cost
    return cost


def hungarian_match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment of a ``(Q, T)`` cost (Q ≥ T): ``(query_idx, target_idx)``, each ``(T,)``
    long, sorted by query (scipy's ``linear_sum_assignment``)."""
    if cost.shape[0] < cost.shape[1]:
        raise ValueError(f"{cost.shape[0]} queries cannot each take one of {cost.shape[1]} targets; "
                         "raise the number of queries to at least the classes an image can hold")
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
