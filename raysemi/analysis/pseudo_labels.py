"""Pseudo-label quality per class at confidence thresholds: which pixels a threshold lets through, and how often
those are right.

Methods with a confidence threshold (UniMatch, FixMatch-style CPS) train on a pixel's argmax only where
``max_k p_k ≥ τ``. One overall pass rate hides what a class gets: its pixels may seldom pass τ, or pass under
another class's name (then a lower τ only passes more wrong labels). Counted per class, with the true masks of
images the method saw without them (a benchmark's unlabeled pool), this tells the two apart:

- ``passed``: the share of the class's true pixels whose prediction passes τ (whatever class it says);
- ``recall``: the share of the class's true pixels that get a passing *and* right pseudo-label;
- ``precision``: of the passing pixels predicted as the class, the share that truly are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COLUMNS = ("passed", "recall", "precision")  # each threshold's shares, in table order


@dataclass
class PseudoLabelCounts:
    """Pixel counts per threshold and class, accumulated over batches.

    Attributes:
        thresholds: ``(T,)`` confidence thresholds τ.
        true_pixels: ``(K,)`` non-ignored pixels of each true class.
        passed: ``(T, K)`` of them, pixels whose confidence is at least τ.
        passed_right: ``(T, K)`` of those, pixels predicted as their true class (the same count by predicted
            class: the recall's and the precision's numerator).
        predicted_passed: ``(T, K)`` passing pixels by *predicted* class (the precision's denominator).
    """

    thresholds: torch.Tensor
    true_pixels: torch.Tensor
    passed: torch.Tensor
    passed_right: torch.Tensor
    predicted_passed: torch.Tensor

    @classmethod
    def empty(cls, thresholds: list[float], classes: int) -> PseudoLabelCounts:
        grid = torch.zeros(len(thresholds), classes, dtype=torch.float64)
        return cls(torch.tensor(thresholds, dtype=torch.float64), torch.zeros(classes, dtype=torch.float64),
                   grid.clone(), grid.clone(), grid.clone())

    def update(self, probabilities: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> None:
        """``probabilities`` ``(N, K, H, W)`` summing to 1 over K, ``target`` ``(N, H, W)``; ignore pixels skipped."""
        classes = self.true_pixels.numel()
        confidence, prediction = probabilities.max(1)
        valid = target != ignore_index
        confidence = confidence[valid].double().cpu()
        prediction, truth = prediction[valid].cpu(), target[valid].long().cpu()
        right = prediction == truth
        self.true_pixels += torch.bincount(truth, minlength=classes).double()
        for index, threshold in enumerate(self.thresholds.tolist()):
            passing = confidence >= threshold
            self.passed[index] += torch.bincount(truth[passing], minlength=classes).double()
            self.passed_right[index] += torch.bincount(truth[passing & right], minlength=classes).double()
            self.predicted_passed[index] += torch.bincount(prediction[passing], minlength=classes).double()

    def rows(self, class_names: list[str]) -> list[dict[str, float | str | None]]:
        """One row per (threshold, class), then an ``all`` row per threshold: ``threshold``, ``class``,
        ``pixels``, ``passed``, ``recall`` and ``precision`` (None where the denominator is 0)."""
        rows: list[dict[str, float | str | None]] = []
        for index, threshold in enumerate(self.thresholds.tolist()):
            per_class = [(name, self.true_pixels[k], self.passed[index, k], self.passed_right[index, k],
                          self.predicted_passed[index, k]) for k, name in enumerate(class_names)]
            total = ("all", self.true_pixels.sum(), self.passed[index].sum(), self.passed_right[index].sum(),
                     self.predicted_passed[index].sum())
            rows += [_row(threshold, *entry) for entry in [*per_class, total]]
        return rows


def by_class(rows: list[dict]) -> tuple[list[float], list[tuple[str, int, list[float | None]]]]:
    """:meth:`PseudoLabelCounts.rows` as a table: the thresholds, and per class (then ``all``) its name, its pixels
    and the :data:`COLUMNS` of each threshold in turn."""
    thresholds = list(dict.fromkeys(row["threshold"] for row in rows))
    table = []
    for name in dict.fromkeys(row["class"] for row in rows):
        cells = {row["threshold"]: row for row in rows if row["class"] == name}
        table.append((name, cells[thresholds[0]]["pixels"], [cells[t][c] for t in thresholds for c in COLUMNS]))
    return thresholds, table


def _row(threshold: float, name: str, pixels: torch.Tensor, passed: torch.Tensor, right: torch.Tensor,
         predicted: torch.Tensor) -> dict[str, float | str | None]:
    return {"threshold": threshold, "class": name, "pixels": int(pixels), "passed": _share(passed, pixels),
            "recall": _share(right, pixels), "precision": _share(right, predicted)}


def _share(part: torch.Tensor, whole: torch.Tensor) -> float | None:
    return float(part / whole) if whole > 0 else None
