"""Where a model errs, from its confusion matrix (:class:`raysemi.engine.metrics.ConfusionMatrix`: rows are the
true classes, columns the predicted ones, in pixels): per class its IoU, its recall and the class that takes most
of its pixels."""

from __future__ import annotations

from raysemi.engine.metrics import ConfusionMatrix


def errors_by_class(confusion: ConfusionMatrix, names: tuple[str, ...] | list[str]) -> dict[str, dict]:
    """Per true class (named by ``names``, in class order): ``iou`` and ``recall`` (fractions, 4 places; None for
    a class absent from both, or from the targets), ``top_error``, the predicted class other than itself that
    takes most of its pixels, and ``top_error_share``, the fraction of its pixels it takes (None without pixels)."""
    m = confusion.matrix.double()
    iou = confusion.iou()
    rows = {}
    for index, name in enumerate(names):
        total = float(m[index].sum())
        off = m[index].clone()
        off[index] = 0
        worst = int(off.argmax())
        rows[name] = {
            "iou": None if iou[index].isnan() else round(float(iou[index]), 4),
            "recall": round(float(m[index, index]) / total, 4) if total else None,
            "top_error": names[worst] if total else None,
            "top_error_share": round(float(off[worst]) / total, 4) if total else None,
        }
    return rows
