"""Self-correcting networks (Ibrahim, Vahdat, Ranjbar, Macready, "Semi-Supervised Semantic Image Segmentation
with Self-correcting Networks", CVPR 2020): a fully labeled set F and a weak set W with boxes only.

Boxes are drawn as an annotator would (``data.boxes``, :func:`raysemi.data.weak_labels.mask_boxes`): one per
object of a thing class (car, person, VOC's 20 objects), none for stuff (road, sky, VOC's background). The
method is defined on the box raster, the ancillary's input: C channels of boxes and one channel "outside every
box" (the slides' C + 1 channels). Pixels of a weak image outside every box are therefore not left out: as
in the paper's VOC setting, where they are background, the ancillary labels them (among the stuff classes
only, with ``box_constraint``: the stuff classes are the ``free_classes``, allowed anywhere) and the primary
learns q there like anywhere else on W. A thing too small to be boxed looks like stuff to both models, as it
does to the annotator who skipped it.

The method runs in stages, each its own checkpointed run (:meth:`SelfCorrection.stages` declares them, the
training driver chains them; the next stage starts from the previous one's checkpoint through
``run.init_from``):

1. ``ancillary``: p_anc(y | x, b), a segmenter with a box encoder (:mod:`raysemi.models.box_encoder`),
   trained with CE on F (on the first half of F in ``conv`` mode, so the corrector later sees its mistakes on
   images it did not fit). F's boxes are derived from its masks by the same rule as W's; its val mIoU is
   measured with val boxes derived the same way. With ``box_constraint`` its output covers only the classes
   whose boxes cover each pixel and the free (stuff) classes
   (:func:`raysemi.models.box_encoder.box_constrained_log_probs`).
2. ``corrector`` (``conv`` mode only): the primary p(y | x) and the convolutional corrector on F, with
   ``CE(y, p) + CE(y, q_conv)``; q_conv sees the primary's logits detached (the corrector learns to correct,
   the primary learns from its own CE) and the frozen ancillary's.
3. ``primary``: p on F ∪ W. F: ``CE(y, p)`` (plus ``CE(y, q_conv)`` in ``conv`` mode, which keeps training the
   corrector). W: the soft-target CE ``−Σ_k sg(q_k) log p_k`` over its non-padding pixels, weighted by
   ``self_correction.weak_weight``, with q from
   - ``none``: the frozen ancillary's softmax;
   - ``linear``: logits ``(l_p + α·l_anc) / (1 + α)``, α annealed from ``alpha_start`` to ``alpha_end``;
   - ``conv``: the corrector's softmax (this term does not train the corrector).

The ancillary stays frozen (eval mode, no gradient) after stage 1. ``eval`` and ``predict`` use the primary.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from raysemi.data.dataset import DatasetSource, dataset_classes
from raysemi.data.views import PlainCrops
from raysemi.data.weak_labels import stuff_classes
from raysemi.errors import DataError
from raysemi.losses import linear_self_correction, soft_cross_entropy
from raysemi.methods.base import Batch, Method, Stage, StreamSpec, derived_config, labeled_criterion
from raysemi.models import ConvCorrector, LogitsOnly, build_ancillary, build_segmenter, unwrap
from raysemi.sections import CommonConfig, Section

STAGES = ("ancillary", "corrector", "primary")


class SelfCorrectionConfig(Section):
    """Self-correcting networks (``method: self_correction``): the ``self_correction`` section of a config."""

    mode: Literal["none", "linear", "conv"] = Field("linear", description="how the weak set's targets q are "
                                                    "made (see the module docstring)")
    alpha_start: float = Field(30.0, gt=0.0, description="linear mode: α at the first primary step ...")
    alpha_end: float = Field(0.5, gt=0.0, description="... and at the last")
    alpha_schedule: Literal["geometric", "linear", "cosine"] = Field("geometric", description="α's path from "
                                                                     "alpha_start to alpha_end")
    weak_weight: float = Field(1.0, ge=0.0, description="weight of the soft-target CE on the weak (box) set")
    ancillary_steps: int | None = Field(None, ge=1, description="stage 1's steps; None: train.steps")
    corrector_steps: int | None = Field(None, ge=1, description="conv stage 2's steps; None: train.steps")
    corrector_hidden: int = Field(128, ge=1, description="hidden channels of the convolutional corrector")
    box_constraint: bool = Field(True, description="ancillary output restricted to the classes whose boxes "
                                 "cover each pixel (free_classes are allowed anywhere)")
    free_classes: list[int] | None = Field(None, description="classes allowed outside every box; null: the "
                                           "stuff classes, which never get boxes (data.boxes.things), e.g. VOC's "
                                           "background 0, CamVid's Road, Sky, ...")
    stage: Literal["all", "ancillary", "corrector", "primary"] = Field(
        "all", description="which stage a run is; `all` (what a user runs) chains them, each its own run under "
        "run.dir")


def stages_for(mode: str) -> tuple[str, ...]:
    """The stages a ``self_correction.mode`` runs, in order."""
    return STAGES if mode == "conv" else ("ancillary", "primary")


def alpha_at(step: int, total_steps: int, start: float, end: float, schedule: str) -> float:
    """α at ``step`` of ``total_steps``: ``start`` at the first step, ``end`` at the last.

    ``geometric``: ``start·(end/start)^t``; ``linear``: ``start + (end − start)·t``; ``cosine``:
    ``end + (start − end)·(1 + cos πt)/2``, with ``t = step / (total_steps − 1)``.
    """
    t = min(step / max(total_steps - 1, 1), 1.0)
    if schedule == "geometric":
        return start * (end / start) ** t
    if schedule == "linear":
        return start + (end - start) * t
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


class SelfCorrection(Method):
    """The registered method: its config, search space and stages. A method object is one stage's
    (:meth:`create`: ``all`` → the primary stage, what eval and predict load)."""

    name = "self_correction"
    config_model = SelfCorrectionConfig
    search_space = {"self_correction.alpha_start": {"loguniform": [3.0, 100.0]},
                    "self_correction.alpha_end": {"loguniform": [0.1, 3.0]},
                    "self_correction.alpha_schedule": {"choice": ["geometric", "linear", "cosine"]}}

    def __init__(self, cfg: CommonConfig):
        self.cfg = cfg
        self.options: SelfCorrectionConfig = cfg.self_correction
        self.criterion = labeled_criterion(cfg.loss)

    @classmethod
    def create(cls, cfg: CommonConfig) -> SelfCorrection:
        stage = cfg.self_correction.stage
        return {"ancillary": AncillaryStage, "corrector": CorrectorStage}.get(stage, PrimaryStage)(cfg)

    @classmethod
    def check_config(cls, cfg: CommonConfig) -> None:
        if cfg.self_correction.stage in ("all", "primary") and not cfg.data.unlabeled_boxes:
            raise ValueError("method=self_correction needs data.unlabeled_boxes, a boxes file for the weak set "
                             "(write one with `raysemi data split ... --boxes`)")

    def check_data(self, source: DatasetSource) -> None:
        """With ``box_constraint``, every class without boxes (the stuff classes of ``data.boxes``) must be a
        free class: the constraint would otherwise rule it out inside every box, and the ancillary would only
        fill boxes. Raises ``DataError``."""
        o = self.options
        if o.free_classes is None:
            stuff_classes(source.classes, self.cfg.data.boxes)  # data.boxes.things are class ids
            return
        ruled_out = [c for c in stuff_classes(source.classes, self.cfg.data.boxes) if c not in o.free_classes]
        if o.box_constraint and ruled_out:
            names = ", ".join(f"{c} ({source.classes.names[c]!r})" for c in ruled_out)
            raise DataError(f"self_correction.box_constraint rules out class {names} inside every box, but it never "
                            f"has boxes: set self_correction.free_classes={sorted({*o.free_classes, *ruled_out})} "
                            "(allowed anywhere) or self_correction.box_constraint=false")

    @classmethod
    def stages(cls, cfg: CommonConfig) -> list[Stage]:
        """``stage=all``: :func:`stage_configs`' runs; a single stage is a plain run."""
        if cfg.self_correction.stage != "all":
            return super().stages(cfg)
        return [Stage(c.self_correction.stage, c) for c in stage_configs(cfg)]

    @classmethod
    def report_label(cls, options: dict[str, Any]) -> str:
        return f"{cls.name}-{options['mode']}"

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return LogitsOnly(unwrap(models["primary"]))

    def _ancillary(self, num_classes: int) -> nn.Module:
        o = self.options
        return build_ancillary(self.cfg.model, num_classes, o.box_constraint, self.free_classes())

    def box_view(self) -> PlainCrops:
        """Labeled crops with the raster of the boxes drawn on their masks by the ``data.boxes`` rule (the
        ancillary's input, drawn as the weak set's boxes are)."""
        return PlainCrops(boxes_from_masks=self.cfg.data.boxes)

    def free_classes(self) -> tuple[int, ...]:
        """``self_correction.free_classes``, or when unset the dataset's stuff classes under ``data.boxes``
        (read from the configured dataset's class list)."""
        if self.options.free_classes is not None:
            return tuple(self.options.free_classes)
        if not self.options.box_constraint:
            return ()
        return stuff_classes(dataset_classes(self.cfg.data), self.cfg.data.boxes)

    def _frozen_ancillary(self, num_classes: int) -> nn.Module:
        ancillary = self._ancillary(num_classes)
        ancillary.requires_grad_(False)
        return ancillary.eval()

    @staticmethod
    def _ancillary_logits(models, stream: dict[str, torch.Tensor]) -> torch.Tensor:
        ancillary = models["ancillary"].eval()  # frozen: BatchNorm keeps its statistics
        with torch.no_grad():
            return ancillary(stream["image"], stream["boxes"])["logits"]


class AncillaryStage(SelfCorrection):
    """Stage 1: p_anc(y | x, b) with CE on F (its first half in ``conv`` mode)."""

    eval_needs_boxes = True

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        return {"ancillary": self._ancillary(num_classes)}

    def streams(self) -> dict[str, StreamSpec]:
        source = "labeled_half" if self.options.mode == "conv" else "labeled"
        return {"labeled": StreamSpec(source, self.cfg.train.batch_size, self.box_view())}

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        labeled = batch["labeled"]
        logits = models["ancillary"](labeled["image"], labeled["boxes"])["logits"]
        loss = self.criterion(logits, labeled["mask"])
        return {"loss": loss, "loss_sup": loss.detach()}

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return BoxConditioned(unwrap(models["ancillary"]))


class CorrectorStage(SelfCorrection):
    """Stage 2 (``conv``): primary and corrector on F, ``CE(y, p) + CE(y, q_conv)``."""

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        return {
            "primary": build_segmenter(self.cfg.model, num_classes),
            "ancillary": self._frozen_ancillary(num_classes),
            "corrector": ConvCorrector(num_classes, self.options.corrector_hidden),
        }

    def streams(self) -> dict[str, StreamSpec]:
        return {"labeled": StreamSpec("labeled", self.cfg.train.batch_size, self.box_view())}

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        labeled = batch["labeled"]
        primary = models["primary"](labeled["image"])["logits"]
        corrected = models["corrector"](primary.detach(), self._ancillary_logits(models, labeled))
        loss_sup = self.criterion(primary, labeled["mask"])
        loss_corrector = self.criterion(corrected, labeled["mask"])
        logged = {"loss_sup": loss_sup.detach(), "loss_corrector": loss_corrector.detach()}
        return {"loss": loss_sup + loss_corrector, **logged}


class PrimaryStage(SelfCorrection):
    """Stage 3: the primary on F ∪ W with W's targets from ``self_correction.mode``."""

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        models = {
            "primary": build_segmenter(self.cfg.model, num_classes),
            "ancillary": self._frozen_ancillary(num_classes),
        }
        if self.options.mode == "conv":
            models["corrector"] = ConvCorrector(num_classes, self.options.corrector_hidden)
        return models

    def streams(self) -> dict[str, StreamSpec]:
        conv = self.options.mode == "conv"
        return {
            "labeled": StreamSpec("labeled", self.cfg.train.batch_size, self.box_view() if conv else PlainCrops()),
            "weak": StreamSpec("unlabeled", self.cfg.train.unlabeled_batch_size),
        }

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        labeled, weak = batch["labeled"], batch["weak"]
        n = len(labeled["image"])
        logits = models["primary"](torch.cat([labeled["image"], weak["image"]]))["logits"]
        primary_f, primary_w = logits[:n], logits[n:]
        loss_sup = self.criterion(primary_f, labeled["mask"])
        logged = {"loss_sup": loss_sup.detach()}
        loss = loss_sup
        if self.options.mode == "conv":
            corrected = models["corrector"](primary_f.detach(), self._ancillary_logits(models, labeled))
            loss_corrector = self.criterion(corrected, labeled["mask"])
            loss = loss + loss_corrector
            logged["loss_corrector"] = loss_corrector.detach()
        target, extra = self._weak_target(models, primary_w, weak, step)
        valid = weak["boxes"].sum(1) > 0  # padding has no channel set
        loss_weak = soft_cross_entropy(primary_w, target, valid)
        logged |= {"loss_weak": loss_weak.detach(), **extra}
        return {"loss": loss + self.options.weak_weight * loss_weak, **logged}

    def _weak_target(self, models, primary_w: torch.Tensor, weak: dict[str, torch.Tensor], step: int):
        """q ``(N, C, H, W)`` probabilities (no gradient) for the weak images, and scalars to log."""
        ancillary = self._ancillary_logits(models, weak)
        if self.options.mode == "none":
            return ancillary.softmax(1), {}
        if self.options.mode == "linear":
            o = self.options
            alpha = alpha_at(step, self.cfg.train.steps, o.alpha_start, o.alpha_end, o.alpha_schedule)
            q = linear_self_correction(primary_w.detach(), ancillary, alpha).softmax(1)
            return q, {"alpha": primary_w.new_tensor(alpha)}
        with torch.no_grad():  # this term does not train the corrector
            return models["corrector"](primary_w.detach(), ancillary).softmax(1), {}


class BoxConditioned(nn.Module):
    """The ancillary as an eval model: ``(N, 3 + C + 1, H, W)`` image channels then box raster → logits."""

    def __init__(self, ancillary: nn.Module):
        super().__init__()
        self.ancillary = ancillary

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.ancillary(inputs[:, :3], inputs[:, 3:])["logits"]


def stage_configs(cfg: CommonConfig) -> list[CommonConfig]:
    """The chained runs of ``self_correction.stage=all``: one config per stage, each in ``<run.dir>/<stage>``,
    each after the first starting from the previous stage's checkpoint (``run.init_from``)."""
    steps = {
        "ancillary": cfg.self_correction.ancillary_steps or cfg.train.steps,
        "corrector": cfg.self_correction.corrector_steps or cfg.train.steps,
        "primary": cfg.train.steps,
    }
    configs, previous = [], None
    for stage in stages_for(cfg.self_correction.mode):
        changes = {"run.dir": f"{cfg.run.dir}/{stage}", "run.init_from": previous, "train.steps": steps[stage],
                   "self_correction.stage": stage}
        if cfg.run.name:
            changes["run.name"] = f"{cfg.run.name}-{stage}"
        configs.append(derived_config(cfg, changes, source=f"self_correction stage {stage}"))
        previous = configs[-1].run.dir
    return configs
