"""Calibration: how often a prediction is right, binned by its confidence (the CAC paper's supplementary Fig. 1).

A well-calibrated model is right 80 % of the time on pixels it predicts with confidence 0.8; an over-confident
one is right less often than it claims. Pixels are binned by ``max_k p_k`` into equal-width bins over [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CalibrationBins:
    """Counts per confidence bin, accumulated over batches.

    Attributes:
        edges: ``(B + 1,)`` bin edges over [0, 1].
        count: ``(B,)`` pixels per bin; ``correct``: of them, predicted right; ``confidence``: sum of their
            confidences.
    """

    edges: torch.Tensor
    count: torch.Tensor
    correct: torch.Tensor
    confidence: torch.Tensor

    @classmethod
    def empty(cls, bins: int) -> CalibrationBins:
        zeros = torch.zeros(bins, dtype=torch.float64)
        return cls(torch.linspace(0, 1, bins + 1, dtype=torch.float64), zeros.clone(), zeros.clone(), zeros.clone())

    def update(self, probabilities: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> None:
        """``probabilities`` ``(N, K, H, W)`` summing to 1 over K, ``target`` ``(N, H, W)``; ignore pixels skipped."""
        confidence, prediction = probabilities.max(1)
        valid = target != ignore_index
        confidence, right = confidence[valid].double().cpu(), (prediction == target)[valid].double().cpu()
        index = (torch.bucketize(confidence, self.edges[1:-1], right=True)).clamp(max=len(self.count) - 1)
        bins = len(self.count)
        self.count += torch.bincount(index, minlength=bins).double()
        self.correct += torch.bincount(index, weights=right, minlength=bins)
        self.confidence += torch.bincount(index, weights=confidence, minlength=bins)

    def rows(self) -> list[dict[str, float]]:
        """One row per bin: ``low``, ``high``, ``pixels``, ``mean_confidence`` and ``accuracy`` (NaN when empty)."""
        nonempty = self.count.clamp(min=1)
        accuracy = torch.where(self.count > 0, self.correct / nonempty, torch.nan)
        confidence = torch.where(self.count > 0, self.confidence / nonempty, torch.nan)
        return [
            {"low": float(self.edges[i]), "high": float(self.edges[i + 1]), "pixels": int(self.count[i]),
             "mean_confidence": float(confidence[i]), "accuracy": float(accuracy[i])}
            for i in range(len(self.count))
        ]

    def expected_calibration_error(self) -> float:
        """ECE: the pixel-weighted mean over bins of ``|accuracy − mean confidence|``."""
        total = float(self.count.sum())
        if total == 0:
            return 0.0
        return float((self.correct - self.confidence).abs().sum() / total)
