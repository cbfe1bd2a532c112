"""Segmentation models. Never imports ray or wandb."""

from raysemi.models.projector import Projector, resample_to_stride
from raysemi.models.segmenter import LogitsOnly, Segmenter, build_segmenter, unwrap

__all__ = ["LogitsOnly", "Projector", "Segmenter", "build_segmenter", "resample_to_stride", "unwrap"]
