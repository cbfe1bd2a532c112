"""Loss functions: pure tensor functions, one module per family. Never imports ray or wandb."""

from raysemi.losses.cross_entropy import ohem_cross_entropy, pixel_cross_entropy
from raysemi.losses.directional_contrastive import (
    directional_alignment_loss,
    directional_contrastive_loss,
    kept_anchor_shares,
)
from raysemi.losses.pseudo_supervision import cross_pseudo_supervision
from raysemi.losses.self_correction import linear_self_correction, soft_cross_entropy

__all__ = [
    "cross_pseudo_supervision",
    "directional_alignment_loss",
    "directional_contrastive_loss",
    "kept_anchor_shares",
    "linear_self_correction",
    "ohem_cross_entropy",
    "pixel_cross_entropy",
    "soft_cross_entropy",
]
