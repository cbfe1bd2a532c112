"""SimFormer (Chen, Niu et al., "Weak-shot Semantic Segmentation via Dual Similarity Transfer", NeurIPS 2022):
base classes come with pixel masks, novel classes only with image-level tags; the goal is to segment the novel
classes.

Data (:class:`raysemi.data.pipeline.DecodeWeakShotPairs`): every training image with its novel pixels hidden
(ignore), its classes as tags, and a reference image from the pair table (sharing exactly one novel tag where
possible, else a base class; ``simformer.pairs_file`` or computed at start).

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

The "basic model" of the benchmark is this method with ``complementary_weight=0`` and
``similarity_weight=distill_weight=0`` (proposal–pixel transfer alone; the head is then not built).
``oracle=true`` trains on the novel masks too: every present class is supervised like a base class, and
there is nothing left for the complementary and pixel–pixel losses to do. Evaluation reports ``miou_base``
and ``miou_novel`` beside the overall mIoU, on the full val masks.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from raysemi.config import Config
from raysemi.data.pairs import partner_samples
from raysemi.data.streams import WeakShotView
from raysemi.data.weak_labels import ClassSplit
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
from raysemi.methods.base import Batch, StreamSpec
from raysemi.models import MaskFormer, MaskFormerShape, SemanticOutput, semantic_probabilities, unwrap
from raysemi.models.backbones import build_backbone
from raysemi.models.similarity_head import PairSimilarityHead, sample_pair_points

PADDING = -1  # point-sampling label of padding pixels (never drawn)


class SimFormer:
    """See the module docstring. Config keys: ``simformer.*``, ``model.backbone`` / ``pretrained`` /
    ``output_stride``, ``loss.ignore_index``."""

    name = "simformer"

    def __init__(self, cfg: Config):
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
        return {"labeled": StreamSpec("labeled", self.cfg.train.batch_size, weak_shot=view)}

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return SemanticOutput(unwrap(models["mask_former"]))

    def check_data(self, source) -> None:
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


def retrain_config(cfg: Config, dataset_root: Path) -> Config:
    """The second stage's config: ``method=supervised`` on the pseudo-labelled ``generic`` dataset at
    ``dataset_root`` (all of its train split labeled), ``train.steps = simformer.retrain_steps``, in
    ``<run.dir>/retrain``; model, optimizer, augmentation and the rest as configured."""
    from raysemi.config import validate_config

    raw = cfg.model_dump(mode="json")
    data = {**raw["data"], "format": "generic", "root": str(dataset_root), "train_split": "train", "val_split": "val",
            "labeled_split": None, "unlabeled_split": None, "unlabeled_tags": None, "unlabeled_boxes": None,
            "label_fraction": 1.0, "label_count": None}
    raw |= {"method": "supervised", "data": data, "run": {**raw["run"], "dir": f"{cfg.run.dir}/retrain"},
            "train": {**raw["train"], "steps": cfg.simformer.retrain_steps}}
    if cfg.run.name:
        raw["run"]["name"] = f"{cfg.run.name}-retrain"
    return validate_config(raw, source="simformer retrain stage")


def first_stage_config(cfg: Config) -> Config:
    """The weak-shot stage of a run with a second stage: the same config in ``<run.dir>/simformer``."""
    from raysemi.config import validate_config

    raw = cfg.model_dump(mode="json")
    raw["run"]["dir"] = f"{cfg.run.dir}/simformer"
    raw["simformer"]["retrain_steps"] = None
    return validate_config(raw, source="simformer stage")
