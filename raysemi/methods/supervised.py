"""SupOnly: the segmenter trained on labeled masks alone. The baseline every semi-supervised method must beat.

With ``supervised.weak_boxes=fill`` it is instead the baseline a box-supervised method must beat:
supervised on F ∪ W, where W's masks are its boxes filled in (:func:`raysemi.data.weak_labels.fill_box_raster`:
inside one class's boxes that class, outside every box the stuff class when there is exactly one, ignored
elsewhere). W's boxes are the ``data.unlabeled_boxes`` file self-correction reads, and its loss is
self-correction's primary-stage loss with the box-filled one-hot masks in place of q: ``CE(F) + CE(W)``, the
two images in one forward pass.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from raysemi.data.dataset import dataset_classes
from raysemi.data.weak_labels import fill_box_raster, stuff_classes
from raysemi.methods.base import Batch, Method, StreamSpec, labeled_criterion
from raysemi.models import LogitsOnly, build_segmenter, unwrap
from raysemi.sections import CommonConfig, Section


class SupervisedConfig(Section):
    """The supervised baseline (``method: supervised``): the ``supervised`` section of a config."""

    unlabeled_batchnorm: bool = Field(
        False, description="also forward an unlabeled batch (train.unlabeled_batch_size images, no loss on them) "
        "in the labeled batch's pass, so BatchNorm's statistics see the unlabeled images as in a semi-supervised "
        "method's one-pass forward: the ablation that separates that effect from the method's unlabeled loss")
    weak_boxes: Literal["off", "fill"] = Field(
        "off", description="`fill`: also train on the weak images (data.unlabeled_boxes, train.unlabeled_batch_size "
        "per step) with their boxes filled into masks: self-correction's box-supervised baseline")


class Supervised(Method):
    """Pixel CE (``loss.ohem`` for OHEM) on the labeled stream, and with ``weak_boxes=fill`` on the weak stream's
    box-filled masks. Config keys: ``supervised.*`` (:class:`SupervisedConfig`), ``model.*``, ``loss.*``,
    ``data.boxes`` (which classes are stuff)."""

    name = "supervised"
    config_model = SupervisedConfig
    search_space = {}  # the shared optimizer keys (and the label-fraction grid) only

    def __init__(self, cfg: CommonConfig):
        self.cfg = cfg
        self.options: SupervisedConfig = cfg.supervised
        self.criterion = labeled_criterion(cfg.loss)

    @classmethod
    def check_config(cls, cfg: CommonConfig) -> None:
        if cfg.supervised.weak_boxes == "fill" and not cfg.data.unlabeled_boxes:
            raise ValueError("supervised.weak_boxes=fill needs data.unlabeled_boxes, a boxes file for the weak set "
                             "(write one with `raysemi data split ... --boxes`)")
        if cfg.supervised.weak_boxes == "fill" and cfg.supervised.unlabeled_batchnorm:
            raise ValueError("supervised.weak_boxes=fill already passes the weak images through BatchNorm with the "
                             "labeled ones; set supervised.unlabeled_batchnorm=false")

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        return {"segmenter": build_segmenter(self.cfg.model, num_classes)}

    def streams(self) -> dict[str, StreamSpec]:
        streams = {"labeled": StreamSpec("labeled", self.cfg.train.batch_size)}
        if self.options.unlabeled_batchnorm:
            streams["unlabeled"] = StreamSpec("unlabeled", self.cfg.train.unlabeled_batch_size)
        if self.options.weak_boxes == "fill":
            streams["weak"] = StreamSpec("unlabeled", self.cfg.train.unlabeled_batch_size)
        return streams

    @cached_property
    def stuff(self) -> tuple[int, ...]:
        """The classes without boxes (``data.boxes``), from the configured dataset's class list."""
        return stuff_classes(dataset_classes(self.cfg.data), self.cfg.data.boxes)

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """The loss on the labeled images ``(N, 3, H, W)``; with ``supervised.unlabeled_batchnorm`` the unlabeled
        images ``(M, 3, H, W)`` join the same pass and their ``M`` logits are dropped; with ``weak_boxes=fill``
        the weak images ``(M, 3, H, W)`` join it and add the CE on their box-filled masks (from ``boxes``
        ``(M, C + 1, H, W)``)."""
        labeled = batch["labeled"]
        n = len(labeled["image"])
        extra = {"unlabeled": self.options.unlabeled_batchnorm, "weak": self.options.weak_boxes == "fill"}
        images = torch.cat([labeled["image"], *(batch[name]["image"] for name, used in extra.items() if used)])
        logits = models["segmenter"](images)["logits"]
        loss = self.criterion(logits[:n], labeled["mask"])
        if not extra["weak"]:
            return {"loss": loss, "loss_sup": loss.detach()}
        filled = fill_box_raster(batch["weak"]["boxes"], self.stuff, self.cfg.loss.ignore_index)
        loss_weak = self.criterion(logits[n:], filled)
        return {"loss": loss + loss_weak, "loss_sup": loss.detach(), "loss_weak": loss_weak.detach()}

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return LogitsOnly(unwrap(models["segmenter"]))
