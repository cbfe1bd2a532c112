"""Loss functions: pure tensor functions, one module per family. Never imports ray or wandb."""

from raysemi.losses.cross_entropy import ohem_cross_entropy, pixel_cross_entropy
from raysemi.losses.directional_contrastive import (
    anchor_mask,
    directional_alignment_loss,
    directional_contrastive_loss,
    kept_anchor_shares,
)
from raysemi.losses.mask_classification import (
    dice_loss,
    pairwise_dice_cost,
    pairwise_focal_cost,
    sigmoid_focal_loss,
)
from raysemi.losses.matching import MatchCosts, hungarian_match, matching_cost
from raysemi.losses.pixel_similarity import (
    balanced_pair_bce,
    novel_similarity,
    pixel_pair_similarity_targets,
    similarity_distillation_loss,
)
from raysemi.losses.proposal_pixel import (
    ImageTargets,
    ProposalPixelWeights,
    complementary_loss,
    proposal_pixel_loss,
)
from raysemi.losses.pseudo_supervision import cross_pseudo_supervision
from raysemi.losses.self_correction import linear_self_correction, soft_cross_entropy

__all__ = [
    "ImageTargets",
    "MatchCosts",
    "ProposalPixelWeights",
    "anchor_mask",
    "balanced_pair_bce",
    "complementary_loss",
    "cross_pseudo_supervision",
    "dice_loss",
    "directional_alignment_loss",
    "directional_contrastive_loss",
    "hungarian_match",
    "kept_anchor_shares",
    "linear_self_correction",
    "matching_cost",
    "novel_similarity",
    "ohem_cross_entropy",
    "pairwise_dice_cost",
    "pairwise_focal_cost",
    "pixel_cross_entropy",
    "pixel_pair_similarity_targets",
    "proposal_pixel_loss",
    "sigmoid_focal_loss",
    "similarity_distillation_loss",
    "soft_cross_entropy",
]
