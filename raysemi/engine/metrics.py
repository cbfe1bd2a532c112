"""Confusion-matrix segmentation metrics: mIoU, per-class IoU and pixel accuracy."""

from __future__ import annotations

import torch


class ConfusionMatrix:
    """Accumulates a ``(C, C)`` matrix, rows = true class, columns = predicted class; ignore pixels skipped.

    mIoU is the mean IoU over classes that occur in the ground truth or the predictions (union > 0), the
    convention of torchvision's references and mmseg; classes absent from both are reported as NaN.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """``prediction`` and ``target``: int tensors of the same shape (e.g. ``(N, H, W)``)."""
        valid = target != self.ignore_index
        index = target[valid].long() * self.num_classes + prediction[valid].long()
        counts = torch.bincount(index, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).to(self.matrix.device)

    def iou(self) -> torch.Tensor:
        """``(C,)`` float64 IoU per class, NaN where the class is in neither target nor prediction."""
        m = self.matrix.double()
        intersection = m.diag()
        union = m.sum(0) + m.sum(1) - intersection
        return torch.where(union > 0, intersection / union.clamp(min=1), torch.full_like(union, float("nan")))

    def miou(self, classes: list[int] | None = None) -> float:
        """Mean IoU over ``classes`` (default: all) that occur; 0.0 when none does."""
        iou = self.iou() if classes is None else self.iou()[classes]
        return float(iou.nanmean()) if not iou.isnan().all() else 0.0

    def pixel_accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(self.matrix.diag().sum()) / total if total else 0.0

    def summary(self, class_names: list[str] | tuple[str, ...], groups: dict[str, list[int]] | None = None) -> dict:
        """``{"miou", "pixel_acc", "iou": {name: value or None}}`` (JSON-ready), plus ``"miou_<group>"`` for each
        of ``groups`` (e.g. weak-shot ``{"base": [...], "novel": [...]}``)."""
        iou = self.iou().tolist()
        return {
            "miou": self.miou(),
            **{f"miou_{group}": self.miou(classes) for group, classes in (groups or {}).items()},
            "pixel_acc": self.pixel_accuracy(),
            "iou": {name: (None if value != value else value) for name, value in zip(class_names, iou, strict=True)},
        }
