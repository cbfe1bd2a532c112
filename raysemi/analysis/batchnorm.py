"""BatchNorm statistics of a trained model, recomputed on chosen images: what a model's running statistics
contribute to its score, apart from its weights (the idea of AdaBN, Li et al. 2016)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, images: Iterable[torch.Tensor]) -> int:
    """Replace each BatchNorm layer's running mean and variance in ``model`` by their averages over the
    ``(N, 3, H, W)`` batches of ``images``; return the number of layers.

    The average is cumulative (equal weight per batch: BatchNorm's ``momentum=None``), as
    :func:`torch.optim.swa_utils.update_bn`'s, but only the BatchNorm layers run in training mode, so dropout
    stays off while the statistics are gathered. ``model`` is left in eval mode with its momenta restored; its
    weights are untouched.

    Raises:
        ValueError: when ``model`` has no BatchNorm layer or ``images`` holds no batch.
    """
    layers = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer to recompute")
    momenta = [layer.momentum for layer in layers]
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    batches = 0
    for batch in images:
        model(batch)
        batches += 1
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
        layer.eval()
    if not batches:
        raise ValueError("no image batch to recompute BatchNorm statistics on")
    return len(layers)
