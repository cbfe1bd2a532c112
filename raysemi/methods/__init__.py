"""Training methods, one file each. Never imports ray or wandb."""

from raysemi.methods.base import Method, StreamSpec, build_method

__all__ = ["Method", "StreamSpec", "build_method"]
