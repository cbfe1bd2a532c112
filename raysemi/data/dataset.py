"""From a ``data`` config to samples: the dataset root, its reader, its classes, and the labeled/unlabeled split.

Also the one place that loads a sample and checks it (image readable, mask the image's size, label values in
``0..C-1`` or ignore), used alike by the Ray Data pipeline, evaluation, the preflight before training and
``raysemi data check``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysemi.data.formats import (
    ClassInfo,
    DatasetFormat,
    Sample,
    absolute_inside,
    list_images,
    normalised,
    open_format,
    read_image,
    voc_palette,
)
from raysemi.data.splits import (
    Split,
    SplitCounts,
    check_split,
    complement,
    count_split,
    draw_split,
    find_protocol,
    read_split_file,
    split_samples,
)
from raysemi.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from raysemi.data.synthetic import ensure_synthetic
from raysemi.data.weak_labels import read_boxes_file, read_tags_file
from raysemi.errors import DataError
from raysemi.progress import progress
from raysemi.sections import DataConfig


@dataclass
class DatasetSource:
    reader: DatasetFormat
    train: list[Sample]
    val: list[Sample]
    split: Split
    counts: SplitCounts  # labeled / masked is the label fraction; unmasked and unlabeled_dir images beside it

    @property
    def classes(self) -> ClassInfo:
        return self.reader.classes

    @property
    def root(self) -> Path:
        return self.reader.root

    def samples_for(self, source: str) -> list[Sample]:
        """The samples a stream draws from: ``labeled``, ``labeled_half`` (its first half) or ``unlabeled``."""
        if source == "unlabeled":
            return self.split.unlabeled
        if source == "labeled_half":
            return self.split.labeled[: max(1, (len(self.split.labeled) + 1) // 2)]
        return self.split.labeled


def dataset_root(cfg: DataConfig) -> Path:
    """The dataset root; for ``synthetic`` data this generates (once, cached) the configured dataset."""
    if cfg.format == "synthetic":
        s = cfg.synthetic
        cache = Path(cfg.root).expanduser() if cfg.root else None
        return ensure_synthetic(s.num_train, s.num_val, s.height, s.width, s.seed, cache)
    if not cfg.root:
        raise DataError(f"data.root is required for data.format={cfg.format} (the folder holding the dataset)")
    return Path(cfg.root).expanduser()


def dataset_classes(cfg: DataConfig) -> ClassInfo:
    """The classes of the configured dataset (its class list only: no split is read), for a method that needs
    their names when it builds its models (self-correction's stuff classes, :mod:`raysemi.data.weak_labels`).
    The synthetic classes are fixed: nothing is generated to name them."""
    if cfg.format == "synthetic":
        return ClassInfo(SYNTHETIC_CLASSES, voc_palette(len(SYNTHETIC_CLASSES)))
    return open_format(cfg.format, dataset_root(cfg)).classes


def open_dataset(cfg: DataConfig) -> DatasetSource:
    """Resolve the root, list train/val samples and choose the labeled split (file, count or fraction).

    Labeled images are drawn from the train images that have masks; train images without one, and the images
    of ``data.unlabeled_dir``, are unlabeled (unless ``data.unlabeled_split`` lists the unlabeled images).
    """
    reader = open_format(cfg.format, dataset_root(cfg), cfg.mask_encoding)
    train_split = find_protocol(reader.name, cfg.protocol).train_split if cfg.protocol else cfg.train_split
    train = split_samples(reader, train_split)
    val = split_samples(reader, cfg.val_split)
    extra = extra_unlabeled(reader, cfg.unlabeled_dir)
    if cfg.labeled_split:
        labeled = read_split_file(cfg.labeled_split, reader.root)
        check_mask_sample(reader, labeled, cfg.labeled_split)
        unlabeled = (
            read_split_file(cfg.unlabeled_split, reader.root, require_masks=False)
            if cfg.unlabeled_split
            else complement(train, labeled) + extra
        )
        split, source = Split(labeled, unlabeled), f"data.labeled_split={cfg.labeled_split}"
    else:
        split = draw_split(reader, train_split, cfg.label_fraction, cfg.label_count, cfg.split_seed, cfg.protocol)
        split, source = Split(split.labeled, split.unlabeled + extra), f"the split of data.train_split={train_split}"
    check_split(split, val, source)
    counts = count_split(split, extra, {s.image for s in train if s.mask is not None})
    # Unlabeled samples never carry a mask path: nothing downstream can read their masks.
    tags = _unlabeled_weak_labels(cfg.unlabeled_tags, read_tags_file, reader, split.unlabeled)
    boxes = _unlabeled_weak_labels(cfg.unlabeled_boxes, read_boxes_file, reader, split.unlabeled)
    split = Split(
        split.labeled,
        [Sample(s.image, None, tags.get(s.image), _tuple_or_none(boxes.get(s.image))) for s in split.unlabeled],
    )
    if not split.labeled:
        raise DataError(f"the labeled split is empty ({cfg.labeled_split or 'data.label_fraction'})")
    return DatasetSource(reader, train, val, split, counts)


def extra_unlabeled(reader: DatasetFormat, folder: str | Path | None, key: str = "data.unlabeled_dir") -> list[Sample]:
    """The images of ``folder`` (inside the dataset root: absolute, or relative to it) as mask-less samples;
    inside, so that split files can name them relative to the root as they name every other image. The folder
    and its files may be links (the path as written decides, see :func:`~raysemi.data.formats.resolve_inside`).
    Errors name ``key``: the config key, or the flag (``--unlabeled-dir``) of a command."""
    if not folder:
        return []
    path = Path(folder).expanduser()
    path = absolute_inside(path, reader.root) if path.is_absolute() else normalised(reader.root / path)
    if path is None or not path.is_relative_to(reader.root):  # links inside the root stay inside
        raise DataError(f"{key}={folder}: the folder must be inside the dataset root {reader.root} "
                        "(move or link it there)")
    if not path.is_dir():
        raise DataError(f"{key}={folder}: {path} is not a folder")
    images = list_images(path)
    if not images:
        raise DataError(f"{key}={folder}: the folder holds no images (accepted: .png, .jpg, .jpeg, .bmp, .tif)")
    return [Sample(image, None) for image in images]


def _unlabeled_weak_labels(path: str | None, read, reader: DatasetFormat, unlabeled: list[Sample]) -> dict:
    """``{image: weak label}`` from a tags or boxes file covering every unlabeled image (empty when unset)."""
    if not path:
        return {}
    labels = read(path, reader.root, reader.classes.num_classes)
    missing = [s.image for s in unlabeled if s.image not in labels]
    if missing:
        raise DataError(f"{path}: nothing for {len(missing)} unlabeled images, e.g. {missing[0]}; "
                        "the file must list every unlabeled image")
    return labels


def _tuple_or_none(items: list | None) -> tuple | None:
    return None if items is None else tuple(items)


def load_sample(reader: DatasetFormat, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
    """Read and check one sample → ``(H, W, 3)`` uint8 image and ``(H, W)`` uint8 train ids (or None).

    Raises:
        DataError: naming the file: unreadable, mask size differs from the image, or label values outside
            ``0..C-1`` and the ignore index.
    """
    image = read_image(sample.image)
    if sample.mask is None:
        return image, None
    if not sample.mask.is_file():
        raise DataError(f"{sample.mask}: mask not found (image {sample.image.name})")
    mask = reader.decode_mask(sample.mask)
    if mask.shape != image.shape[:2]:
        raise DataError(f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{image.shape[1]}x{image.shape[0]} (width x height)")
    check_label_values(mask, reader.classes, sample.mask)
    return image, mask


def check_mask_sample(reader: DatasetFormat, samples: list[Sample], source: str | Path, size: int = 32) -> None:
    """Decode up to ``size`` evenly spaced masks of an imported split (``source``) and check them against the
    format's label range: a split whose masks decode wrong is refused before anything trains on it.

    Raises:
        DataError: ``"<source>: <mask file>: <problem>"`` for the first mask that fails.
    """
    masked = [s for s in samples if s.mask is not None]
    picks = np.unique(np.linspace(0, len(masked) - 1, num=min(size, len(masked))).round().astype(int))
    for index in picks if masked else ():
        try:
            load_sample(reader, masked[index])
        except DataError as exc:
            raise DataError(f"{source}: {exc}") from None


def check_label_values(mask: np.ndarray, classes: ClassInfo, source: Path) -> None:
    values = np.unique(mask)
    bad = values[(values >= classes.num_classes) & (values != classes.ignore_index)]
    if bad.size:
        raise DataError(f"{source}: label values {bad.tolist()} are outside 0..{classes.num_classes - 1} "
                        f"and the ignore value {classes.ignore_index}")


def find_problems(reader: DatasetFormat, samples: list[Sample], decode: bool = True, threads: int = 4) -> list[str]:
    """Every problem in ``samples`` as one line each (empty when all is well)."""

    def check(sample: Sample) -> str | None:
        try:
            if decode:
                load_sample(reader, sample)
            else:
                for path in (sample.image, sample.mask):
                    if path is not None and not path.is_file():
                        raise DataError(f"{path}: not found")
        except DataError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(threads) as pool:
        return [p for p in progress(pool.map(check, samples), "checking", total=len(samples)) if p]


def preflight(source: DatasetSource, cfg: DataConfig) -> None:
    """Fail before a run directory exists: check the labeled and val samples, and unlabeled image paths."""
    decode = cfg.verify == "full"
    unmasked = [s.image for s in source.val if s.mask is None]
    if unmasked:
        raise DataError(f"{unmasked[0]}: val image without a mask ({len(unmasked)} in data.val_split="
                        f"{cfg.val_split}); every val image needs one")
    problems = find_problems(source.reader, source.split.labeled + source.val, decode=decode)
    problems += find_problems(source.reader, source.split.unlabeled, decode=False)
    if problems:
        more = f" (and {len(problems) - 1} more; run `raysemi data check`)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)
