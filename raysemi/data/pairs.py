"""Reference images for SimFormer's pixel–pixel similarity transfer: each training image gets a partner.

A partner that shares exactly one novel tag lets the distillation compare the two images' non-base regions,
which then most likely hold the same novel class; failing that, a partner sharing a base class still gives the
similarity head same-class base pairs to learn from. The table is computed once from the image tags (a matrix
product over multi-hot tags, in row chunks) and cached as a file by the data tool.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raysemi.atomic import write_lines
from raysemi.data.formats import Sample, resolve_inside
from raysemi.errors import DataError

KINDS = ("novel", "base", "any")


def reference_pairs(
    tags: list[tuple[int, ...]], novel: list[int], num_classes: int, seed: int = 0, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """A partner for every image.

    Args:
        tags: per image, the classes present (base and novel).
        novel: the novel class ids.
        num_classes: K.
        seed: the draw among equally good partners.
        chunk: rows of the pairwise tag products computed at once (memory: chunk × images).

    Returns:
        ``(partner, kind)``: ``(n,)`` int partner indices (never the image itself when n > 1) and ``(n,)`` int
        indices into :data:`KINDS`: 0 shares exactly one novel tag, 1 shares a base class, 2 any other image.
    """
    n = len(tags)
    if n < 2:
        raise DataError(f"pairing needs at least 2 training images, got {n}")
    multi_hot = np.zeros((n, num_classes), np.int32)
    for i, present in enumerate(tags):
        multi_hot[i, list(present)] = 1
    is_novel = np.zeros(num_classes, bool)
    is_novel[novel] = True
    novel_hot, base_hot = multi_hot[:, is_novel], multi_hot[:, ~is_novel]
    rng = np.random.default_rng(seed)
    partner, kind = np.empty(n, np.int64), np.empty(n, np.int64)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        shared_novel = novel_hot[rows] @ novel_hot.T
        shared_base = base_hot[rows] @ base_hot.T
        for offset, i in enumerate(range(rows.start, rows.stop)):
            options = [shared_novel[offset] == 1, shared_base[offset] > 0, np.ones(n, bool)]
            for k, allowed in enumerate(options):
                allowed[i] = False
                candidates = np.flatnonzero(allowed)
                if len(candidates):
                    partner[i], kind[i] = rng.choice(candidates), k
                    break
    return partner, kind


def write_pairs_file(path: Path, images: list[Path], partner: np.ndarray, kind: np.ndarray, root: Path) -> None:
    """One ``image_path partner_path kind`` line per image, paths relative to ``root``."""
    lines = [
        f"{images[i].relative_to(root).as_posix()} {images[j].relative_to(root).as_posix()} {KINDS[k]}"
        for i, (j, k) in enumerate(zip(partner, kind, strict=True))
    ]
    write_lines(path, lines)


def read_pairs_file(path: str | Path, root: Path) -> dict[Path, Path]:
    """``{image: partner}`` from :func:`write_pairs_file`'s format.

    Raises:
        DataError: naming the file and line of a malformed line, a path outside ``root`` or a missing image.
    """
    from raysemi.data.weak_labels import read_image_lines

    def parse(cells: list[str], number: int) -> Path:
        if len(cells) != 2 or cells[1] not in KINDS:
            raise DataError(f"{path}:{number}: expected 'image partner kind' with kind one of {list(KINDS)}, "
                            f"got {' '.join(cells)!r} after the image")
        return resolve_inside(root.resolve(), cells[0], Path(path), number)

    return read_image_lines(path, root, "pairs", parse)


def pair_table(reader, samples: list[Sample], novel: list[int], seed: int) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """:func:`reference_pairs` of ``samples`` with tags from their masks → ``(images, partner, kind)``."""
    from raysemi.data.weak_labels import tags_from_masks

    tags = tags_from_masks(reader, samples)
    partner, kind = reference_pairs(list(tags.values()), novel, reader.classes.num_classes, seed)
    return list(tags), partner, kind


def partner_samples(
    reader, samples: list[Sample], novel: list[int], seed: int, pairs_file: str | None = None
) -> dict[Path, Sample]:
    """``{image: its reference sample}`` for every training sample: read from ``pairs_file`` (``raysemi data
    split --pairs``) when given, else computed now from the masks (:func:`pair_table`).

    Raises:
        DataError: naming ``pairs_file`` when it misses a training image or pairs one with an image outside
            the training samples.
    """
    by_image = {s.image: s for s in samples}
    if not pairs_file:
        images, partner, _ = pair_table(reader, samples, novel, seed)
        return {image: by_image[images[j]] for image, j in zip(images, partner, strict=True)}
    table = read_pairs_file(pairs_file, reader.root)
    missing = [image for image in by_image if image not in table]
    if missing:
        raise DataError(f"{pairs_file}: no partner for {len(missing)} training images, e.g. {missing[0]}; write "
                        "the table for this split with `raysemi data split ... --pairs`")
    strangers = [table[image] for image in by_image if table[image] not in by_image]
    if strangers:
        raise DataError(f"{pairs_file}: partner {strangers[0]} is not a training image of this split")
    return {image: by_image[table[image]] for image in by_image}
