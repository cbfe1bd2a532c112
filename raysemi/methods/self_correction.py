"""Self-correcting networks (Ibrahim, Vahdat, Ranjbar, Macready, "Semi-Supervised Semantic Image Segmentation
with Self-correcting Networks", CVPR 2020): a fully labeled set F and a weak set W with boxes only.

The method runs in stages, each its own checkpointed run (``raysemi.ray.stages`` chains them; the next stage
starts from the previous one's checkpoint through ``run.init_from``):

1. ``ancillary``: p_anc(y | x, b), a segmenter with a box encoder (:mod:`raysemi.models.box_encoder`),
   trained with CE on F (on the first half of F in ``conv`` mode, so the corrector later sees its mistakes on
   images it did not fit). F's boxes are derived from its masks; its val mIoU is measured with val boxes
   derived the same way. With ``box_constraint`` its output covers only the classes whose boxes cover each
   pixel (:func:`raysemi.models.box_encoder.box_constrained_log_probs`).
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

import torch
from torch import nn

from raysemi.config import Config
from raysemi.losses import linear_self_correction, soft_cross_entropy
from raysemi.methods.base import Batch, StreamSpec, labeled_criterion
from raysemi.models import ConvCorrector, LogitsOnly, build_ancillary, build_segmenter, unwrap

STAGES = ("ancillary", "corrector", "primary")


def stages_for(mode: str) -> tuple[str, ...]:
    """The stages a ``self_correction.mode`` runs, in order."""
    return STAGES if mode == "conv" else ("ancillary", "primary")


def build_self_correction(cfg: Config):
    """The method object for the config's stage (``all`` → the primary stage, what eval and predict load)."""
    stage = cfg.self_correction.stage
    return {"ancillary": AncillaryStage, "corrector": CorrectorStage}.get(stage, PrimaryStage)(cfg)


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


class _Stage:
    name = "self_correction"
    eval_needs_boxes = False

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.options = cfg.self_correction
        self.criterion = labeled_criterion(cfg.loss)

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return LogitsOnly(unwrap(models["primary"]))

    def _ancillary(self, num_classes: int) -> nn.Module:
        o = self.options
        return build_ancillary(self.cfg.model, num_classes, o.box_constraint, tuple(o.free_classes))

    def _frozen_ancillary(self, num_classes: int) -> nn.Module:
        ancillary = self._ancillary(num_classes)
        ancillary.requires_grad_(False)
        return ancillary.eval()

    @staticmethod
    def _ancillary_logits(models, stream: dict[str, torch.Tensor]) -> torch.Tensor:
        ancillary = models["ancillary"].eval()  # frozen: BatchNorm keeps its statistics
        with torch.no_grad():
            return ancillary(stream["image"], stream["boxes"])["logits"]


class AncillaryStage(_Stage):
    """Stage 1: p_anc(y | x, b) with CE on F (its first half in ``conv`` mode)."""

    eval_needs_boxes = True

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        return {"ancillary": self._ancillary(num_classes)}

    def streams(self) -> dict[str, StreamSpec]:
        source = "labeled_half" if self.options.mode == "conv" else "labeled"
        return {"labeled": StreamSpec(source, self.cfg.train.batch_size, boxes=True)}

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        labeled = batch["labeled"]
        logits = models["ancillary"](labeled["image"], labeled["boxes"])["logits"]
        loss = self.criterion(logits, labeled["mask"])
        return {"loss": loss, "loss_sup": loss.detach()}

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return BoxConditioned(unwrap(models["ancillary"]))


class CorrectorStage(_Stage):
    """Stage 2 (``conv``): primary and corrector on F, ``CE(y, p) + CE(y, q_conv)``."""

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        return {
            "primary": build_segmenter(self.cfg.model, num_classes),
            "ancillary": self._frozen_ancillary(num_classes),
            "corrector": ConvCorrector(num_classes, self.options.corrector_hidden),
        }

    def streams(self) -> dict[str, StreamSpec]:
        return {"labeled": StreamSpec("labeled", self.cfg.train.batch_size, boxes=True)}

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        labeled = batch["labeled"]
        primary = models["primary"](labeled["image"])["logits"]
        corrected = models["corrector"](primary.detach(), self._ancillary_logits(models, labeled))
        loss_sup = self.criterion(primary, labeled["mask"])
        loss_corrector = self.criterion(corrected, labeled["mask"])
        logged = {"loss_sup": loss_sup.detach(), "loss_corrector": loss_corrector.detach()}
        return {"loss": loss_sup + loss_corrector, **logged}


class PrimaryStage(_Stage):
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
            "labeled": StreamSpec("labeled", self.cfg.train.batch_size, boxes=conv),
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


def stage_configs(cfg: Config) -> list[Config]:
    """The chained runs of ``self_correction.stage=all``: one config per stage, each in ``<run.dir>/<stage>``,
    each after the first starting from the previous stage's checkpoint (``run.init_from``)."""
    from raysemi.config import validate_config

    base = cfg.model_dump(mode="json")
    steps = {
        "ancillary": cfg.self_correction.ancillary_steps or cfg.train.steps,
        "corrector": cfg.self_correction.corrector_steps or cfg.train.steps,
        "primary": cfg.train.steps,
    }
    configs, previous = [], None
    for stage in stages_for(cfg.self_correction.mode):
        raw = {**base, "run": {**base["run"], "dir": f"{cfg.run.dir}/{stage}", "init_from": previous},
               "train": {**base["train"], "steps": steps[stage]},
               "self_correction": {**base["self_correction"], "stage": stage}}
        if cfg.run.name:
            raw["run"]["name"] = f"{cfg.run.name}-{stage}"
        configs.append(validate_config(raw, source=f"self_correction stage {stage}"))
        previous = configs[-1].run.dir
    return configs
