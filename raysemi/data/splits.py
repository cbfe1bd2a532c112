"""Labeled/unlabeled split files.

A split file is plain text, one ``image_path mask_path`` pair per line, paths relative to the dataset root:
the format the reference implementations publish (TorchSemiSeg/CPS, and UniMatch's ``labeled.txt`` /
``unlabeled.txt`` once prefixed). Lines with only an image path are accepted for unlabeled files. Paths that
resolve outside the root are rejected.

A split made here is a deterministic function of (train set order, fraction or count, seed): a seeded
permutation of the train samples whose first ``k`` are labeled and the rest unlabeled, so the two are
disjoint and cover the train set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from raysemi.data.formats import Sample
from raysemi.errors import DataError


@dataclass(frozen=True)
class Split:
    labeled: list[Sample]
    unlabeled: list[Sample]


def labeled_count(total: int, fraction: float | None = None, count: int | None = None) -> int:
    """How many of ``total`` images are labeled: ``count`` if given, else ``ceil(total * fraction)``."""
    if count is not None:
        if not 1 <= count <= total:
            raise DataError(f"label count {count} is not accepted: the train set has {total} images (1..{total})")
        return count
    if fraction is None or not 0 < fraction <= 1:
        raise DataError(f"label fraction {fraction} is not accepted; use a value in (0, 1], e.g. 1/8 or 0.125")
    return max(1, math.ceil(round(total * fraction, 6)))


def make_split(samples: list[Sample], fraction: float | None = None, count: int | None = None, seed: int = 0) -> Split:
    """Choose the labeled subset by a seeded permutation of ``samples`` (deterministic, disjoint, covering)."""
    if not samples:
        raise DataError("cannot split an empty train set")
    k = labeled_count(len(samples), fraction, count)
    order = np.random.default_rng(seed).permutation(len(samples))
    labeled = sorted(order[:k])
    unlabeled = sorted(order[k:])
    return Split([samples[i] for i in labeled], [samples[i] for i in unlabeled])


def complement(train: list[Sample], labeled: list[Sample]) -> list[Sample]:
    """The train samples whose image is not in ``labeled``, in train order."""
    taken = {s.image for s in labeled}
    return [s for s in train if s.image not in taken]


def parse_fraction(text: str) -> float:
    """``"1/8"`` or ``"0.125"`` → 0.125."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise DataError(f"label fraction {text!r} is not accepted; write it as 1/8 or 0.125") from None


def write_split_file(path: Path, samples: list[Sample], root: Path) -> None:
    """Write ``image mask`` lines relative to ``root`` (masks omitted where a sample has none)."""
    lines = []
    for sample in samples:
        parts = [sample.image.relative_to(root).as_posix()]
        if sample.mask is not None:
            parts.append(sample.mask.relative_to(root).as_posix())
        lines.append(" ".join(parts))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def write_split(reader, split_name: str, fraction: float | None, count: int | None, seed: int, out: Path,
                tags: bool = False, boxes: bool = False) -> Split:
    """The split tool: draw the labeled part of ``reader``'s ``split_name`` samples (a fraction or a count,
    with ``seed``) and write ``labeled.txt`` and ``unlabeled.txt`` to ``out``; with ``tags`` / ``boxes`` also
    each unlabeled image's tags (``unlabeled_tags.txt``) or boxes (``unlabeled_boxes.txt``) from its mask."""
    split = make_split(split_samples(reader, split_name), fraction, count, seed)
    write_split_files(reader, split, out, tags, boxes)
    return split


def write_split_files(reader, split: Split, out: Path, tags: bool = False, boxes: bool = False) -> None:
    from raysemi.data.weak_labels import dataset_boxes, tags_from_masks, write_boxes_file, write_tags_file

    write_split_file(out / "labeled.txt", split.labeled, reader.root)
    write_split_file(out / "unlabeled.txt", split.unlabeled, reader.root)
    if tags:
        write_tags_file(out / "unlabeled_tags.txt", tags_from_masks(reader, split.unlabeled), reader.root)
    if boxes:
        write_boxes_file(out / "unlabeled_boxes.txt", dataset_boxes(reader, split.unlabeled), reader.root)


def read_split_file(path: str | Path, root: Path, require_masks: bool = True) -> list[Sample]:
    """Read a split file; every path must exist and stay inside ``root``.

    Raises:
        DataError: naming the file, the line and the path at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    root = root.resolve()
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2 or (require_masks and len(parts) != 2):
            expected = "'image mask'" if require_masks else "'image' or 'image mask'"
            raise DataError(f"{path}:{number}: expected {expected}, got {line.strip()!r}")
        image = resolve_inside(root, parts[0], path, number)
        mask = resolve_inside(root, parts[1], path, number) if len(parts) == 2 else None
        samples.append(Sample(image, mask))
    if not samples:
        raise DataError(f"{path}: the split file lists no images")
    return samples


def split_samples(reader, split: str) -> list[Sample]:
    """A split ``reader`` (a ``DatasetFormat``) names (``train``, ``val``), or a split file (a path ending in
    ``.txt``) of ``image mask`` lines relative to the dataset root: a protocol's own train or evaluation set."""
    if split.endswith(".txt"):
        return read_split_file(split, reader.root)
    return reader.samples(split)


def resolve_inside(root: Path, relative: str, source: Path, number: int) -> Path:
    resolved = (root / relative.lstrip("/")).resolve()
    if not resolved.is_relative_to(root):
        raise DataError(f"{source}:{number}: {relative} resolves outside the dataset root {root}")
    if not resolved.is_file():
        raise DataError(f"{source}:{number}: {relative} not found under {root}")
    return resolved
