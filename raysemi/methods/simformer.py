"""SimFormer (Chen, Niu et al., "Weak-shot Semantic Segmentation via Dual Similarity Transfer", NeurIPS 2022):
base classes come with pixel masks, novel classes only with image-level tags; the goal is to segment the novel
classes.

Data (the :class:`WeakShotView` below): every training image with its novel pixels hidden
(ignore), its classes as tags, and a reference image from the pair table (sharing exactly one novel tag where
possible, else a base class; ``simformer.pairs_file`` or computed at start). The tags are the whole image's
(from its full mask, before the crop), the image-level label the method is defined on: a crop that cut a
tagged class away still carries the tag, and tags never say where in the image a class is.

Model: a mask-classification segmenter (:class:`raysemi.models.MaskFormer`) plus, for the pixel–pixel transfer,
a pair similarity head (:class:`raysemi.models.similarity_head.PairSimilarityHead`). Per step, on the B images
and their B references:

- proposal–pixel transfer (:func:`raysemi.losses.proposal_pixel_loss`): queries matched to the image's base
  classes (class + mask cost) and novel tags (class cost); class CE for every query, focal + dice masks for
  base-matched queries only; after every decoder layer with ``deep_supervision``. Mask logits are upsampled to
  the crop's size first (MaskFormer computes its mask losses at the targets' resolution).
- complementary loss (``complementary_weight``; its own focal and dice weights, 1 and 1 by default, 20 and 1
  in the released code; the last layer, or every decoder layer with ``complementary_layers=all`` as released):
  the novel-matched queries' masks, with a constant "ignore" logit, cover what no base mask covers.
- pixel–pixel transfer, per image/reference pair at the pixel embeddings' stride: J points per image
  (:func:`raysemi.models.similarity_head.sample_pair_points`); the head learns "same class" on base–base
  pairs (class-balanced BCE, ``similarity_weight``, its gradient reaching the pixel embeddings unless
  ``detach_pair_features``, the released code's ``BASE_DETACH``), and when the
  two images share a novel tag, the novel-class score similarity ``ReLU(cos)`` of unknown–unknown pairs is
  pulled toward the head's output on detached embeddings (``distill_weight``). With a single novel class the
  score vectors are scalars whose cosine is always 1: the distillation then has nothing to teach.

The "basic model" is, as the supplementary (A5, table 2) defines it, the full model without pixel–pixel
similarity transfer: ``similarity_weight=distill_weight=0`` (the head is then not built), the complementary loss
kept. The benchmark keeps the weaker basic it used before, proposal–pixel transfer alone
(``complementary_weight=0`` too), as the ablation ``simformer_basic_nocomp``.
``oracle=true`` trains on the novel masks too: every present class is supervised like a base class, and
there is nothing left for the complementary and pixel–pixel losses to do. Evaluation reports ``miou_base``
and ``miou_novel`` beside the overall mIoU, on the full val masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from raysemi.data.dataset import DatasetSource, load_sample
from raysemi.data.formats import DatasetFormat, Sample
from raysemi.data.pairs import partner_samples
from raysemi.data.pipeline import Record, batch_rows, cached_reader
from raysemi.data.transforms import TrainAugment, to_tensors
from raysemi.data.views import RecordColumns, View
from raysemi.data.weak_labels import ClassSplit, hide_novel, image_tags
from raysemi.losses import (
    ImageTargets,
    MatchCosts,
    ProposalPixelWeights,
    balanced_pair_bce,
    complementary_loss,
    novel_similarity,
    pixel_pair_similarity_targets,
    proposal_pixel_loss,
    similarity_distillation_loss,
)
from raysemi.methods.base import Batch, Method, PseudoLabels, Stage, StreamSpec, derived_config
from raysemi.models import MaskFormer, MaskFormerShape, SemanticOutput, semantic_probabilities, unwrap
from raysemi.models.backbones import build_backbone
from raysemi.models.similarity_head import PairSimilarityHead, sample_pair_points
from raysemi.sections import CommonConfig, Section

PADDING = -1  # point-sampling label of padding pixels (never drawn)


class SimFormerConfig(Section):
    """Weak-shot segmentation by dual similarity transfer (``method: simformer``): the ``simformer`` section."""

    # base/novel split
    novel: list[int] | None = Field(None, description="novel class ids; None: novel_fraction of the classes, "
                                    "drawn with class_seed")
    novel_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="share of the classes drawn as novel")
    class_seed: int = Field(0, description="seed of the novel classes' draw")
    keep_base: list[int] = Field([], description="never drawn as novel (e.g. VOC's background 0)")
    oracle: bool = Field(False, description="train on the novel masks too (the fully supervised upper bound); "
                         "metrics still split")
    pairs_file: str | None = Field(None, description="pair table from `raysemi data split --pairs`; None: "
                                   "computed at start")
    # mask-classification model
    queries: int = Field(16, ge=1, description="object queries of the mask-classification model")
    dim: int = Field(64, ge=8, description="transformer, pixel-embedding and mask-embedding width (divisible "
                     "by 4 and heads)")
    layers: int = Field(2, ge=1, description="transformer decoder layers")
    heads: int = Field(4, ge=1, description="attention heads")
    feedforward: int = Field(256, ge=1, description="width of the decoder's feed-forward layers")
    deep_supervision: bool = Field(True, description="proposal–pixel loss after every decoder layer, not only "
                                   "the last")
    # proposal–pixel transfer
    no_object_weight: float = Field(0.1, ge=0.0, description="class-CE weight of the no-object class")
    focal_weight: float = Field(20.0, ge=0.0, description="weight of the mask focal loss (and its matching "
                                "cost)")
    dice_weight: float = Field(1.0, ge=0.0, description="weight of the mask dice loss (and its matching cost)")
    complementary_weight: float = Field(0.15, ge=0.0, description="weight of the complementary loss")
    complementary_focal_weight: float = Field(1.0, ge=0.0, description="the complementary loss's own focal "
                                              "weight (released code: the mask loss's, 20)")
    complementary_dice_weight: float = Field(1.0, ge=0.0, description="the complementary loss's own dice "
                                             "weight (released code: 1)")
    complementary_layers: Literal["last", "all"] = Field(
        "last", description="the complementary loss after the last decoder layer or every one (released: all)")
    ignore_prob: float = Field(0.05, gt=0.0, lt=1.0, description="the constant 'ignore' proposal of the "
                               "complementary loss")
    # pixel–pixel transfer
    points: int = Field(100, ge=1, description="J points per image")
    inside_share: float = Field(0.75, ge=0.0, le=1.0, description="of the points, the share drawn inside "
                                "shared base classes")
    similarity_weight: float = Field(1.0, ge=0.0, description="the head's class-balanced BCE on base pairs")
    detach_pair_features: bool = Field(False, description="the head's BCE does not reach the pixel embeddings "
                                       "(released BASE_DETACH)")
    distill_weight: float = Field(0.1, ge=0.0, description="pulling novel score similarity toward the head")
    head_hidden: int = Field(64, ge=1, description="hidden width of the pair similarity head")
    head_blocks: int = Field(2, ge=0, description="residual blocks of the pair similarity head")
    retrain_steps: int | None = Field(None, ge=1, description="optional second stage: pseudo-label the novel "
                                      "pixels, then train a plain segmenter (model.*) this long")

    @model_validator(mode="after")
    def _shape(self) -> SimFormerConfig:
        if self.dim % 4 or self.dim % self.heads:
            raise ValueError(f"simformer.dim={self.dim} must divide by 4 (positional code) and by "
                             f"simformer.heads={self.heads}")
        return self


class SimFormer(Method):
    """See the module docstring. Config keys: ``simformer.*``, ``model.backbone`` / ``pretrained`` /
    ``output_stride``, ``loss.ignore_index``."""

    name = "simformer"
    config_model = SimFormerConfig
    search_space = {"simformer.distill_weight": {"loguniform": [0.01, 1.0]},
                    "simformer.points": {"choice": [50, 100, 200]},
                    "simformer.complementary_weight": {"loguniform": [0.03, 1.0]}}
    tunes_label_fraction = False  # trains on every image: base masks and novel tags for all

    def __init__(self, cfg: CommonConfig):
        self.cfg = cfg
        self.options = o = cfg.simformer
        self.class_split = ClassSplit(None if o.novel is None else tuple(o.novel), o.novel_fraction, o.class_seed,
                                      tuple(o.keep_base))
        self.weights = ProposalPixelWeights(o.no_object_weight, o.focal_weight, o.dice_weight)
        self.costs = MatchCosts(1.0, o.focal_weight, o.dice_weight)
        self.ignore = cfg.loss.ignore_index
        self.base: list[int] = []
        self.novel: list[int] = []
        self.class_groups: dict[str, list[int]] = {}

    @property
    def pixel_transfer(self) -> bool:
        o = self.options
        return not o.oracle and (o.similarity_weight > 0 or o.distill_weight > 0)

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        self.base, self.novel = self.class_split.resolve(num_classes)
        self.class_groups = {"base": self.base, "novel": self.novel}
        o, m = self.options, self.cfg.model
        shape = MaskFormerShape(o.queries, o.dim, o.layers, o.heads, o.feedforward)
        backbone = build_backbone(m.backbone, m.output_stride, m.pretrained, m.weights)
        models: dict[str, nn.Module] = {"mask_former": MaskFormer(backbone, num_classes, shape)}
        if self.pixel_transfer:
            models["similarity"] = PairSimilarityHead(o.dim, o.head_hidden, o.head_blocks)
        return models

    def streams(self) -> dict[str, StreamSpec]:
        o = self.options
        view = WeakShotView(self.class_split, hide_novel=not o.oracle, pairs_file=o.pairs_file,
                            pair_seed=self.cfg.run.seed)
        return {"labeled": StreamSpec("labeled", self.cfg.train.batch_size, view)}

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return SemanticOutput(unwrap(models["mask_former"]))

    @classmethod
    def stages(cls, cfg: CommonConfig) -> list[Stage]:
        """With ``simformer.retrain_steps``: the weak-shot run in ``<run.dir>/simformer``, then a plain segmenter
        in ``<run.dir>/retrain`` on its novel pseudo-labels (``<run.dir>/pseudo_labels``, written once), evaluated
        with the same base/novel groups; else one run."""
        if not cfg.simformer.retrain_steps:
            return super().stages(cfg)
        record = ("miou", "miou_novel")
        return [Stage("simformer", first_stage_config(cfg), record),
                Stage("retrain", retrain_config(cfg, Path(cfg.run.dir) / "pseudo_labels"), record,
                      PseudoLabels(group="novel"))]

    def check_data(self, source: DatasetSource) -> None:
        """Before a run directory exists: the novel classes are class ids of the dataset, and a pair table
        (``simformer.pairs_file``) covers exactly this run's training images. Raises ``DataError``."""
        _, novel = self.class_split.resolve(source.classes.num_classes)
        if self.options.pairs_file:
            partner_samples(source.reader, source.samples_for("labeled"), novel, self.cfg.run.seed,
                            self.options.pairs_file)

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        stream = batch["labeled"]
        both = {key: torch.cat([stream[key], stream[f"partner_{key}"]]) for key in
                ("image", "mask", "image_tags", "valid_pixels")}
        valid = both["valid_pixels"].bool()
        out = models["mask_former"](both["image"])
        size = both["image"].shape[-2:]
        targets = [self.image_targets(*args) for args in zip(both["mask"], both["image_tags"], valid, strict=True)]
        layers = [*out["aux"], (out["class_logits"], out["mask_logits"])]
        if not self.options.deep_supervision:
            layers = layers[-1:]
        o = self.options
        loss_layers, loss_comp = both["image"].new_zeros(()), both["image"].new_zeros(())
        for index, (class_logits, mask_logits) in enumerate(layers):  # the last layer last: its losses are logged
            masks = _upsample(mask_logits, size)
            layer_losses, novel_queries = self._proposal_pixel(class_logits, masks, targets)
            loss_layers = loss_layers + layer_losses["loss"]
            if o.complementary_layers == "all" or index == len(layers) - 1:
                loss_comp = loss_comp + self._complementary(masks, novel_queries, both["mask"], valid)
        loss = loss_layers + o.complementary_weight * loss_comp
        logged = {k: v.detach() for k, v in layer_losses.items() if k != "loss"}  # the last layer's
        logged |= {"loss_proposal_pixel": loss_layers.detach(), "loss_complementary": loss_comp.detach()}
        if self.pixel_transfer:
            pixel_losses = self._pixel_pixel(models["similarity"], out, both, valid)
            loss = loss + o.similarity_weight * pixel_losses["loss_similarity"]
            loss = loss + o.distill_weight * pixel_losses["loss_distill"]
            logged |= {k: v.detach() for k, v in pixel_losses.items()}
        return {"loss": loss, **logged}

    def image_targets(self, mask: torch.Tensor, tags: torch.Tensor, valid: torch.Tensor) -> ImageTargets:
        """One image's targets: ``mask`` ``(H, W)`` (novel pixels hidden unless oracle), ``tags`` ``(K,)``
        multi-hot, ``valid`` ``(H, W)`` bool. Classes with pixels in the mask are supervised (``is_base``);
        novel tags add mask-less targets."""
        present = mask.unique()
        supervised = present[present != self.ignore]
        unsupervised = [] if self.options.oracle else self.novel
        tagged = torch.tensor([c for c in unsupervised if tags[c] > 0], dtype=torch.long, device=mask.device)
        tagged = tagged[~torch.isin(tagged, supervised)]
        labels = torch.cat([supervised, tagged]).long()
        masks = (mask[None] == labels[:, None, None]).float()
        is_base = torch.arange(len(labels), device=mask.device) < len(supervised)
        return ImageTargets(labels, masks, is_base, valid)

    def _proposal_pixel(self, class_logits, mask_logits, targets):
        """Mean over images of :func:`proposal_pixel_loss` and each image's novel-matched queries."""
        per_image = [
            proposal_pixel_loss(c, m, t, self.weights, self.costs)
            for c, m, t in zip(class_logits, mask_logits, targets, strict=True)
        ]
        losses = {key: torch.stack([p[0][key] for p in per_image]).mean() for key in per_image[0][0]}
        return losses, [p[1] for p in per_image]

    def _complementary(self, masks, novel_queries, hidden_masks, valid) -> torch.Tensor:
        """Mean over images of :func:`complementary_loss` for one layer's masks ``(N, Q, H, W)``."""
        o = self.options
        return torch.stack([
            complementary_loss(image_masks, queries, self._base_region(mask), ok, o.ignore_prob,
                               o.complementary_focal_weight, o.complementary_dice_weight)
            for image_masks, queries, mask, ok in zip(masks, novel_queries, hidden_masks, valid, strict=True)
        ]).mean()

    def _base_region(self, mask: torch.Tensor) -> torch.Tensor:
        """``(H, W)`` bool: pixels labeled with a class (in the hidden mask, only base classes are)."""
        return mask != self.ignore

    def _pixel_pixel(self, head: nn.Module, out: dict, both: dict, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """The head's BCE on base–base pairs and the distillation on unknown–unknown pairs, mean over the B
        image/reference pairs."""
        embeddings = out["pixel_embeddings"]  # (2B, D, h, w)
        grid = embeddings.shape[-2:]
        labels = _point_labels(both["mask"], valid, grid, self.ignore)  # (2B, h·w)
        novel = torch.tensor(self.novel, dtype=torch.long, device=embeddings.device)
        scores = semantic_probabilities(out["class_logits"], out["mask_logits"])[:, novel]  # (2B, K_n, h, w)
        pairs = len(embeddings) // 2
        similarity, distill = [], []
        for a, b in zip(range(pairs), range(pairs, 2 * pairs), strict=True):
            idx_a, idx_b = sample_pair_points(labels[a], labels[b], self.options.points, self.options.inside_share,
                                              unknown=self.ignore)
            labels_a, labels_b = labels[a, idx_a], labels[b, idx_b]
            feats_a, feats_b = _at(embeddings[a], idx_a), _at(embeddings[b], idx_b)
            known = (labels_a != self.ignore)[:, None] & (labels_b != self.ignore)[None, :]
            targets = pixel_pair_similarity_targets(labels_a, labels_b)
            pair_a, pair_b = (feats_a.detach(), feats_b.detach()) if self.options.detach_pair_features else (
                feats_a, feats_b)
            similarity.append(balanced_pair_bce(head(pair_a, pair_b), targets, known))
            shares_novel = bool((both["image_tags"][a, novel] * both["image_tags"][b, novel]).sum() > 0)
            unknown = (labels_a == self.ignore)[:, None] & (labels_b == self.ignore)[None, :] & shares_novel
            with torch.no_grad():  # the teacher: no gradient, and no DDP bookkeeping for this call
                teacher = torch.sigmoid(unwrap(head)(feats_a, feats_b))
            student = novel_similarity(_at(scores[a], idx_a), _at(scores[b], idx_b))
            distill.append(similarity_distillation_loss(student, teacher, unknown))
        return {"loss_similarity": torch.stack(similarity).mean(), "loss_distill": torch.stack(distill).mean()}


def _upsample(mask_logits: torch.Tensor, size) -> torch.Tensor:
    """``(N, Q, h, w)`` → ``(N, Q, H, W)`` bilinear."""
    return F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)


def _point_labels(masks: torch.Tensor, valid: torch.Tensor, grid, ignore: int) -> torch.Tensor:
    """``(N, H, W)`` masks and valid → ``(N, h·w)`` labels at the embeddings' grid (nearest): the class, ``ignore``
    for unknown (novel or void) pixels, :data:`PADDING` on padding."""
    labels = F.interpolate(masks[:, None].float(), size=grid, mode="nearest")[:, 0].long()
    on_image = F.interpolate(valid[:, None].float(), size=grid, mode="nearest")[:, 0].bool()
    return torch.where(on_image, labels, torch.full_like(labels, PADDING)).flatten(1)


def _at(feature_map: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(D, h, w)`` and ``(J,)`` flat pixel indices → ``(J, D)``."""
    return feature_map.flatten(1)[:, index].T


def retrain_config(cfg: CommonConfig, dataset_root: Path) -> CommonConfig:
    """The second stage's config: ``method=supervised`` on the pseudo-labelled ``generic`` dataset at
    ``dataset_root`` (all of its train split labeled), ``train.steps = simformer.retrain_steps``, in
    ``<run.dir>/retrain``; model, optimizer, augmentation and the rest as configured."""
    changes = {"method": "supervised", "data.format": "generic", "data.root": str(dataset_root),
               "data.train_split": "train", "data.val_split": "val", "data.labeled_split": None,
               "data.unlabeled_split": None, "data.unlabeled_tags": None, "data.unlabeled_boxes": None,
               "data.label_fraction": 1.0, "data.label_count": None, "run.dir": f"{cfg.run.dir}/retrain",
               "train.steps": cfg.simformer.retrain_steps}
    if cfg.run.name:
        changes["run.name"] = f"{cfg.run.name}-retrain"
    return derived_config(cfg, changes, source="simformer retrain stage")


def first_stage_config(cfg: CommonConfig) -> CommonConfig:
    """The weak-shot stage of a run with a second stage: the same config in ``<run.dir>/simformer``."""
    return derived_config(cfg, {"run.dir": f"{cfg.run.dir}/simformer", "simformer.retrain_steps": None},
                          source="simformer stage")


@dataclass(frozen=True)
class WeakShotView(View):
    """How SimFormer's stream presents its images: the novel classes' pixels hidden (unless ``hide_novel`` is
    off: the fully supervised oracle), the classes present as tags, and each image followed by its reference
    image from the pair table (``pairs_file``, or computed from the masks with ``pair_seed``); the keys are
    :class:`DecodeWeakShotPairs`'."""

    classes: ClassSplit
    hide_novel: bool = True
    pairs_file: str | None = None
    pair_seed: int = 0
    image_keys = ("image", "partner_image")
    label_keys = ("mask", "partner_mask")

    def record_columns(self, source: DatasetSource, samples: list[Sample]) -> RecordColumns:
        """Each record's reference image and mask paths (``partner_image_path``, ``partner_mask_path``)."""
        _, novel = self.classes.resolve(source.classes.num_classes)
        partners = partner_samples(source.reader, samples, novel, self.pair_seed, self.pairs_file)

        def columns(sample: Sample) -> Record:
            partner = partners[sample.image]
            return {"partner_image_path": str(partner.image), "partner_mask_path": str(partner.mask)}

        return columns

    def decoder(self, format_name: str, root: str, augment: TrainAugment) -> DecodeWeakShotPairs:
        return DecodeWeakShotPairs(format_name, root, augment, self.classes, self.hide_novel)

    def fake_batch(self, n: int, size: tuple[int, int], num_classes: int, labeled: bool,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Images and reference images with masks of classes ``0..C-1`` (padding on the right 5 columns), the
        hidden novel classes' pixels set to ignore; every class tagged."""
        hidden = torch.tensor(self.classes.resolve(num_classes)[1] if self.hide_novel else [], dtype=torch.long)
        batch = {}
        for prefix in ("", "partner_"):
            full = torch.randint(0, num_classes, (n, *size), generator=generator)
            valid = torch.ones(n, *size, dtype=torch.uint8)
            valid[:, :, -5:] = 0
            full[valid == 0] = 255
            batch[f"{prefix}image"] = torch.randn(n, 3, *size, generator=generator)
            batch[f"{prefix}mask"] = full.masked_fill(torch.isin(full, hidden), 255)
            batch[f"{prefix}image_tags"] = torch.ones(n, num_classes)
            batch[f"{prefix}valid_pixels"] = valid
        return batch


@dataclass(frozen=True)
class DecodeWeakShotPairs:
    """Ray Data ``map_batches`` function: records with partners → augmented crops of each image and of its
    reference image.

    Output per image: ``image`` ``(B, 3, h, w)`` uint8; ``mask`` ``(B, h, w)`` uint8 with the novel classes'
    pixels set to ignore (255) when ``hide_novel``, so novel, void and padding pixels look alike, as they do to
    a user whose masks annotate base classes only; ``image_tags`` ``(B, C)`` float32, the classes present in
    the whole image's full mask, computed before the crop: image-level tags are the weak label the method is
    defined on, and tags of the crop would tell the model where a novel class is (a crop that cut a tagged
    class away still carries its tag, as the image's annotation does); ``valid_pixels`` ``(B, h, w)`` uint8,
    1 on image pixels (0 on padding). The
    same four with a ``partner_`` prefix for the reference images, each augmented with its own seed.
    """

    format_name: str
    root: str
    augment: TrainAugment
    classes: ClassSplit
    hide_novel: bool = True

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reader = cached_reader(self.format_name, self.root)
        _, novel = self.classes.resolve(reader.classes.num_classes)
        rows = batch_rows(batch)
        images = [self._view(reader, novel, row["image_path"], row["mask_path"], int(row["seed"])) for row in rows]
        partners = [
            self._view(reader, novel, row["partner_image_path"], row["partner_mask_path"], int(row["seed"]) ^ 0x5EED)
            for row in rows
        ]
        out = {key: np.stack([view[key] for view in images]) for key in images[0]}
        return out | {f"partner_{key}": np.stack([view[key] for view in partners]) for key in partners[0]}

    def _view(self, reader: DatasetFormat, novel: list[int], image_path: str, mask_path: str,
              seed: int) -> dict[str, np.ndarray]:
        image_np, mask_np = load_sample(reader, Sample(Path(image_path), Path(mask_path)))
        classes = reader.classes
        tags = image_tags(mask_np, classes.num_classes, classes.ignore_index)  # the whole image's, not the crop's
        image, mask = to_tensors(image_np, mask_np)
        image, mask, geometry = self.augment.augment(image, mask, torch.Generator().manual_seed(seed))
        mask_np = mask.numpy()
        return {
            "image": image.numpy(),
            "mask": hide_novel(mask_np, novel, classes.ignore_index) if self.hide_novel else mask_np,
            "image_tags": tags,
            "valid_pixels": geometry.valid().numpy().astype(np.uint8),
        }

