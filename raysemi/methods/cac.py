"""CAC: directional context-aware consistency (Lai et al., "Semi-supervised Semantic Segmentation with
Directional Context-aware Consistency", CVPR 2021), with its image-level-tag variant.

Each unlabeled image arrives as two partially overlapping crops (the :class:`CropPairs` view below, cut by
:mod:`raysemi.data.overlapping_crops`). The
segmenter's decoder features are resampled to stride 8 and projected to unit-length embeddings φ; on the
overlap, each pixel's embedding in one crop should match its embedding in the other crop, seen in a different
context, against negatives of other pseudo-classes. Per step::

    L = L_ce + λ · L_dc (+ λ_w · L_w with image tags)
    L_dc = l(φ1, φ2) + l(φ2, φ1)                    (raysemi.losses.directional_contrastive_loss)
    L_w  = ½ (BCE(C_w(f_u1), tags) + BCE(C_w(f_u2), tags))   multi-label, on average-pooled decoder features

Pseudo-labels ŷ and confidences c come from the segmenter's classifier on the same stride-8 features, without
gradient. Negatives are embeddings (no gradient) of pixels of both crops, sampled from the batch, gathered
from every DDP worker (``cac.num_negatives`` in all), optionally with those of the last ``cac.queue_steps``
steps. The queue lives in memory: after a resume it starts empty and refills within K steps.

Choices where the paper is silent or disagrees with its code:
- λ: the paper's text says 30; its released code uses 0.1 with each direction normalised by the number of kept
  anchors, as here: ``cac.weight`` defaults to 0.1. ``cac.start_step`` (the code's ``epoch_start_unsup``) and
  ``cac.rampup_steps`` schedule it.
- The loss of one direction is averaged over the kept anchors of the whole batch (the released code's form),
  not per image. Under DDP the batch is the global one: each worker scales its mean by W·k/K (its k kept
  anchors, K over all W workers, one all-reduce), so DDP's average of the gradients is the mean over all K
  anchors, what one process computes at the global batch (the released code averages per-GPU means, which
  weighs the anchors of a GPU with few kept ones up; tests/test_distributed_equivalence.py checks the match).
- Labeled images and both crops go through the segmenter in one forward pass, so BatchNorm sees them together.
- Padding (crops larger than the rescaled image) never serves as an anchor or a negative.
- The two crops need a region larger than the crop to differ: ``cac.region_range`` resizes each unlabeled image
  so its long side is r × the crop's (the released code: r in [1, 2.5]); the logged ``crop_iou`` (mean IoU of
  the step's pairs) and ``crop_identical`` (share of pairs that are one crop twice) show what the loss saw.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from raysemi.data.dataset import load_sample
from raysemi.data.overlapping_crops import OverlappingCrops
from raysemi.data.pipeline import batch_rows, cached_reader, record_sample, tag_columns
from raysemi.data.transforms import TrainAugment, normalize, to_tensors
from raysemi.data.views import View, fake_labels
from raysemi.losses import (
    anchor_mask,
    directional_alignment_loss,
    directional_contrastive_loss,
    kept_anchor_shares,
)
from raysemi.methods.base import Batch, Method, StreamSpec, labeled_criterion
from raysemi.models import LogitsOnly, Projector, build_segmenter, resample_to_stride, unwrap
from raysemi.sections import CommonConfig, Section

FEATURE_STRIDE = 8


class CACConfig(Section):
    """Directional context-aware consistency (``method: cac``): the ``cac`` section of a config."""

    weight: float = Field(0.1, ge=0.0, description="λ for L_dc, with L_dc normalised by the kept anchors "
                          "(released code), of all workers together")
    start_step: int = Field(0, ge=0, description="L_dc is off before this step")
    rampup_steps: int = Field(0, ge=0, description="then λ grows linearly from 0 over these steps")
    temperature: float = Field(0.1, gt=0.0, description="τ")
    gamma: float = Field(0.75, ge=0.0, lt=1.0, description="positive filtering threshold γ")
    num_negatives: int = Field(19_200, ge=1, description="negatives per step, over all workers (before the "
                               "queue)")
    queue_steps: int = Field(0, ge=0, description="also use the negatives of the last K steps")
    chunk_size: int | str = Field("auto", description="negatives per chunk of the memory-efficient loss; "
                                  "'auto': sized per device")
    projection_dim: int = Field(128, ge=1, description="width of the projector's embeddings")
    iou_range: tuple[float, float] = Field((0.1, 1.0), description="accepted IoU of the two crops, [low, high)")
    region_range: tuple[float, float] | None = Field(
        None, description="the unlabeled image is resized so that its long side is r × the crop's long side, r "
        "drawn from this range (released code: 320 crops from long sides 320–800, i.e. [1.0, 2.5]); None: "
        "data.scale_range resizes it")
    projector: bool = Field(True, description="ablation (Table 3): False: the loss works on the "
                            "(L2-normalised) decoder features")
    context: bool = Field(True, description="ablation: False: the same crop twice (independent flips and "
                          "photometric augmentation)")
    loss: Literal["contrastive", "l2"] = Field("contrastive", description="ablation: l2 aligns positive pairs "
                                               "with ||φ1 − φ2||²")
    directional: bool = Field(True, description="ablation: the directional mask 1[c1 < c2]")
    negative_sampling: bool = Field(True, description="ablation: drop negatives with the anchor's pseudo-label")
    positive_filtering: bool = Field(True, description="ablation: keep anchors whose positive is confident "
                                     "(c2 > γ)")
    image_tags: bool = Field(False, description="image-level tags on the unlabeled images (needs "
                             "data.unlabeled_tags)")
    tags_weight: float = Field(1.0, ge=0.0, description="λ_w, the weight of the tags loss")

    @field_validator("chunk_size")
    @classmethod
    def _chunk(cls, value: int | str) -> int | str:
        if value != "auto" and not (isinstance(value, int) and value >= 1):
            raise ValueError("chunk_size must be a whole number >= 1 or 'auto'")
        return value

    @field_validator("iou_range")
    @classmethod
    def _iou_bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1] <= 1:
            raise ValueError(f"iou_range must be (low, high) with 0 <= low < high <= 1, got {list(value)}")
        return value

    @field_validator("region_range")
    @classmethod
    def _region_bounds(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError(f"region_range must be (low, high) with 0 < low <= high, or null; got {list(value)}")
        return value


class ContextAwareConsistency(Method):
    """Config keys: ``cac.*`` (:class:`CACConfig`), ``model.*``, ``loss.*``."""

    name = "cac"
    config_model = CACConfig
    search_space = {"cac.temperature": {"loguniform": [0.05, 0.5]}, "cac.gamma": {"uniform": [0.5, 0.95]},
                    "cac.weight": {"loguniform": [0.01, 1.0]}, "cac.rampup_steps": {"choice": [0, 100, 300]},
                    "cac.num_negatives": {"choice": [4800, 9600, 19200]}}

    def __init__(self, cfg: CommonConfig):
        self.cfg = cfg
        self.options: CACConfig = cfg.cac
        self.criterion = labeled_criterion(cfg.loss)
        self.queue: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=max(self.options.queue_steps, 1))
        self._warned_short = False

    @classmethod
    def check_config(cls, cfg: CommonConfig) -> None:
        if cfg.cac.image_tags and not cfg.data.unlabeled_tags:
            raise ValueError("cac.image_tags=true needs data.unlabeled_tags, a tags file for the unlabeled "
                             "images (write one with `raysemi data split ... --tags`)")

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        segmenter = build_segmenter(self.cfg.model, num_classes)
        models: dict[str, nn.Module] = {"segmenter": segmenter}
        width = segmenter.head.out_channels
        if self.options.projector:
            models["projector"] = Projector(width, self.options.projection_dim)
        if self.options.image_tags:
            models["tag_classifier"] = nn.Linear(width, num_classes)
        return models

    def streams(self) -> dict[str, StreamSpec]:
        crops = OverlappingCrops.from_config(
            self.cfg.data, self.options.iou_range, FEATURE_STRIDE, same_crop=not self.options.context,
            region_range=self.options.region_range,
        )
        return {
            "labeled": StreamSpec("labeled", self.cfg.train.batch_size),
            "unlabeled": StreamSpec("unlabeled", self.cfg.train.unlabeled_batch_size, CropPairs(crops)),
        }

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        labeled, unlabeled = batch["labeled"], batch["unlabeled"]
        weight = self.weight(step)
        # The unlabeled crops go through the network by the schedule, not by λ's value: the λ = 0 control then
        # passes the same images (BatchNorm's statistics see them) and differs from CAC only by L_dc.
        uses_unlabeled = self.ramp(step) > 0 or self.options.image_tags
        images = [labeled["image"]] + ([unlabeled["image"], unlabeled["image_2"]] if uses_unlabeled else [])
        outputs = models["segmenter"](torch.cat(images))
        n, u = len(labeled["image"]), len(unlabeled["image"])
        loss_sup = self.criterion(outputs["logits"][:n], labeled["mask"])
        logged = {"loss_sup": loss_sup.detach(), "cac_weight": loss_sup.new_tensor(weight),
                  **crop_pair_stats(unlabeled["crop_iou"])}
        loss = loss_sup
        features = outputs["features"][n:].split(u) if uses_unlabeled else ()
        if weight > 0:
            loss_dc, stats = self._consistency(models, features, unlabeled, step)
            loss = loss + weight * loss_dc
            logged |= {"loss_dc": loss_dc.detach(), **stats}
        if self.options.image_tags:
            loss_tags = self._tag_loss(models["tag_classifier"], features, unlabeled["image_tags"])
            loss = loss + self.options.tags_weight * loss_tags
            logged["loss_tags"] = loss_tags.detach()
        return {"loss": loss, **logged}

    def weight(self, step: int) -> float:
        """λ at ``step``: ``cac.weight`` times :meth:`ramp`."""
        return self.options.weight * self.ramp(step)

    def ramp(self, step: int) -> float:
        """The schedule in [0, 1] at ``step``: 0 before ``cac.start_step``, then linear over
        ``cac.rampup_steps``."""
        if step < self.options.start_step:
            return 0.0
        ramp = self.options.rampup_steps
        return min(1.0, (step - self.options.start_step) / ramp) if ramp else 1.0

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return LogitsOnly(unwrap(models["segmenter"]))

    # --- the consistency loss -------------------------------------------------------------------------------

    def _consistency(self, models, features, unlabeled, step: int):
        """``L_dc`` for the two crops' decoder features ``(u, D, h, w)`` each, and the step's statistics."""
        crop_size = unlabeled["image"].shape[-2:]
        views = [
            self._view(models, f, unlabeled["valid_pixels"][:, k], unlabeled["flips"][:, k], crop_size)
            for k, f in enumerate(features)
        ]
        first, second = (_overlap(view, unlabeled["crop_boxes"][:, k]) for k, view in enumerate(views))
        both_valid = first["valid"] & second["valid"]
        first = {key: value[both_valid] for key, value in first.items()}
        second = {key: value[both_valid] for key, value in second.items()}
        contrastive = self.options.loss == "contrastive"
        neg_feats, neg_labels = self._negatives(views, step) if contrastive else (None, None)
        loss = self._one_direction(first, second, neg_feats, neg_labels)
        loss = loss + self._one_direction(second, first, neg_feats, neg_labels)
        stats = _mean_of(
            kept_anchor_shares(first["conf"], second["conf"], self._gamma),
            kept_anchor_shares(second["conf"], first["conf"], self._gamma),
        )
        stats["anchors"] = loss.new_tensor(float(len(first["emb"])))
        if contrastive:
            stats["negatives"] = loss.new_tensor(float(len(neg_feats)))
        return loss, stats

    @property
    def _gamma(self) -> float:
        return self.options.gamma if self.options.positive_filtering else 0.0

    def _one_direction(self, anchor, positive, neg_feats, neg_labels) -> torch.Tensor:
        """l(anchor, positive): this worker's mean over its kept anchors, scaled to its share of the mean over
        every worker's kept anchors (:func:`_global_mean_scale`)."""
        if self.options.loss == "l2":
            loss = directional_alignment_loss(
                anchor["emb"], positive["emb"], anchor["conf"], positive["conf"], self._gamma,
                directional=self.options.directional,
            )
        else:
            loss = directional_contrastive_loss(
                anchor["emb"], positive["emb"], anchor["conf"], positive["conf"], anchor["label"],
                neg_feats, neg_labels, self.options.temperature, self._gamma, self.options.chunk_size,
                directional=self.options.directional, negative_sampling=self.options.negative_sampling,
            )
        kept = anchor_mask(anchor["conf"], positive["conf"], self._gamma, self.options.directional)
        return loss * _global_mean_scale(kept)

    def _view(self, models, features, valid_pixels, flips, crop_size) -> dict[str, torch.Tensor]:
        """One crop at stride 8, flipped back to image orientation.

        Returns ``emb`` ``(u, E, h, w)``, ``conf`` and ``label`` ``(u, h, w)`` (no gradient), ``valid``
        ``(u, h, w)`` bool (cells wholly inside the image).
        """
        features = resample_to_stride(features, tuple(crop_size), FEATURE_STRIDE)
        with torch.no_grad():
            probs = unwrap(models["segmenter"]).classifier(features).float().softmax(1)
            conf, label = probs.max(1)
        emb = models["projector"](features) if self.options.projector else F.normalize(features, dim=1)
        valid = F.avg_pool2d(valid_pixels[:, None].float(), FEATURE_STRIDE)[:, 0] == 1.0
        view = {"emb": emb, "conf": conf, "label": label, "valid": valid}
        flipped = flips.bool()
        return {key: torch.where(_expand(flipped, value), value.flip(-1), value) for key, value in view.items()}

    def _negatives(self, views, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Negatives ``(M, E)`` and their pseudo-labels ``(M,)``: sampled here, gathered, plus the queue."""
        emb = torch.cat([v["emb"].detach().permute(0, 2, 3, 1)[v["valid"]] for v in views])
        labels = torch.cat([v["label"][v["valid"]] for v in views])
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        wanted = math.ceil(self.options.num_negatives / world)
        generator = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + step * 1_009 + _rank())
        chosen = torch.randperm(len(emb), generator=generator)[:wanted].to(emb.device)
        if len(chosen) < wanted:
            self._warn_short(len(chosen), wanted)
        feats, labels = _gather_padded(emb[chosen], labels[chosen], wanted, world)
        current = (feats, labels)
        if self.options.queue_steps:
            feats = torch.cat([feats] + [f for f, _ in self.queue])
            labels = torch.cat([labels] + [lab for _, lab in self.queue])
            self.queue.append(current)
        return feats, labels

    def _warn_short(self, available: int, wanted: int) -> None:
        if not self._warned_short:
            warnings.warn(
                f"cac.num_negatives: a worker's batch holds {available} valid pixels, fewer than the {wanted} "
                "negatives asked of it; using what is there (the logged `negatives` shows the count per step)",
                stacklevel=2,
            )
            self._warned_short = True

    @staticmethod
    def _tag_loss(classifier: nn.Module, features, tags: torch.Tensor) -> torch.Tensor:
        """½ Σ over the two crops of the multi-label BCE of ``C_w(average-pooled features)`` against tags."""
        losses = [F.multilabel_soft_margin_loss(classifier(f.mean((2, 3))), tags) for f in features]
        return (losses[0] + losses[1]) / 2


def crop_pair_stats(ious: torch.Tensor) -> dict[str, torch.Tensor]:
    """The step's crop pairs ``(u,)`` IoUs → their mean ``crop_iou`` and the share of identical pairs."""
    ious = ious.float()
    return {"crop_iou": ious.mean(), "crop_identical": (ious >= 1.0).float().mean()}


def _overlap(view: dict[str, torch.Tensor], boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """The overlap cells of every image of a view, flattened: ``emb`` ``(A, E)``, others ``(A,)``.

    ``boxes`` ``(u, 4)`` are pixel boxes (y0, x0, y1, x1), multiples of the stride.
    """
    cells = (boxes // FEATURE_STRIDE).tolist()
    out: dict[str, list[torch.Tensor]] = {key: [] for key in view}
    for index, (y0, x0, y1, x1) in enumerate(cells):
        for key, value in view.items():
            region = value[index, ..., y0:y1, x0:x1]
            out[key].append(region.flatten(1).T if key == "emb" else region.flatten())
    return {key: torch.cat(parts) for key, parts in out.items()}


def _expand(flipped: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return flipped.view(-1, *([1] * (like.dim() - 1)))


def _mean_of(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: (a[key] + b[key]) / 2 for key in a}


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _global_mean_scale(kept: torch.Tensor) -> torch.Tensor | float:
    """``W·k/K`` for this worker's ``(N,)`` bool mask of kept anchors (k of them; K over all W workers): a
    worker's mean over its k anchors times this, averaged over workers by DDP, is the mean over all K. 1 in
    one process; 0 when no worker kept an anchor (every loss is then 0 already)."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return 1.0
    local = kept.sum().to(torch.float64)
    total = local.clone()
    dist.all_reduce(total)
    return (world * local / total.clamp_min(1)).float()


def _gather_padded(feats: torch.Tensor, labels: torch.Tensor, size: int, world: int):
    """All workers' negatives: each pads to ``size`` rows (label −1), gathers, and drops the padding."""
    if world == 1:
        return feats, labels
    padded_feats = feats.new_zeros(size, feats.shape[1])
    padded_labels = labels.new_full((size,), -1)
    padded_feats[: len(feats)], padded_labels[: len(labels)] = feats, labels
    all_feats = [torch.empty_like(padded_feats) for _ in range(world)]
    all_labels = [torch.empty_like(padded_labels) for _ in range(world)]
    dist.all_gather(all_feats, padded_feats.contiguous())
    dist.all_gather(all_labels, padded_labels.contiguous())
    feats, labels = torch.cat(all_feats), torch.cat(all_labels)
    real = labels >= 0
    return feats[real], labels[real]


@dataclass(frozen=True)
class CropPairs(View):
    """CAC's view of an unlabeled image: two overlapping crops (:class:`DecodeCropPairs` lists the keys); both
    crops are images the device normalises."""

    crops: OverlappingCrops
    image_keys = ("image", "image_2")

    def decoder(self, format_name: str, root: str, augment: TrainAugment) -> DecodeCropPairs:
        return DecodeCropPairs(format_name, root, self.crops)

    def fake_batch(self, n: int, size: tuple[int, int], num_classes: int, labeled: bool,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Crop pairs of ``n`` random 48×64 images (the crops of ``self.crops``' size, not ``size``), normalised,
        with random tags."""
        batch = fake_labels(n, size, num_classes, labeled, generator)
        pairs = [self.crops(torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, generator=generator), generator)
                 for _ in range(n)]
        return batch | {
            "image": normalize(torch.stack([p.images[0] for p in pairs])),
            "image_2": normalize(torch.stack([p.images[1] for p in pairs])),
            "valid_pixels": torch.stack([p.valid for p in pairs]),
            "crop_boxes": torch.stack([p.boxes for p in pairs]),
            "flips": torch.stack([p.flips for p in pairs]),
            "crop_iou": torch.tensor([p.iou for p in pairs]),
        }


@dataclass(frozen=True)
class DecodeCropPairs:
    """Ray Data ``map_batches`` function: unlabeled records → two overlapping crops per image (CAC).

    Output: ``image`` and ``image_2`` ``(B, 3, h, w)`` uint8 (crop 1, crop 2, each maybe flipped), ``valid``
    ``(B, 2, h, w)`` uint8 (1 on image pixels), ``crop_boxes`` ``(B, 2, 4)`` int64 overlap boxes in unflipped
    crop coordinates, ``flips`` ``(B, 2)`` bool, ``crop_iou`` ``(B,)`` float32 (each pair's IoU), and
    ``image_tags`` ``(B, C)`` when the records carry tags. See :mod:`raysemi.data.overlapping_crops`.
    """

    format_name: str
    root: str
    crops: OverlappingCrops

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reader = cached_reader(self.format_name, self.root)
        pairs = []
        for row in batch_rows(batch):
            image, _ = to_tensors(*load_sample(reader, record_sample(row)))
            pairs.append(self.crops(image, torch.Generator().manual_seed(int(row["seed"]))))
        out = {
            "image": np.stack([p.images[0].numpy() for p in pairs]),
            "image_2": np.stack([p.images[1].numpy() for p in pairs]),
            "valid_pixels": np.stack([p.valid.numpy() for p in pairs]),
            "crop_boxes": np.stack([p.boxes.numpy() for p in pairs]),
            "flips": np.stack([p.flips.numpy() for p in pairs]),
            "crop_iou": np.array([p.iou for p in pairs], dtype=np.float32),
        }
        return out | tag_columns(batch, reader.classes.num_classes)
