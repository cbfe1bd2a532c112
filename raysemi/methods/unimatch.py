"""UniMatch (Yang et al., "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic Segmentation",
CVPR 2023), as its released code (LiheYoung/UniMatch ``unimatch.py``) trains it.

Data: the labeled stream (plain crops) and two unlabeled streams of the :class:`StrongViews` view below,
``unlabeled`` and ``mix`` (two independent shuffles of the unlabeled images, as the released code zips two
loaders of the same set). Each unlabeled image arrives as its weak view (the run's scale/crop/flip, ``image``),
two strong views of that crop (each: colour jitter 0.5/0.5/0.5/0.25 with p 0.8, grayscale p 0.2, Gaussian blur
σ ∈ [0.1, 2] with p 0.5; ``image_s1``, ``image_s2``), its own CutMix box per strong view (p 0.5, area 2–40 %
of the crop, aspect 0.3–3.3; ``cutmix_box1``, ``cutmix_box2``) and the crop's valid pixels. Per step:

1. The ``mix`` batch's weak view through the segmenter in eval mode, without gradient: its pseudo-labels and
   confidences. Strong view k of the unlabeled batch gets the ``mix`` batch's strong view k pasted in its box.
2. One forward of labeled + weak unlabeled images whose encoder features (low and high level) are decoded twice
   in one batch: as they are, and after ``Dropout2d(unimatch.dropout)`` (the feature-perturbation branch).
   The clean weak prediction, detached, is the pseudo-label; its softmax maximum the confidence.
3. One forward of both strong views. Each strong view learns the weak pseudo-labels, the pixels of its box
   taking the ``mix`` batch's labels, confidences and padding; the perturbed branch learns the weak ones.

    L = (L_sup + strong_weight · (L_s1 + L_s2) / 2 + fp_weight · L_fp) / 2

each unlabeled term summing CE over pixels with confidence ≥ ``unimatch.threshold`` and dividing by the valid
pixels (:mod:`raysemi.losses.unimatch`); the defaults give the released ``(L_x + ¼ L_s1 + ¼ L_s2 + ½ L_fp) / 2``.
L_sup is CE, or OHEM with ``loss.ohem`` (the released Cityscapes setting). The weak view takes the run's
``data.color_jitter`` (the released configs: none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torchvision.transforms.v2 import functional as F

from raysemi.data.dataset import load_sample
from raysemi.data.pipeline import batch_rows, cached_reader, record_sample
from raysemi.data.transforms import TrainAugment, to_tensors
from raysemi.data.views import View, fake_labels
from raysemi.losses.unimatch import TeacherLabels, unimatch_losses, unimatch_total
from raysemi.methods.base import Batch, Method, StreamSpec, labeled_criterion
from raysemi.models import LogitsOnly, build_segmenter, unwrap
from raysemi.models.segmenter import Segmenter
from raysemi.sections import CommonConfig, Section

JITTER = (0.5, 0.5, 0.5, 0.25)  # brightness, contrast, saturation, hue of the strong views (released)


class UniMatchConfig(Section):
    """Unified dual-stream perturbations (``method: unimatch``): the ``unimatch`` section of a config."""

    threshold: float = Field(0.95, ge=0.0, le=1.0, description="τ: pseudo-labels less confident than this "
                             "contribute 0 (the loss is still divided by every valid pixel)")
    strong_weight: float = Field(0.5, ge=0.0, description="weight of the mean of the two strong views' losses "
                                 "(released: 0.25 each)")
    fp_weight: float = Field(0.5, ge=0.0, description="weight of the feature-perturbation loss")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout2d rate on the encoder features of the "
                           "feature-perturbation branch")
    cutmix_p: float = Field(0.5, ge=0.0, le=1.0, description="probability that a strong view gets a CutMix box")
    cutmix_area: tuple[float, float] = Field((0.02, 0.4), description="CutMix box area, as a share of the crop")


def strong_augment(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(3, h, w)`` uint8 → colour-jittered (p 0.8, :data:`JITTER`, random order), grayscale (p 0.2), blurred
    (p 0.5, σ ∈ [0.1, 2]), uint8: the released strong view (torchvision's ColorJitter, RandomGrayscale, PIL blur)."""
    def draw(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator).item()

    if draw(0, 1) < 0.8:
        b, c, s, h = JITTER
        operations = [lambda im: F.adjust_brightness(im, draw(1 - b, 1 + b)),
                      lambda im: F.adjust_contrast(im, draw(1 - c, 1 + c)),
                      lambda im: F.adjust_saturation(im, draw(1 - s, 1 + s)),
                      lambda im: F.adjust_hue(im, draw(-h, h))]
        for index in torch.randperm(4, generator=generator).tolist():
            image = operations[index](image)
    if draw(0, 1) < 0.2:
        image = F.rgb_to_grayscale(image, num_output_channels=3)
    if draw(0, 1) < 0.5:
        sigma = draw(0.1, 2.0)
        kernel = 2 * math.ceil(3 * sigma) + 1
        image = F.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
    return image


def cutmix_box(height: int, width: int, generator: torch.Generator, p: float = 0.5,
               area: tuple[float, float] = (0.02, 0.4), ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> torch.Tensor:
    """``(height, width)`` uint8, 1 inside one box (with probability ``p``; else all 0): area share drawn from
    ``area``, aspect (h/w) from ``ratio``, placed uniformly where it fits (the released ``obtain_cutmix_box``,
    for non-square crops; after 100 draws that do not fit, the box is clipped to the crop)."""
    box = torch.zeros(height, width, dtype=torch.uint8)
    uniform = lambda low, high: low + (high - low) * torch.rand((), generator=generator).item()  # noqa: E731
    if uniform(0, 1) >= p:
        return box
    size = uniform(*area) * height * width
    for _ in range(100):
        aspect = uniform(*ratio)
        box_w, box_h = int(math.sqrt(size / aspect)), int(math.sqrt(size * aspect))
        x, y = int(torch.randint(0, width, (), generator=generator)), int(torch.randint(0, height, (),
                                                                                       generator=generator))
        if x + box_w <= width and y + box_h <= height:
            break
    box[y:y + box_h, x:x + box_w] = 1
    return box


@dataclass(frozen=True)
class StrongViews(View):
    """UniMatch's view of an unlabeled image: weak crop, two strong views, a CutMix box per strong view
    (:class:`DecodeStrongViews` lists the keys)."""

    cutmix_p: float = 0.5
    cutmix_area: tuple[float, float] = (0.02, 0.4)
    image_keys = ("image", "image_s1", "image_s2")

    def decoder(self, format_name: str, root: str, augment: TrainAugment) -> DecodeStrongViews:
        return DecodeStrongViews(format_name, root, augment, self.cutmix_p, self.cutmix_area)

    def fake_batch(self, n: int, size: tuple[int, int], num_classes: int, labeled: bool,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random normalised views, the right 5 columns padding, a box in each strong view of the first image."""
        batch = {key: torch.randn(n, 3, *size, generator=generator) for key in self.image_keys}
        valid = torch.ones(n, *size, dtype=torch.uint8)
        valid[:, :, -5:] = 0
        boxes = torch.zeros(2, n, *size, dtype=torch.uint8)
        boxes[0, 0, :10, :20], boxes[1, 0, 5:25, 10:30] = 1, 1
        return batch | fake_labels(n, size, num_classes, labeled, generator) | {
            "valid_pixels": valid, "cutmix_box1": boxes[0], "cutmix_box2": boxes[1]}


@dataclass(frozen=True)
class DecodeStrongViews:
    """Ray Data ``map_batches`` function: unlabeled records → ``image`` (the weak view: the run's augmentation),
    ``image_s1``, ``image_s2`` (:func:`strong_augment` of the weak crop, each with its own draws), all
    ``(B, 3, h, w)`` uint8; ``valid_pixels`` ``(B, h, w)`` uint8 (0 on padding); ``cutmix_box1``,
    ``cutmix_box2`` ``(B, h, w)`` uint8 (:func:`cutmix_box`). Everything is drawn from the record's seed."""

    format_name: str
    root: str
    augment: TrainAugment
    cutmix_p: float
    cutmix_area: tuple[float, float]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reader = cached_reader(self.format_name, self.root)
        views = [self._views(reader, row) for row in batch_rows(batch)]
        return {key: np.stack([view[key] for view in views]) for key in views[0]}

    def _views(self, reader, row) -> dict[str, np.ndarray]:
        generator = torch.Generator().manual_seed(int(row["seed"]))
        image, _ = to_tensors(*load_sample(reader, record_sample(row)))
        weak, _, geometry = self.augment.augment(image, None, generator)
        height, width = weak.shape[-2:]
        strong = [strong_augment(weak, generator) for _ in range(2)]
        boxes = [cutmix_box(height, width, generator, self.cutmix_p, self.cutmix_area) for _ in range(2)]
        return {"image": weak.numpy(), "image_s1": strong[0].numpy(), "image_s2": strong[1].numpy(),
                "valid_pixels": geometry.valid().numpy().astype(np.uint8),
                "cutmix_box1": boxes[0].numpy(), "cutmix_box2": boxes[1].numpy()}


class PerturbableSegmenter(Segmenter):
    """A :class:`~raysemi.models.segmenter.Segmenter` (the same parameters and state-dict keys) whose
    ``forward(images, perturb=True)`` decodes the encoder features twice in one batch, as they are and after
    ``Dropout2d(dropout)`` on both the low- and high-level features, and returns ``"logits"`` and
    ``"logits_fp"`` (each ``(N, C, H, W)``). Called through the module, so DDP sees every forward."""

    def __init__(self, segmenter: Segmenter, dropout: float):
        nn.Module.__init__(self)
        self.backbone, self.head, self.classifier = segmenter.backbone, segmenter.head, segmenter.classifier
        self.feature_dropout = nn.Dropout2d(dropout)

    def forward(self, images: torch.Tensor, perturb: bool = False) -> dict[str, torch.Tensor]:
        low, high = self.backbone(images)
        if not perturb:
            return self.decode(low, high, images.shape[-2:])
        both = self.decode(torch.cat([low, self.feature_dropout(low)]), torch.cat([high, self.feature_dropout(high)]),
                           images.shape[-2:])["logits"]
        logits, logits_fp = both.chunk(2)
        return {"logits": logits, "logits_fp": logits_fp}


class UniMatch(Method):
    """Config keys: ``unimatch.*`` (:class:`UniMatchConfig`), ``model.*``, ``loss.*``."""

    name = "unimatch"
    config_model = UniMatchConfig
    search_space = {"unimatch.threshold": {"uniform": [0.8, 0.99]},
                    "unimatch.strong_weight": {"uniform": [0.25, 1.0]},
                    "unimatch.fp_weight": {"uniform": [0.25, 1.0]},
                    "unimatch.dropout": {"uniform": [0.2, 0.7]}}

    def __init__(self, cfg: CommonConfig):
        self.cfg = cfg
        self.options: UniMatchConfig = cfg.unimatch
        self.criterion = labeled_criterion(cfg.loss)

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        return {"segmenter": PerturbableSegmenter(build_segmenter(self.cfg.model, num_classes), self.options.dropout)}

    def streams(self) -> dict[str, StreamSpec]:
        view = StrongViews(self.options.cutmix_p, tuple(self.options.cutmix_area))
        unlabeled = self.cfg.train.unlabeled_batch_size
        return {"labeled": StreamSpec("labeled", self.cfg.train.batch_size),
                "unlabeled": StreamSpec("unlabeled", unlabeled, view),
                "mix": StreamSpec("unlabeled", unlabeled, view)}

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        labeled, unlabeled, mix = batch["labeled"], batch["unlabeled"], batch["mix"]
        model = models["segmenter"]
        mix_labels = TeacherLabels.from_logits(_eval_logits(model, mix["image"]), mix["valid_pixels"])
        boxes = (unlabeled["cutmix_box1"], unlabeled["cutmix_box2"])
        strong = [_paste(unlabeled[key], mix[key], box) for key, box in zip(("image_s1", "image_s2"), boxes,
                                                                             strict=True)]
        n = len(labeled["image"])
        clean = model(torch.cat([labeled["image"], unlabeled["image"]]), perturb=True)
        strong_logits = model(torch.cat(strong))["logits"].chunk(2)
        weak_labels = TeacherLabels.from_logits(clean["logits"][n:], unlabeled["valid_pixels"])
        losses = unimatch_losses(weak_labels, mix_labels, tuple(strong_logits), boxes, clean["logits_fp"][n:],
                                 self.options.threshold)
        loss_sup = self.criterion(clean["logits"][:n], labeled["mask"])
        o = self.options
        return {"loss": unimatch_total(loss_sup, losses, o.strong_weight, o.fp_weight), "loss_sup": loss_sup.detach(),
                **{f"loss_{key}" if key != "confident_share" else key: value.detach() for key, value in losses.items()}}

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return LogitsOnly(unwrap(models["segmenter"]))


def _eval_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model``'s logits in eval mode (BatchNorm on running statistics), without gradient, as the released code
    predicts the mix batch; the model's mode is restored."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(images)["logits"]
    model.train(was_training)
    return logits


def _paste(images: torch.Tensor, other: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` images with ``other``'s pixels inside ``box`` (``(N, H, W)``, 1 inside)."""
    return torch.where(box.bool().unsqueeze(1), other, images)
