"""SupOnly: the segmenter trained on labeled masks alone. The baseline every semi-supervised method must beat."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from raysemi.methods.base import Batch, Method, StreamSpec, labeled_criterion
from raysemi.models import LogitsOnly, build_segmenter, unwrap
from raysemi.sections import CommonConfig, Section


class SupervisedConfig(Section):
    """The supervised baseline (``method: supervised``): the ``supervised`` section of a config."""

    unlabeled_batchnorm: bool = Field(
        False, description="also forward an unlabeled batch (train.unlabeled_batch_size images, no loss on them) "
        "in the labeled batch's pass, so BatchNorm's statistics see the unlabeled images as in a semi-supervised "
        "method's one-pass forward: the ablation that separates that effect from the method's unlabeled loss")


class Supervised(Method):
    """Pixel CE (``loss.ohem`` for OHEM) on the labeled stream. Config keys: ``supervised.*``
    (:class:`SupervisedConfig`), ``model.*``, ``loss.*``."""

    name = "supervised"
    config_model = SupervisedConfig
    search_space = {}  # the shared optimizer keys (and the label-fraction grid) only

    def __init__(self, cfg: CommonConfig):
        self.cfg = cfg
        self.options: SupervisedConfig = cfg.supervised
        self.criterion = labeled_criterion(cfg.loss)

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        return {"segmenter": build_segmenter(self.cfg.model, num_classes)}

    def streams(self) -> dict[str, StreamSpec]:
        streams = {"labeled": StreamSpec("labeled", self.cfg.train.batch_size)}
        if self.options.unlabeled_batchnorm:
            streams["unlabeled"] = StreamSpec("unlabeled", self.cfg.train.unlabeled_batch_size)
        return streams

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """The loss on the labeled images ``(N, 3, H, W)``; with ``supervised.unlabeled_batchnorm`` the unlabeled
        images ``(M, 3, H, W)`` join the same pass and their ``M`` logits are dropped."""
        labeled = batch["labeled"]
        images = labeled["image"]
        if self.options.unlabeled_batchnorm:
            images = torch.cat([images, batch["unlabeled"]["image"]])
        logits = models["segmenter"](images)["logits"][:len(labeled["image"])]
        loss = self.criterion(logits, labeled["mask"])
        return {"loss": loss, "loss_sup": loss.detach()}

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return LogitsOnly(unwrap(models["segmenter"]))
