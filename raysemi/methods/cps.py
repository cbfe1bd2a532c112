"""CPS: cross pseudo supervision (Chen et al., "Semi-Supervised Semantic Segmentation with Cross Pseudo
Supervision", CVPR 2021), with CutMix.

Two segmenters of the same architecture. Their backbones start from the same (pretrained) weights; their heads
are kaiming-initialised (fan-in, as every method's head: :func:`raysemi.models.kaiming_init`) from two
different seeds (``cps.init_backbones=different`` re-initialises the
backbones apart too). Per step:

    L = L_s + λ · L_cps
    L_s   = CE(p1(x_l), y) + CE(p2(x_l), y)                       (``loss.ohem`` for OHEM)
    L_cps = CE(p1(x), argmax p2(x)) + CE(p2(x), argmax p1(x))      on unlabeled x (+ labeled if cps.on_labeled)

With CutMix (``cps.cutmix``, default) x is ``u0·(1−M) + u1·M`` for a box mask M; the pseudo-labels are the
argmax of each network's no-grad predictions on u0 and u1, mixed with the same M (one teacher pass per network
on u0, rolled for u1; dropout and drop-connect off, BatchNorm on batch statistics). u1 is the unlabeled batch
rolled by one, so u0 and u1 are always different images of the same batch and no second stream is decoded.

λ (``cps.weight``) defaults to 1.0 with CutMix and 1.5 without, the paper's VOC values (its Cityscapes configs
use 5 and 6); ``cps.rampup_steps`` ramps it up linearly from 0, since full weight from the first step hurts a
network that cannot predict yet.

Normalisation under DDP: each worker's loss is the mean over its own pixels and DDP averages gradients over
workers, so the loss is the mean over the global batch (``train.batch_size`` is global). The reference
implementation (TorchSemiSeg) uses the same per-worker mean but counts its batch size per GPU: its learning
rates go with ``batch_size × GPUs`` global images here.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from raysemi.data.cutmix import box_mask, mix
from raysemi.losses import cross_pseudo_supervision
from raysemi.methods.base import Batch, Method, StreamSpec, labeled_criterion
from raysemi.models import LogitsOnly, build_segmenter, kaiming_init, unwrap, without_dropout
from raysemi.sections import CommonConfig, Section


class CPSConfig(Section):
    """Cross pseudo supervision (``method: cps``): the ``cps`` section of a config."""

    cutmix: bool = Field(True, description="CutMix the unlabeled images (box masks) and their pseudo-labels")
    weight: float | None = Field(None, ge=0.0, description="λ; None: 1.0 with CutMix, 1.5 without (VOC-style "
                                 "defaults)")
    rampup_steps: int = Field(0, ge=0, description="λ grows linearly from 0 over these steps")
    on_labeled: bool = Field(False, description="also apply the CPS loss to labeled images (the paper's form "
                             "without CutMix)")
    prop_range: tuple[float, float] = Field((0.25, 0.5), description="area share of each CutMix box")
    n_boxes: int = Field(3, ge=1, description="CutMix boxes per mask")
    confidence_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="leave out pseudo-labels whose teacher's softmax confidence is below "
        "this (UniMatch: 0.95), the loss still divided by every pixel; None: every pixel counts, as in the paper")
    init_backbones: Literal["same", "different"] = Field(
        "same", description="'different': kaiming-init both backbones apart")
    eval: Literal["first", "second", "mean"] = Field(
        "first", description="the eval model: the first network, the second, or the mean of their softmaxes")

    @property
    def resolved_weight(self) -> float:
        if self.weight is not None:
            return self.weight
        return 1.0 if self.cutmix else 1.5


class CrossPseudoSupervision(Method):
    """Config keys: ``cps.*`` (:class:`CPSConfig`), ``model.*``, ``loss.*``."""

    name = "cps"
    config_model = CPSConfig
    search_space = {"cps.weight": {"uniform": [0.5, 3.0]},
                    "cps.prop_range": {"choice": [[0.25, 0.5], [0.1, 0.3], [0.4, 0.6]]}}

    def __init__(self, cfg: CommonConfig):
        self.cfg = cfg
        self.options: CPSConfig = cfg.cps
        self.criterion = labeled_criterion(cfg.loss)

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        models = {}
        for index, name in enumerate(("net1", "net2")):
            model = build_segmenter(self.cfg.model, num_classes)
            generator = torch.Generator().manual_seed(self.cfg.run.seed * 2 + index)
            kaiming_init([model.head, model.classifier], generator)
            if self.options.init_backbones == "different":
                kaiming_init([model.backbone], generator)
            elif models:  # the same starting backbone, pretrained or not
                model.backbone.load_state_dict(models["net1"].backbone.state_dict())
            models[name] = model
        return models

    def streams(self) -> dict[str, StreamSpec]:
        return {
            "labeled": StreamSpec("labeled", self.cfg.train.batch_size),
            "unlabeled": StreamSpec("unlabeled", self.cfg.train.unlabeled_batch_size),
        }

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        net1, net2 = models["net1"], models["net2"]
        labeled, unlabeled = batch["labeled"]["image"], batch["unlabeled"]["image"]
        if self.options.cutmix:
            mixed, teacher_1, teacher_2 = self._cutmix(net1, net2, unlabeled)
        else:
            mixed, teacher_1, teacher_2 = unlabeled, None, None
        n = len(labeled)
        logits_1 = net1(torch.cat([labeled, mixed]))["logits"]  # one pass: BN sees both, as in the references
        logits_2 = net2(torch.cat([labeled, mixed]))["logits"]
        mask = batch["labeled"]["mask"]
        loss_sup = self.criterion(logits_1[:n], mask) + self.criterion(logits_2[:n], mask)
        threshold = self.options.confidence_threshold
        loss_cps = cross_pseudo_supervision(logits_1[n:], logits_2[n:], teacher_1=teacher_1, teacher_2=teacher_2,
                                            threshold=threshold)
        if self.options.on_labeled:
            loss_cps = loss_cps + cross_pseudo_supervision(logits_1[:n], logits_2[:n], threshold=threshold)
        weight = self.weight(step)
        return {
            "loss": loss_sup + weight * loss_cps,
            "loss_sup": loss_sup.detach(),
            "loss_cps": loss_cps.detach(),
            "cps_weight": loss_sup.new_tensor(weight),
            **pseudo_label_stats(logits_1[n:].detach(), logits_2[n:].detach()),
            **({} if threshold is None else {"pseudo_kept": kept_share(
                teacher_1 if teacher_1 is not None else logits_1[n:].detach(),
                teacher_2 if teacher_2 is not None else logits_2[n:].detach(), threshold)}),
        }

    def _cutmix(self, net1: nn.Module, net2: nn.Module, images: torch.Tensor):
        """Mixed images ``(N, 3, H, W)`` and each network's mixed no-grad predictions ``(N, C, H, W)``.

        One teacher pass per network, without dropout or drop-connect (BatchNorm in its training mode, on batch
        statistics): the second image's prediction is the first's rolled by one, which is what a pass on the
        rolled batch gives, since batch statistics do not change when the batch is permuted.
        """
        second = images.roll(1, dims=0)
        masks = box_mask(len(images), *images.shape[-2:], self.options.prop_range, self.options.n_boxes)
        masks = masks.to(images.device)
        teachers = []
        for net in (net1, net2):
            with torch.no_grad(), without_dropout(net):
                logits = net(images)["logits"]
            teachers.append(mix(logits, logits.roll(1, dims=0), masks))
        return mix(images, second, masks), teachers[0], teachers[1]

    def weight(self, step: int) -> float:
        """λ at ``step``: linear ramp-up over ``cps.rampup_steps``, then constant."""
        ramp = min(1.0, step / self.options.rampup_steps) if self.options.rampup_steps else 1.0
        return self.options.resolved_weight * ramp

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        net1, net2 = unwrap(models["net1"]), unwrap(models["net2"])
        if self.options.eval == "first":
            return LogitsOnly(net1)
        if self.options.eval == "second":
            return LogitsOnly(net2)
        return MeanOfSoftmaxes(net1, net2)


class MeanOfSoftmaxes(nn.Module):
    """``(N, 3, H, W)`` → ``(N, C, H, W)`` log of the mean of the two networks' softmaxes."""

    def __init__(self, net1: nn.Module, net2: nn.Module):
        super().__init__()
        self.net1, self.net2 = net1, net2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probs = (self.net1(images)["logits"].softmax(1) + self.net2(images)["logits"].softmax(1)) / 2
        return probs.clamp_min(1e-12).log()


def pseudo_label_stats(logits_1: torch.Tensor, logits_2: torch.Tensor) -> dict[str, torch.Tensor]:
    """Share of pixels where the two networks' argmaxes agree, and their mean top-class confidence."""
    probs_1, probs_2 = logits_1.float().softmax(1), logits_2.float().softmax(1)
    confidence_1, labels_1 = probs_1.max(1)
    confidence_2, labels_2 = probs_2.max(1)
    return {
        "pseudo_agreement": (labels_1 == labels_2).float().mean(),
        "pseudo_confidence": (confidence_1.mean() + confidence_2.mean()) / 2,
    }


def kept_share(teacher_1: torch.Tensor, teacher_2: torch.Tensor, threshold: float) -> torch.Tensor:
    """Share of pseudo-labels that ``cps.confidence_threshold`` keeps: pixels of the two teachers' ``(N, C, H, W)``
    predictions whose softmax confidence is at least ``threshold``, mean of the two."""
    shares = [(teacher.float().softmax(1).amax(1) >= threshold).float().mean() for teacher in (teacher_1, teacher_2)]
    return (shares[0] + shares[1]) / 2
