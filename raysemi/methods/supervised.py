"""SupOnly: the segmenter trained on labeled masks alone. The baseline every semi-supervised method must beat."""

from __future__ import annotations

import torch
from torch import nn

from raysemi.methods.base import Batch, Method, StreamSpec, labeled_criterion
from raysemi.models import LogitsOnly, build_segmenter, unwrap
from raysemi.sections import CommonConfig


class Supervised(Method):
    """Pixel CE (``loss.ohem`` for OHEM) on the labeled stream. Config keys: ``model.*``, ``loss.*``."""

    name = "supervised"
    search_space = {}  # the shared optimizer keys (and the label-fraction grid) only

    def __init__(self, cfg: CommonConfig):
        self.cfg = cfg
        self.criterion = labeled_criterion(cfg.loss)

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        return {"segmenter": build_segmenter(self.cfg.model, num_classes)}

    def streams(self) -> dict[str, StreamSpec]:
        return {"labeled": StreamSpec("labeled", self.cfg.train.batch_size)}

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        labeled = batch["labeled"]
        logits = models["segmenter"](labeled["image"])["logits"]
        loss = self.criterion(logits, labeled["mask"])
        return {"loss": loss, "loss_sup": loss.detach()}

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return LogitsOnly(unwrap(models["segmenter"]))
