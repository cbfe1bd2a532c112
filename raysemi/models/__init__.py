"""Segmentation models. Never imports ray or wandb."""

from raysemi.models.segmenter import LogitsOnly, Segmenter, build_segmenter, unwrap

__all__ = ["LogitsOnly", "Segmenter", "build_segmenter", "unwrap"]
