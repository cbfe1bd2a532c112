"""Proposal–pixel similarity transfer (SimFormer, Chen, Niu et al., NeurIPS 2022), per image.

Queries are matched one-to-one to the image's classes (:mod:`raysemi.losses.matching`): base classes have masks,
novel classes only image tags. Every query learns its class (matched: the target's class; unmatched: no object,
weighted ``no_object_weight``); only queries matched to base classes learn masks. Novel masks come from the
mask embedding the base masks train: that is the transfer. The complementary loss then asks the novel queries'
masks, together with a constant "ignore" logit, to cover what no base mask covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raysemi.losses.mask_classification import dice_loss, sigmoid_focal_loss
from raysemi.losses.matching import DEFAULT_COSTS, MatchCosts, hungarian_match, matching_cost


@dataclass
class ImageTargets:
    """One image's targets at the mask logits' resolution.

    Attributes:
        labels: ``(T,)`` long, the classes present: base ones from the (novel-hidden) mask, novel ones from tags.
        masks: ``(T, h, w)`` float 0/1; rows of novel classes are all zero and never used.
        is_base: ``(T,)`` bool.
        valid: ``(h, w)`` bool, pixels that are not padding.
    """

    labels: torch.Tensor
    masks: torch.Tensor
    is_base: torch.Tensor
    valid: torch.Tensor


@dataclass(frozen=True)
class ProposalPixelWeights:
    """Loss weights (SimFormer / MaskFormer defaults)."""

    no_object: float = 0.1
    focal: float = 20.0
    dice: float = 1.0


def proposal_pixel_loss(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    targets: ImageTargets,
    weights: ProposalPixelWeights = ProposalPixelWeights(),
    costs: MatchCosts = DEFAULT_COSTS,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Match, then the class and mask losses of one image.

    Args:
        class_logits: ``(Q, K + 1)``; mask_logits: ``(Q, h, w)``.
        targets: the image's :class:`ImageTargets` at ``(h, w)``.

    Returns:
        ``({"loss", "loss_class", "loss_focal", "loss_dice"}, novel_queries)``: ``loss_class`` is the CE over
        all Q queries weighted by class (no object: ``weights.no_object``), mean by total weight; the mask terms
        are the focal and dice losses of the queries matched to base classes, over valid pixels (0 without
        any); ``loss = loss_class + focal·loss_focal + dice·loss_dice``. ``novel_queries`` ``(T_novel,)`` are
        the queries matched to novel classes.
    """
    cost = matching_cost(class_logits, mask_logits, targets.labels, targets.masks, targets.is_base, costs)
    queries, matched = hungarian_match(cost)
    num_classes = class_logits.shape[-1] - 1
    target_classes = torch.full((len(class_logits),), num_classes, dtype=torch.long, device=class_logits.device)
    target_classes[queries] = targets.labels[matched]
    class_weight = torch.ones(num_classes + 1, device=class_logits.device)
    class_weight[-1] = weights.no_object
    loss_class = F.cross_entropy(class_logits.float(), target_classes, weight=class_weight)
    base = targets.is_base[matched]
    base_masks, base_targets = mask_logits[queries[base]], targets.masks[matched[base]]
    losses = {
        "loss_class": loss_class,
        "loss_focal": sigmoid_focal_loss(base_masks, base_targets, targets.valid),
        "loss_dice": dice_loss(base_masks, base_targets, targets.valid),
    }
    losses["loss"] = loss_class + weights.focal * losses["loss_focal"] + weights.dice * losses["loss_dice"]
    return losses, queries[~base]


def complementary_loss(
    mask_logits: torch.Tensor,
    novel_queries: torch.Tensor,
    base_region: torch.Tensor,
    valid: torch.Tensor,
    ignore_prob: float = 0.05,
    focal_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """``focal_weight`` · focal + ``dice_weight`` · dice asking ``max(max over novel queries' mask logits,
    logit(ignore_prob))`` to be 1 outside every
    base mask and 0 inside, over valid pixels.

    Args:
        mask_logits: ``(Q, h, w)``.
        novel_queries: ``(T_novel,)`` long, the queries matched to the image's novel tags.
        base_region: ``(h, w)`` bool, inside some base class's mask.
        valid: ``(h, w)`` bool, not padding.
        ignore_prob: the constant "ignore" proposal's probability (its logit joins the max), so pixels that
            belong to no class at all need not be claimed by a novel query.

    Returns:
        Scalar; 0 (graph intact) for an image without novel tags.
    """
    if len(novel_queries) == 0:
        return mask_logits.sum() * 0.0
    ignore_logit = math.log(ignore_prob / (1 - ignore_prob))
    covered = mask_logits[novel_queries].amax(0).clamp(min=ignore_logit)[None]
    target = (~base_region).float()[None]
    return focal_weight * sigmoid_focal_loss(covered, target, valid) + dice_weight * dice_loss(covered, target, valid)
