"""Loss functions: pure tensor functions, one module per family. Never imports ray or wandb."""

from raysemi.losses.cross_entropy import ohem_cross_entropy, pixel_cross_entropy

__all__ = ["ohem_cross_entropy", "pixel_cross_entropy"]
