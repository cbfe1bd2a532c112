"""Optimizer with a backbone learning-rate multiplier, and the poly learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn

from raysemi.config import OptimConfig


def param_groups(models: dict[str, nn.Module], cfg: OptimConfig) -> list[dict]:
    """Groups over all trainable parameters of all models: pretrained backbones at ``lr * backbone_lr_mult``
    (any parameter under a ``backbone.`` module, group ``backbone``), everything else at ``lr`` (``head``).

    With ``optim.decay_norm_and_bias=false`` the parameters of one dimension or none (biases, normalisation
    weights and biases) go to groups ``head_no_decay`` / ``backbone_no_decay`` with weight decay 0, as
    TorchSemiSeg's ``group_weight`` does for CPS; conv and linear weights keep ``weight_decay``.
    """
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for model in models.values():
        for name, param in model.named_parameters():
            if param.requires_grad:
                part = "backbone" if ".backbone." in f".{name}" else "head"
                decays = cfg.decay_norm_and_bias or param.ndim > 1
                groups.setdefault((part, decays), []).append(param)
    order = [("head", True), ("head", False), ("backbone", True), ("backbone", False)]
    return [_group(groups.get(key, []), *key, cfg) for key in order if key in groups or key == ("head", True)]


def _group(params: list[nn.Parameter], part: str, decays: bool, cfg: OptimConfig) -> dict:
    lr = cfg.lr * (cfg.backbone_lr_mult if part == "backbone" else 1.0)
    group = {"params": params, "lr": lr, "name": part if decays else f"{part}_no_decay"}
    return group if decays else {**group, "weight_decay": 0.0}


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
