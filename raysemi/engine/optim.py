"""Optimizer with a backbone learning-rate multiplier, and the poly learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn

from raysemi.config import OptimConfig


def param_groups(models: dict[str, nn.Module], cfg: OptimConfig) -> list[dict]:
    """Two groups over all trainable parameters of all models: pretrained backbones at
    ``lr * backbone_lr_mult`` (any parameter under a ``backbone.`` module), everything else at ``lr``."""
    backbone, rest = [], []
    for model in models.values():
        for name, param in model.named_parameters():
            if param.requires_grad:
                (backbone if ".backbone." in f".{name}" else rest).append(param)
    groups = [{"params": rest, "lr": cfg.lr, "name": "head"}]
    if backbone:
        groups.append({"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult, "name": "backbone"})
    return groups


def build_optimizer(
    models: dict[str, nn.Module], cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (momentum) or AdamW, with ``lr_t = lr * (1 - t / total_steps) ** poly_power`` per group."""
    groups = param_groups(models, cfg)
    if cfg.name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_steps, power=cfg.poly_power)
    return optimizer, scheduler
