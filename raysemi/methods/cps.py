"""CPS: cross pseudo supervision (Chen et al., "Semi-Supervised Semantic Segmentation with Cross Pseudo
Supervision", CVPR 2021), with CutMix.

Two segmenters of the same architecture. Their backbones start from the same (pretrained) weights; network 1
is the supervised baseline's model at the same ``run.seed`` (its head drawn from torch's global generator,
which the training loop seeds, so CPS and supervised start network 1 alike and a comparison compares methods,
not inits); network 2's head is kaiming-initialised (fan-in, as every head: :func:`raysemi.models.kaiming_init`)
from generator ``2·seed + 1`` (``cps.net1_init=seeded``: network 1's from ``2·seed``, raysemi's earlier scheme;
``cps.init_backbones=different`` re-initialises both backbones apart too). Per step:

    L = L_s + λ · L_cps,   L_cps = L_cps^u + L_cps^l (the paper's eq. 5)
    L_s     = CE(p1(x_l), y) + CE(p2(x_l), y)                       (``loss.ohem`` for OHEM)
    L_cps^u = CE(p1(x), argmax p2(x)) + CE(p2(x), argmax p1(x))     on unlabeled (mixed) x
    L_cps^l = the same on the labeled images x_l                    (``cps.on_labeled``, default on)

With CutMix (``cps.cutmix``, default) x is ``u0·(1−M) + u1·M`` for a box mask M drawn as TorchSemiSeg's
``BoxMaskGenerator`` with its CPS+CutMix settings (:mod:`raysemi.data.cutmix`); the pseudo-labels are the
argmax of each network's no-grad predictions on u0 and u1, mixed with the same M (one teacher pass per network
on u0, rolled for u1; dropout and drop-connect off, BatchNorm on batch statistics). u1 is the unlabeled batch
rolled by one, so u0 and u1 are always different images of the same batch and no second stream is decoded.

The students run the mixed images and the labeled images as separate passes (``cps.separate_passes``, as the
released code), so each pass's BatchNorm normalises by its own batch's statistics; off, they share one pass.

λ (``cps.weight``) defaults to 1.0 with CutMix and 1.5 without, the paper's VOC values (its Cityscapes configs
use 5 and 6), constant from the first step as published (``cps.rampup_steps`` ramps it up linearly from 0).
The published optimizer (SGD, weight decay 5e-4, one learning rate for backbone and heads, no ramp-up) is a
matter of ``optim.*`` keys: the ``cps_*`` configs and the benchmark's CPS variants set it (docs/methods.md).

Normalisation under DDP: each worker's loss is the mean over its own pixels and DDP averages gradients over
workers, so the loss is the mean over the global batch (``train.batch_size`` is global). The reference
implementation (TorchSemiSeg) uses the same per-worker mean but counts its batch size per GPU: its learning
rates go with ``batch_size × GPUs`` global images here.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from raysemi.data.cutmix import box_mask, mix
from raysemi.losses import cross_pseudo_supervision
from raysemi.methods.base import Batch, Method, StreamSpec, labeled_criterion
from raysemi.models import LogitsOnly, build_segmenter, kaiming_init, unwrap, without_dropout
from raysemi.sections import CommonConfig, Section


class CPSConfig(Section):
    """Cross pseudo supervision (``method: cps``): the ``cps`` section of a config. Defaults follow the paper and
    TorchSemiSeg's released CPS code and configs; each departure tried here is a switch."""

    cutmix: bool = Field(True, description="CutMix the unlabeled images (box masks) and their pseudo-labels")
    weight: float | None = Field(None, ge=0.0, description="λ; None: 1.0 with CutMix, 1.5 without (VOC-style "
                                 "defaults)")
    rampup_steps: int = Field(0, ge=0, description="λ grows linearly from 0 over these steps; 0: full λ from the "
                              "first step, as published")
    on_labeled: bool = Field(True, description="also apply the CPS loss to the labeled images: L_cps = L_cps^l + "
                             "L_cps^u, the paper's eq. 5 (false: the unlabeled term only, as TorchSemiSeg's CutMix "
                             "code)")
    separate_passes: bool = Field(True, description="run the labeled and the mixed unlabeled images through each "
                                  "student as separate passes, so BatchNorm normalises each by its own statistics "
                                  "(the released code); false: one pass over both")
    prop_range: tuple[float, float] = Field((0.25, 0.5), description="CutMix: the drawn area share p ~ U(low, "
                                            "high) of a mask's boxes")
    n_boxes: int = Field(3, ge=1, description="CutMix boxes per mask (overlaps toggle)")
    split_box_area: bool = Field(True, description="each box covers p / n_boxes of the image (TorchSemiSeg's "
                                 "BoxMaskGenerator: about 25 % pasted at the defaults); false: each box covers p "
                                 "(about 42 %)")
    random_aspect_ratio: bool = Field(True, description="CutMix boxes of random aspect ratio (height share p^u, "
                                      "u ~ U(0, 1)); false: square shares")
    invert_mask: bool = Field(True, description="the boxes are pasted from the second image (the reference's "
                              "invert=True); false: the boxes are the first image's, the rest pasted")
    confidence_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="leave out pseudo-labels whose teacher's softmax confidence is below "
        "this (UniMatch: 0.95), the loss still divided by every pixel; None: every pixel counts, as in the paper")
    init_backbones: Literal["same", "different"] = Field(
        "same", description="'different': kaiming-init both backbones apart")
    net1_init: Literal["supervised", "seeded"] = Field(
        "supervised", description="'supervised': network 1 is the supervised baseline's model at the same run.seed "
        "(its head from torch's global generator); 'seeded': its head from generator 2·seed (raysemi's earlier scheme)")
    eval: Literal["first", "second", "mean"] = Field(
        "first", description="the eval model: the first network, the second, or the mean of their softmaxes")

    @field_validator("prop_range")
    @classmethod
    def _share_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"prop_range must be (low, high) with 0 < low <= high <= 1, got {list(value)}")
        return value

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
        """``net1`` as :class:`~raysemi.methods.supervised.Supervised` builds its segmenter (torch's global
        generator: the loop seeds it with ``run.seed``) unless ``cps.net1_init=seeded``; ``net2``'s head from
        generator ``2·seed + 1``; one starting backbone unless ``cps.init_backbones=different``."""
        models = {name: build_segmenter(self.cfg.model, num_classes) for name in ("net1", "net2")}
        for index, model in enumerate(models.values()):
            generator = torch.Generator().manual_seed(self.cfg.run.seed * 2 + index)
            if index == 1 or self.options.net1_init == "seeded":
                kaiming_init([model.head, model.classifier], generator)
            if self.options.init_backbones == "different":
                kaiming_init([model.backbone], generator)
        if self.options.init_backbones == "same":  # the same starting backbone, pretrained or not
            models["net2"].backbone.load_state_dict(models["net1"].backbone.state_dict())
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
        labeled_1, mixed_1 = self.student_logits(net1, labeled, mixed)
        labeled_2, mixed_2 = self.student_logits(net2, labeled, mixed)
        mask = batch["labeled"]["mask"]
        loss_sup = self.criterion(labeled_1, mask) + self.criterion(labeled_2, mask)
        loss_unlabeled, loss_labeled = self.cps_terms(labeled_1, labeled_2, mixed_1, mixed_2, teacher_1, teacher_2)
        loss_cps = loss_unlabeled + loss_labeled
        weight = self.weight(step)
        threshold = self.options.confidence_threshold
        return {
            "loss": loss_sup + weight * loss_cps,
            "loss_sup": loss_sup.detach(),
            "loss_cps": loss_cps.detach(),
            **({"loss_cps_labeled": loss_labeled.detach()} if self.options.on_labeled else {}),
            "cps_weight": loss_sup.new_tensor(weight),
            **pseudo_label_stats(mixed_1.detach(), mixed_2.detach()),
            **({} if threshold is None else {"pseudo_kept": kept_share(
                teacher_1 if teacher_1 is not None else mixed_1.detach(),
                teacher_2 if teacher_2 is not None else mixed_2.detach(), threshold)}),
        }

    def student_logits(self, net: nn.Module, labeled: torch.Tensor,
                       mixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``net``'s logits ``(N, C, H, W)`` on the labeled images and ``(M, C, H, W)`` on the mixed ones: two
        passes with ``cps.separate_passes`` (mixed first, labeled last, as the released code), else one."""
        if self.options.separate_passes:
            mixed_logits = net(mixed)["logits"]
            return net(labeled)["logits"], mixed_logits
        logits = net(torch.cat([labeled, mixed]))["logits"]
        return logits[:len(labeled)], logits[len(labeled):]

    def cps_terms(self, labeled_1: torch.Tensor, labeled_2: torch.Tensor, mixed_1: torch.Tensor,
                  mixed_2: torch.Tensor, teacher_1: torch.Tensor | None,
                  teacher_2: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_cps^u, L_cps^l)`` from the two students' ``(N, C, H, W)`` logits on the labeled images and
        ``(M, C, H, W)`` on the mixed ones, with the CutMix teachers (None: each student's own logits). The
        labeled term is the networks' argmaxes on the labeled images supervising each other (a zero tensor
        without ``cps.on_labeled``); neither term passes gradient through a pseudo-label."""
        threshold = self.options.confidence_threshold
        unlabeled = cross_pseudo_supervision(mixed_1, mixed_2, teacher_1=teacher_1, teacher_2=teacher_2,
                                             threshold=threshold)
        if not self.options.on_labeled:
            return unlabeled, unlabeled.new_zeros(())
        return unlabeled, cross_pseudo_supervision(labeled_1, labeled_2, threshold=threshold)

    def _cutmix(self, net1: nn.Module, net2: nn.Module, images: torch.Tensor):
        """Mixed images ``(N, 3, H, W)`` and each network's mixed no-grad predictions ``(N, C, H, W)``.

        One teacher pass per network, without dropout or drop-connect (BatchNorm in its training mode, on batch
        statistics): the second image's prediction is the first's rolled by one, which is what a pass on the
        rolled batch gives, since batch statistics do not change when the batch is permuted.
        """
        second = images.roll(1, dims=0)
        masks = self.masks(len(images), *images.shape[-2:]).to(images.device)
        teachers = []
        for net in (net1, net2):
            with torch.no_grad(), without_dropout(net):
                logits = net(images)["logits"]
            teachers.append(mix(logits, logits.roll(1, dims=0), masks))
        return mix(images, second, masks), teachers[0], teachers[1]

    def masks(self, n: int, height: int, width: int) -> torch.Tensor:
        """``(n, 1, height, width)`` CutMix masks with the ``cps.*`` box settings (torch's global generator)."""
        options = self.options
        return box_mask(n, height, width, options.prop_range, options.n_boxes, split_area=options.split_box_area,
                        random_aspect_ratio=options.random_aspect_ratio, invert=options.invert_mask)

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
