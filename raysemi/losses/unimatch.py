"""UniMatch's unlabeled losses (Yang et al., "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic
Segmentation", CVPR 2023), in the form of the released code: pseudo-labels from the weak view, kept where the
teacher is confident, summed and divided by every valid (non-padding) pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TeacherLabels:
    """Hard pseudo-labels of a batch: ``labels`` ``(N, H, W)`` int64 (the teacher's argmax), ``confidence``
    ``(N, H, W)`` float (its softmax maximum) and ``valid`` ``(N, H, W)`` bool (False on padding)."""

    labels: torch.Tensor
    confidence: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def from_logits(cls, logits: torch.Tensor, valid: torch.Tensor) -> TeacherLabels:
        """``(N, C, H, W)`` teacher logits (no gradient is taken) and ``(N, H, W)`` valid pixels."""
        confidence, labels = logits.detach().float().softmax(dim=1).max(dim=1)
        return cls(labels, confidence, valid.bool())

    def mixed(self, other: TeacherLabels, box: torch.Tensor) -> TeacherLabels:
        """These labels with the pixels inside ``box`` (``(N, H, W)``, 1 inside) taken from ``other``: the
        pseudo-labels of an image into which ``other``'s image was CutMixed in ``box``."""
        inside = box.bool()
        return TeacherLabels(torch.where(inside, other.labels, self.labels),
                            torch.where(inside, other.confidence, self.confidence),
                            torch.where(inside, other.valid, self.valid))


def confident_pseudo_label_loss(logits: torch.Tensor, target: TeacherLabels, threshold: float) -> torch.Tensor:
    """``Σ CE(logits, labels)`` over the valid pixels whose confidence is ≥ ``threshold``, divided by the number of
    valid pixels (not of the confident ones: the term fades as confidence falls, as in the released code).

    Args:
        logits: ``(N, C, H, W)`` student logits.
        target: pseudo-labels of the same pixels.
        threshold: confidence below which a pixel contributes 0.

    Returns:
        Scalar loss; 0 when no pixel is valid.
    """
    keep = (target.confidence >= threshold) & target.valid
    per_pixel = F.cross_entropy(logits, target.labels, reduction="none")
    return (per_pixel * keep).sum() / target.valid.sum().clamp(min=1)


def unimatch_losses(
    weak: TeacherLabels,
    mix: TeacherLabels,
    strong_logits: tuple[torch.Tensor, torch.Tensor],
    boxes: tuple[torch.Tensor, torch.Tensor],
    perturbed_logits: torch.Tensor,
    threshold: float,
) -> dict[str, torch.Tensor]:
    """The three unlabeled terms of a step.

    Args:
        weak: pseudo-labels of the weak view of the unlabeled batch.
        mix: pseudo-labels of the weak view of the batch CutMixed into the strong views.
        strong_logits: ``(N, C, H, W)`` logits of strong views 1 and 2 (each mixed with ``mix`` in its box).
        boxes: the two views' ``(N, H, W)`` CutMix boxes (1: the pixel comes from the mix batch).
        perturbed_logits: ``(N, C, H, W)`` logits of the weak view decoded from dropped-out features.
        threshold: the confidence threshold τ.

    Returns:
        ``{"strong1", "strong2", "perturbed"}`` scalar losses and ``"confident_share"``, the share of the weak
        view's valid pixels whose confidence reaches τ (the released code's "mask ratio").
    """
    losses = {
        f"strong{k + 1}": confident_pseudo_label_loss(logits, weak.mixed(mix, box), threshold)
        for k, (logits, box) in enumerate(zip(strong_logits, boxes, strict=True))
    }
    losses["perturbed"] = confident_pseudo_label_loss(perturbed_logits, weak, threshold)
    confident = ((weak.confidence >= threshold) & weak.valid).sum()
    losses["confident_share"] = confident / weak.valid.sum().clamp(min=1)
    return losses


def unimatch_total(loss_sup: torch.Tensor, losses: dict[str, torch.Tensor], strong_weight: float = 0.5,
                   perturbed_weight: float = 0.5) -> torch.Tensor:
    """``(L_sup + strong_weight · (L_s1 + L_s2) / 2 + perturbed_weight · L_fp) / 2``: with the defaults the
    released code's ``(L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2``."""
    strong = (losses["strong1"] + losses["strong2"]) / 2
    return (loss_sup + strong_weight * strong + perturbed_weight * losses["perturbed"]) / 2
