"""Labeled/unlabeled split files.

A split file is plain text, one ``image_path mask_path`` pair per line, paths relative to the dataset root:
the format the reference implementations publish (TorchSemiSeg/CPS, and UniMatch's ``labeled.txt`` /
``unlabeled.txt`` once prefixed). Lines with only an image path are accepted for unlabeled files. Paths that
resolve outside the root are rejected.

A split made here is a deterministic function of (train set order, fraction or count, seed): a seeded
permutation of the train samples that have a mask, whose first ``k`` are labeled; every other train sample
(masked or not) is unlabeled, so the two are disjoint and cover the train set. The fraction is of the masked
images.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from raysemi.atomic import write_lines
from raysemi.data.formats import Sample, resolve_inside
from raysemi.data.weak_labels import dataset_boxes, tags_from_masks, write_boxes_file, write_tags_file
from raysemi.errors import DataError
from raysemi.sections import BoxesConfig


@dataclass(frozen=True)
class Split:
    labeled: list[Sample]
    unlabeled: list[Sample]


@dataclass(frozen=True)
class Protocol:
    """A published way to split a dataset: labeled images are drawn from the ``labeled_pool`` split, and the
    rest of ``train_split`` is unlabeled; ``counts`` are the labeled counts papers report (1/16 .. 1/2 or all
    of the pool, rounded up)."""

    train_split: str
    labeled_pool: str
    counts: tuple[int, ...]


# VOC 2012: `classic` draws the labeled images from the 1,464 finely annotated ones (ImageSets/Segmentation/
# train.txt), `blended` from all 10,582 of trainaug (fine + SBD), as in UniMatch and CPS; both leave the rest
# of trainaug unlabeled.
PROTOCOLS: dict[str, dict[str, Protocol]] = {
    "voc": {
        "classic": Protocol("trainaug", "train", (92, 183, 366, 732, 1464)),
        "blended": Protocol("trainaug", "trainaug", (662, 1323, 2646, 5291)),
    },
}


def find_protocol(format_name: str, name: str) -> Protocol:
    """The protocol ``name`` of ``format_name``; a one-line error lists those accepted."""
    known = PROTOCOLS.get(format_name, {})
    if name not in known:
        accepted = ", ".join(f"{f}: {', '.join(p)}" for f, p in PROTOCOLS.items())
        raise DataError(f"protocol {name!r} is not defined for data.format={format_name} (accepted: {accepted})")
    return known[name]


def draw_split(reader, train_split: str, fraction: float | None, count: int | None, seed: int,
               protocol: str | None = None) -> Split:
    """The labeled/unlabeled split of ``reader``'s ``train_split`` (:func:`make_split`), or under a named
    ``protocol``: the labeled images drawn from its pool, the rest of its train split unlabeled."""
    if protocol is None:
        return make_split(split_samples(reader, train_split), fraction, count, seed)
    chosen = find_protocol(reader.name, protocol)
    pool = f"protocol {protocol}'s labeled pool (split {chosen.labeled_pool})"
    labeled = make_split(reader.samples(chosen.labeled_pool), fraction, count, seed, pool).labeled
    return Split(labeled, complement(reader.samples(chosen.train_split), labeled))


def labeled_count(total: int, fraction: float | None = None, count: int | None = None,
                  pool: str = "the train set") -> int:
    """How many of ``total`` images are labeled: ``count`` if given, else ``ceil(total * fraction)``; ``pool``
    names where they are drawn from in the error."""
    if count is not None:
        if not 1 <= count <= total:
            raise DataError(f"label count {count} is not accepted: {pool} has {total} images with masks "
                            f"(1..{total})")
        return count
    if fraction is None or not 0 < fraction <= 1:
        raise DataError(f"label fraction {fraction} is not accepted; use a value in (0, 1], e.g. 1/8 or 0.125")
    return max(1, math.ceil(round(total * fraction, 6)))


def make_split(samples: list[Sample], fraction: float | None = None, count: int | None = None, seed: int = 0,
               pool: str = "the train set") -> Split:
    """Choose the labeled subset among the samples with a mask by a seeded permutation; the rest of
    ``samples`` (including every sample without a mask) is unlabeled, in their order. ``pool`` names
    ``samples`` in errors."""
    if not samples:
        raise DataError("cannot split an empty train set")
    masked = [i for i, s in enumerate(samples) if s.mask is not None]
    if not masked:
        raise DataError(f"none of the {len(samples)} train images has a mask; at least one labeled image is needed")
    k = labeled_count(len(masked), fraction, count, pool)
    order = np.random.default_rng(seed).permutation(len(masked))
    chosen = {masked[i] for i in order[:k]}
    return Split([samples[i] for i in sorted(chosen)], [s for i, s in enumerate(samples) if i not in chosen])


def check_split(split: Split, val: list[Sample], source: str) -> None:
    """No image twice among the labeled or the unlabeled images, and none of either also a val image
    (compared on disk, so a link to a val image counts as that image).

    Raises:
        DataError: one line naming ``source`` (the split file, config key or flag), the image and what to do.
    """
    for name, samples in (("labeled", split.labeled), ("unlabeled", split.unlabeled)):
        seen: set[Path] = set()
        for sample in samples:
            if sample.image in seen:
                raise DataError(f"{source}: {sample.image} is listed twice among the {name} images; each image "
                                "may appear once")
            seen.add(sample.image)
    val_images = {os.path.realpath(s.image) for s in val}
    for name, samples in (("labeled", split.labeled), ("unlabeled", split.unlabeled)):
        leaked = [s.image for s in samples if os.path.realpath(s.image) in val_images]
        if leaked:
            raise DataError(f"{source}: {len(leaked)} {name} image(s) are also val images, e.g. {leaked[0]}; "
                            f"training on them would inflate val mIoU, so take them out of the {name} images")


@dataclass(frozen=True)
class SplitCounts:
    """What a split holds. The label fraction is labeled / images with masks (``labeled + masked_unlabeled``),
    everywhere: ``data.label_fraction``, ``--fraction``, W&B, ``raysemi report`` and sweeps; the images without
    masks are counted beside it, never in it."""

    labeled: int
    masked_unlabeled: int  # train images with a mask, left unlabeled
    unmasked: int  # train (or unlabeled-split) images without a mask
    unlabeled_dir: int  # images of data.unlabeled_dir / --unlabeled-dir

    @property
    def masked(self) -> int:
        return self.labeled + self.masked_unlabeled

    @property
    def label_fraction(self) -> float:
        return self.labeled / self.masked if self.masked else 0.0

    def as_dict(self) -> dict[str, int | float]:
        return {"labeled": self.labeled, "masked": self.masked, "label_fraction": round(self.label_fraction, 6),
                "masked_unlabeled": self.masked_unlabeled, "unmasked": self.unmasked,
                "unlabeled_dir": self.unlabeled_dir}


SPLIT_COUNTS_FILE = "split.json"  # in a run directory, beside labeled.txt and unlabeled.txt: SplitCounts.as_dict()


def read_split_counts(run_dir: Path) -> dict[str, int | float] | None:
    """A run's ``split.json`` (None for a run from before it was written)."""
    path = Path(run_dir) / SPLIT_COUNTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def count_split(split: Split, extra: list[Sample], masked_images: set[Path] = frozenset()) -> SplitCounts:
    """:class:`SplitCounts` of ``split``, whose unlabeled images include the ``extra`` ones (an unlabeled
    folder); an unlabeled image has a mask if its sample carries one or it is in ``masked_images``."""
    extra_images = {s.image for s in extra}
    in_folder = sum(s.image in extra_images for s in split.unlabeled)
    masked = sum(s.image not in extra_images and (s.mask is not None or s.image in masked_images)
                 for s in split.unlabeled)
    return SplitCounts(len(split.labeled), masked, len(split.unlabeled) - masked - in_folder, in_folder)


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
    write_lines(path, lines)


def write_split(reader, split_name: str, fraction: float | None, count: int | None, seed: int, out: Path,
                tags: bool = False, boxes: bool = False, extra_unlabeled: list[Sample] = (),
                protocol: str | None = None, box_rule: BoxesConfig | None = None) -> Split:
    """The split tool: draw the labeled part of ``reader``'s ``split_name`` samples (a fraction or a count of
    those with masks, with ``seed``) and write ``labeled.txt`` and ``unlabeled.txt`` (with
    ``extra_unlabeled`` appended) to ``out``; with ``tags`` / ``boxes`` also each unlabeled image's tags
    (``unlabeled_tags.txt``) or boxes (``unlabeled_boxes.txt``, drawn by ``box_rule``: ``data.boxes``) from its
    mask; a ``protocol`` names the pool and train split instead (:func:`draw_split`)."""
    split = draw_split(reader, split_name, fraction, count, seed, protocol)
    split = Split(split.labeled, split.unlabeled + list(extra_unlabeled))
    write_split_files(reader, split, out, tags, boxes, box_rule)
    return split


def write_split_files(reader, split: Split, out: Path, tags: bool = False, boxes: bool = False,
                      box_rule: BoxesConfig | None = None) -> None:
    unmasked = [s.image for s in split.unlabeled if s.mask is None]
    if (tags or boxes) and unmasked:
        option = "--tags" if tags else "--boxes"
        raise DataError(f"{option} derives weak labels from masks, but {len(unmasked)} unlabeled images have none "
                        f"(e.g. {unmasked[0]}); drop {option} or give those images masks")
    write_split_file(out / "labeled.txt", split.labeled, reader.root)
    write_split_file(out / "unlabeled.txt", split.unlabeled, reader.root)
    if tags:
        write_tags_file(out / "unlabeled_tags.txt", tags_from_masks(reader, split.unlabeled), reader.root)
    if boxes:
        write_boxes_file(out / "unlabeled_boxes.txt", dataset_boxes(reader, split.unlabeled, box_rule), reader.root)


def read_split_file(path: str | Path, root: Path, require_masks: bool = True) -> list[Sample]:
    """Read a split file; every path must exist and stay inside ``root``.

    Raises:
        DataError: naming the file, the line and the path at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    root = root.resolve()
    samples, first_line = [], {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2 or (require_masks and len(parts) != 2):
            expected = "'image mask'" if require_masks else "'image' or 'image mask'"
            raise DataError(f"{path}:{number}: expected {expected}, got {line.strip()!r}")
        image = resolve_inside(root, parts[0], path, number)
        if image in first_line:
            raise DataError(f"{path}:{number}: {parts[0]} is listed twice (lines {first_line[image]} and {number}); "
                            "each image may appear once")
        first_line[image] = number
        mask = resolve_inside(root, parts[1], path, number) if len(parts) == 2 else None
        samples.append(Sample(image, mask))
    if not samples:
        raise DataError(f"{path}: the split file lists no images")
    return samples


def read_published_split(path: str | Path, reader, pool: list[Sample], pool_name: str) -> list[Sample]:
    """A published labeled split file, in any of the forms the reference implementations publish:

    - ``image mask`` paths relative to the dataset root (UniMatch; a leading ``/`` is allowed, as in CPS's
      and DeepLab's VOC lists): read by :func:`read_split_file`;
    - bare ids, one per line (TorchSemiSeg's VOC lists, e.g. ``2007_000032``): the ``pool`` sample whose image
      is ``<id>.<ext>``;
    - flattened Cityscapes pairs (TorchSemiSeg: ``images/<stem>_leftImg8bit.png<TAB>segmentation/<stem>_gtFine.png``,
      the files copied out of their city folders): the ``pool`` sample whose image has that file name, with
      this dataset's own mask for it (``gtFine/<split>/<city>/..._labelIds.png`` or ``_labelTrainIds.png``).

    The form is told from the first line. ``pool`` (``pool_name`` in errors) holds the images ids and
    flattened names are looked up in.

    Raises:
        DataError: naming the file and line of an unknown id or name, a repeated one, or a malformed line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    lines = [(number, line.split()) for number, line in enumerate(path.read_text().splitlines(), start=1)
             if line.strip()]
    if not lines:
        raise DataError(f"{path}: the split file lists no images")
    kind = published_form(lines[0][1], reader.root)
    if kind == "paths":
        return read_split_file(path, reader.root)
    key = (lambda sample: sample.image.stem) if kind == "ids" else (lambda sample: sample.image.name)
    index = {key(sample): sample for sample in pool}
    samples, first_line = [], {}
    for number, parts in lines:
        name = _published_name(parts, kind, path, number)
        if name not in index:
            raise DataError(f"{path}:{number}: {parts[0]} is not an image of {pool_name}; import with the split "
                            "that holds it (--split, e.g. trainaug for VOC, or --protocol)")
        if name in first_line:
            raise DataError(f"{path}:{number}: {parts[0]} is listed twice (lines {first_line[name]} and {number}); "
                            "each image may appear once")
        first_line[name] = number
        samples.append(index[name])
    return samples


def published_form(first: list[str], root: Path) -> str:
    """``ids``, ``flattened`` (TorchSemiSeg's Cityscapes) or ``paths``, from a split file's first line."""
    if len(first) == 1 and "/" not in first[0] and "." not in first[0]:
        return "ids"
    flattened = (len(first) == 2 and first[0].startswith("images/") and first[1].startswith("segmentation/")
                 and not (root / first[0]).is_file())
    return "flattened" if flattened else "paths"


def _published_name(parts: list[str], kind: str, path: Path, number: int) -> str:
    """The id (``ids``) or image file name (``flattened``) of one line; a one-line error for a line of
    another form."""
    if kind == "ids":
        if len(parts) != 1:
            raise DataError(f"{path}:{number}: expected one image id like the first line, got {' '.join(parts)!r}")
        return parts[0]
    image, mask = (parts + ["", ""])[:2] if len(parts) == 2 else ("", "")
    stem = Path(image).name.removesuffix("_leftImg8bit.png")
    if not (image.startswith("images/") and Path(mask).name == f"{stem}_gtFine.png"):
        raise DataError(f"{path}:{number}: expected 'images/<stem>_leftImg8bit.png segmentation/<stem>_gtFine.png' "
                        f"like the first line, got {' '.join(parts)!r}")
    return Path(image).name


def split_samples(reader, split: str) -> list[Sample]:
    """A split ``reader`` (a ``DatasetFormat``) names (``train``, ``val``), or a split file (a path ending in
    ``.txt``) of ``image mask`` lines relative to the dataset root: a protocol's own train or evaluation set."""
    if split.endswith(".txt"):
        return read_split_file(split, reader.root)
    return reader.samples(split)
