"""Segmentation models. Never imports ray or wandb."""

from raysemi.models.box_encoder import AncillarySegmenter, BoxEncoder, ConvCorrector, build_ancillary
from raysemi.models.mask_former import (
    MaskFormer,
    MaskFormerShape,
    SemanticOutput,
    semantic_probabilities,
    sine_positions,
)
from raysemi.models.projector import Projector, resample_to_stride
from raysemi.models.segmenter import LogitsOnly, Segmenter, build_segmenter, kaiming_init, unwrap, without_dropout

__all__ = [
    "AncillarySegmenter",
    "BoxEncoder",
    "ConvCorrector",
    "LogitsOnly",
    "MaskFormer",
    "MaskFormerShape",
    "Projector",
    "Segmenter",
    "SemanticOutput",
    "build_ancillary",
    "build_segmenter",
    "kaiming_init",
    "without_dropout",
    "resample_to_stride",
    "semantic_probabilities",
    "sine_positions",
    "unwrap",
]
