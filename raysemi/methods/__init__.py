"""Training methods, one file each; :mod:`raysemi.methods.registry` lists them. Never imports ray or wandb."""

from raysemi.methods.base import Method, StreamSpec
from raysemi.methods.registry import build_method, method_class, method_names

__all__ = ["Method", "StreamSpec", "build_method", "method_class", "method_names"]
