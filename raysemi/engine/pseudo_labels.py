"""SimFormer's optional second stage, its data: pseudo-labels for the novel pixels of every training image.

A trained weak-shot model labels each training image's unknown pixels (those its base-only mask leaves
unlabeled) with its best novel class among the image's novel tags; base pixels keep their annotation. The
result is written as a ``generic`` dataset (images linked, labels as PNG, the val split with its original
masks), so a plain segmenter retrains on it with any method and config.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from raysemi.atomic import staging_dir
from raysemi.data.dataset import DatasetSource, load_sample
from raysemi.data.formats import Sample
from raysemi.data.weak_labels import hide_novel, image_tags
from raysemi.engine.inference import LoadedModel, predict_image
from raysemi.progress import progress


def novel_pseudo_label(scores: torch.Tensor, hidden_mask: torch.Tensor, novel_tags: list[int],
                       ignore_index: int = 255) -> torch.Tensor:
    """Fill a base-only mask's unknown pixels with the best of the image's novel classes.

    Args:
        scores: ``(K, H, W)`` class scores of the weak-shot model.
        hidden_mask: ``(H, W)`` int, base classes annotated, everything else ``ignore_index``.
        novel_tags: the novel classes the image is tagged with; none: the mask is returned unchanged.

    Returns:
        ``(H, W)`` int64: base pixels as annotated, unknown pixels ``argmax`` over ``novel_tags`` of ``scores``.
    """
    labels = hidden_mask.long().clone()
    if not novel_tags:
        return labels
    tags = torch.tensor(novel_tags, dtype=torch.long, device=scores.device)
    best = tags[scores[tags].argmax(0)]
    unknown = labels == ignore_index
    labels[unknown] = best[unknown].to(labels.device)
    return labels


def write_pseudo_label_dataset(loaded: LoadedModel, source: DatasetSource, novel: list[int], out: Path) -> Path:
    """Write ``out`` as a ``generic`` dataset: ``train`` = the training images with pseudo-labels (see
    :func:`novel_pseudo_label`; the novel tags are each image's, from its full mask), ``val`` = the val images
    with their masks. Images are symlinked, labels written as PNG; ``classes.json`` copies the source's classes.
    Built in a staging folder beside ``out`` and renamed (:func:`raysemi.atomic.staging_dir`), so ``out`` is
    complete or absent.
    """
    classes = source.classes
    with staging_dir(out, replace=True) as tmp:
        for index, sample in enumerate(progress(source.train, "pseudo-labels")):
            image, mask = load_sample(source.reader, sample)
            tags = np.flatnonzero(image_tags(mask, classes.num_classes, classes.ignore_index))
            hidden = torch.from_numpy(hide_novel(mask, novel, classes.ignore_index))
            scores = predict_image(loaded, image)
            labels = novel_pseudo_label(scores, hidden, [int(c) for c in tags if c in novel], classes.ignore_index)
            _write(tmp / "train", index, sample, labels.numpy())
        for index, sample in enumerate(source.val):
            _write(tmp / "val", index, sample, load_sample(source.reader, sample)[1])
        info = {"classes": list(classes.names), "palette": [list(c) for c in classes.palette],
                "ignore_index": classes.ignore_index}
        (tmp / "classes.json").write_text(json.dumps(info, indent=1))
    return out


def _write(split_dir: Path, index: int, sample: Sample, labels: np.ndarray) -> None:
    """Link the image as ``images/<index><suffix>`` and write ``labels/<index>.png`` (unique names: source
    datasets repeat file names across folders)."""
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    (split_dir / "labels").mkdir(parents=True, exist_ok=True)
    name = f"{index:06d}"
    (split_dir / "images" / f"{name}{sample.image.suffix.lower()}").symlink_to(sample.image.resolve())
    Image.fromarray(labels.astype(np.uint8)).save(split_dir / "labels" / f"{name}.png")
