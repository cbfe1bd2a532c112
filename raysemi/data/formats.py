"""Dataset readers: where each format keeps its images and masks, and how its mask values map to classes.

A reader lists the :class:`Sample` pairs of a split and decodes masks into train ids (``0..C-1``, 255 =
ignore). Everything downstream (splits, Ray Data streams, evaluation) sees only samples and decoded arrays, so
adding a format means adding one reader here.

Layouts (paths relative to the dataset root):

- ``generic`` (also the synthetic data and ``../shared/data/camvid-*``): ``classes.json`` (``classes``,
  ``palette``, ``ignore_index``), ``<split>/images/<name>.<ext>``, ``<split>/labels/<name>.png``, optional
  ``<split>.txt`` listing the file names in order. An image without ``labels/<name>.png`` has no mask
  (``Sample.mask is None``): in the train split it joins the unlabeled pool; images of a folder named by
  ``data.unlabeled_dir`` join it too (:func:`list_images`).
- ``voc``: PASCAL VOC 2012 + SBD: ``JPEGImages/<id>.jpg``, ``SegmentationClassAug/<id>.png`` (preferred when
  present, the 10,582-image ``train_aug`` set) or ``SegmentationClass/<id>.png``, ids in
  ``ImageSets/Segmentation/<split>.txt`` (``train``, ``val``, ``trainaug``, ...).
- ``cityscapes``: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` (label ids 0..33, mapped to the 19 train ids) or, when
  only that exists, ``..._gtFine_labelTrainIds.png`` (train ids as stored). A mask's encoding follows from its
  name; a name with neither ending is refused, as is a label-id file holding values above 33, or one whose
  values all lie in 0..18 (train ids as well as label ids: a train-id mask without ignore pixels would be
  remapped wrong), unless ``data.mask_encoding`` / ``--mask-encoding`` says which.
- ``cocostuff10k``: ``images/<id>.jpg``, ``annotations/<id>.mat`` (key ``S``, 0 = unlabeled, 1..182) or
  ``annotations/<id>.png``, ids in ``imageLists/<split>.txt``; the 171 used COCO-Stuff ids map to 0..170.
- ``ade20k``: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and ``annotations/.../*.png``
  (root may be the ``ADEChallengeData2016`` folder itself); 0 ("other") becomes ignore, k becomes k-1.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from raysemi.errors import DataError

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One image, its mask (None when the dataset has no mask for it) and, for weakly labeled images, the ids
    of the classes present (image-level tags) or its boxes (``weak_labels.Box`` es); None when it has none."""

    image: Path
    mask: Path | None
    tags: tuple[int, ...] | None = None
    boxes: tuple | None = None


@dataclass(frozen=True)
class ClassInfo:
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.names)


MASK_ENCODINGS = ("auto", "label_ids", "train_ids")


class DatasetFormat:
    """Base reader. Subclasses set ``name`` and implement :meth:`samples`; most keep the default decoding.

    ``mask_encoding`` (``data.mask_encoding``, ``--mask-encoding``) says how a format with two mask encodings
    (``encodings``: Cityscapes) stores its masks; ``auto`` tells them by file name and values, and refuses a
    mask that could be either."""

    name = "base"
    encodings: tuple[str, ...] = ()  # the non-auto mask encodings this format accepts

    def __init__(self, root: str | Path, mask_encoding: str = "auto"):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root not found (data.format={self.name})")
        if mask_encoding != "auto" and mask_encoding not in self.encodings:
            accepted = ", ".join(("auto", *self.encodings))
            raise DataError(f"mask encoding {mask_encoding!r} is not accepted for data.format={self.name} "
                            f"(accepted: {accepted})")
        self.mask_encoding = mask_encoding

    @property
    def spec(self) -> str:
        """``name`` or ``name:encoding``: what :func:`open_format` takes to open this reader again (in a Ray
        Data task)."""
        return self.name if self.mask_encoding == "auto" else f"{self.name}:{self.mask_encoding}"

    @cached_property
    def classes(self) -> ClassInfo:
        raise NotImplementedError

    def samples(self, split: str) -> list[Sample]:
        raise NotImplementedError

    def decode_mask(self, path: Path) -> np.ndarray:
        """``(H, W)`` uint8 train ids with 255 = ignore."""
        return read_png_indices(path)


class GenericFormat(DatasetFormat):
    name = "generic"

    @cached_property
    def classes(self) -> ClassInfo:
        path = self.root / "classes.json"
        if not path.is_file():
            raise DataError(f"{path}: missing; a generic dataset needs classes.json with 'classes' and 'palette'")
        try:
            info = json.loads(path.read_text())
            names = tuple(info["classes"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: expected JSON with a 'classes' list of names ({exc})") from None
        palette = tuple(tuple(c) for c in info.get("palette", default_palette(len(names))))
        return ClassInfo(names, palette, int(info.get("ignore_index", IGNORE_INDEX)))

    def samples(self, split: str) -> list[Sample]:
        images_dir, labels_dir = self.root / split / "images", self.root / split / "labels"
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: split folder not found (accepted splits: {self._splits()})")
        listing = self.root / f"{split}.txt"
        if listing.is_file():
            names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
            images = [images_dir / name for name in names]
        else:
            images = list_images(images_dir)
        return [Sample(image, _existing(labels_dir / f"{image.stem}.png")) for image in images]

    def _splits(self) -> str:
        return ", ".join(sorted(p.name for p in self.root.iterdir() if (p / "images").is_dir())) or "none"


VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


class VOCFormat(DatasetFormat):
    name = "voc"

    def __init__(self, root: str | Path, mask_encoding: str = "auto"):
        super().__init__(root, mask_encoding)
        nested = self.root / "VOCdevkit" / "VOC2012"
        if nested.is_dir():
            self.root = nested

    @cached_property
    def classes(self) -> ClassInfo:
        return ClassInfo(VOC_CLASSES, voc_palette(len(VOC_CLASSES)))

    def samples(self, split: str) -> list[Sample]:
        ids = _read_id_list(self.root / "ImageSets" / "Segmentation" / f"{split}.txt")
        aug = self.root / "SegmentationClassAug"
        mask_dir = aug if aug.is_dir() else self.root / "SegmentationClass"
        return [Sample(self.root / "JPEGImages" / f"{i}.jpg", mask_dir / f"{i}.png") for i in ids]


# Cityscapes label ids (0..33) -> the 19 train ids; everything else is ignored.
CITYSCAPES_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip


def lookup_table(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry uint8 table sending each stored value to its train id (unmapped values to ignore)."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[list(mapping)] = list(mapping.values())
    return table


class CityscapesFormat(DatasetFormat):
    name = "cityscapes"
    encodings = ("label_ids", "train_ids")
    _lookup = lookup_table(CITYSCAPES_ID_TO_TRAIN_ID)

    @cached_property
    def classes(self) -> ClassInfo:
        return ClassInfo(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE)

    def samples(self, split: str) -> list[Sample]:
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: split folder not found (expected leftImg8bit/<split>/<city>/...)")
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        return [Sample(p, self._mask_for(p, split)) for p in images]

    def _mask_for(self, image: Path, split: str) -> Path:
        stem = image.name.removesuffix("_leftImg8bit.png")
        label_ids = self.root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
        train_ids = label_ids.with_name(f"{stem}_gtFine_labelTrainIds.png")
        return train_ids if train_ids.is_file() and not label_ids.is_file() else label_ids

    def decode_mask(self, path: Path) -> np.ndarray:
        """Train ids from a ``*_labelIds.png`` (through the id table) or a ``*_labelTrainIds.png`` (as stored);
        with ``mask_encoding`` ``label_ids`` or ``train_ids``, every mask is read that way whatever its name."""
        encoding = self.mask_encoding if self.mask_encoding != "auto" else self._encoding_from_name(path)
        raw = read_png_indices(path)
        if encoding == "train_ids":
            return raw
        if raw.max(initial=0) > 33:
            raise DataError(f"{path}: values up to {raw.max()} are not Cityscapes label ids 0..33; "
                            f"a mask of train ids must be named *_labelTrainIds.png (or {ENCODING_HINT})")
        if self.mask_encoding == "auto" and raw.max(initial=0) <= MAX_TRAIN_ID:
            raise DataError(f"{path}: values {raw.min()}..{raw.max()} are Cityscapes train ids as well as label "
                            f"ids, so the encoding cannot be told from the file; say which with {ENCODING_HINT}")
        return self._lookup[raw]

    @staticmethod
    def _encoding_from_name(path: Path) -> str:
        if path.name.endswith("_labelTrainIds.png"):
            return "train_ids"
        if path.name.endswith("_labelIds.png"):
            return "label_ids"
        raise DataError(f"{path}: cannot tell the mask's encoding from its name; Cityscapes masks must end in "
                        "_labelIds.png (label ids 0..33) or _labelTrainIds.png (train ids 0..18, 255 = ignore), "
                        f"or say which with {ENCODING_HINT}")


MAX_TRAIN_ID = len(CITYSCAPES_CLASSES) - 1  # 18
ENCODING_HINT = "--mask-encoding label_ids|train_ids (data.mask_encoding)"


# COCO-Stuff ids (1-based, 182) that no annotation uses; the remaining 171 map to 0..170 in order.
COCOSTUFF_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)


class CocoStuff10kFormat(DatasetFormat):
    name = "cocostuff10k"
    _used = [i for i in range(1, 183) if i not in COCOSTUFF_UNUSED_IDS]
    _lookup = lookup_table({stuff_id: train_id for train_id, stuff_id in enumerate(_used)})

    @cached_property
    def classes(self) -> ClassInfo:
        names = tuple(f"cocostuff_{i}" for i in self._used)
        return ClassInfo(names, default_palette(len(names)))

    def samples(self, split: str) -> list[Sample]:
        ids = _read_id_list(self.root / "imageLists" / f"{split}.txt")
        return [Sample(self.root / "images" / f"{i}.jpg", self._mask_for(i)) for i in ids]

    def _mask_for(self, image_id: str) -> Path:
        png = self.root / "annotations" / f"{image_id}.png"
        return png if png.is_file() else self.root / "annotations" / f"{image_id}.mat"

    def decode_mask(self, path: Path) -> np.ndarray:
        if path.suffix == ".mat":
            from scipy.io import loadmat

            try:
                raw = np.asarray(loadmat(path)["S"])
            except (OSError, ValueError, KeyError) as exc:
                raise DataError(f"{path}: cannot read COCO-Stuff annotation 'S' ({exc})") from None
        else:
            raw = read_png_indices(path)
        return self._lookup[np.clip(raw, 0, 255).astype(np.uint8)]


class ADE20kFormat(DatasetFormat):
    name = "ade20k"
    _split_dirs = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}

    def __init__(self, root: str | Path, mask_encoding: str = "auto"):
        super().__init__(root, mask_encoding)
        nested = self.root / "ADEChallengeData2016"
        if nested.is_dir():
            self.root = nested

    @cached_property
    def classes(self) -> ClassInfo:
        names = tuple(f"ade_{i}" for i in range(1, 151))
        return ClassInfo(names, default_palette(len(names)))

    def samples(self, split: str) -> list[Sample]:
        folder = self._split_dirs.get(split)
        if folder is None:
            raise DataError(f"ade20k split {split!r} is not accepted; choose one of train, val")
        images = sorted((self.root / "images" / folder).glob("*.jpg"))
        if not images:
            raise DataError(f"{self.root / 'images' / folder}: no .jpg images found")
        return [Sample(p, self.root / "annotations" / folder / f"{p.stem}.png") for p in images]

    def decode_mask(self, path: Path) -> np.ndarray:
        raw = read_png_indices(path).astype(np.int16)
        return np.where(raw == 0, IGNORE_INDEX, raw - 1).astype(np.uint8)


# The one list of data.format values; the bundled synthetic dataset is written in the generic layout.
FORMATS: dict[str, type[DatasetFormat]] = {
    "synthetic": GenericFormat,
    **{cls.name: cls for cls in (GenericFormat, VOCFormat, CityscapesFormat, CocoStuff10kFormat, ADE20kFormat)},
}


def open_format(name: str, root: str | Path, mask_encoding: str = "auto") -> DatasetFormat:
    """The reader for ``name``; ``name`` may carry its mask encoding as ``name:encoding`` (a reader's ``spec``)."""
    name, _, encoded = name.partition(":")
    if name not in FORMATS:
        raise DataError(f"data.format={name!r} is not accepted; choose one of {', '.join(FORMATS)}")
    return FORMATS[name](root, encoded or mask_encoding)


def read_image(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB; a missing or corrupt file is a one-line :class:`DataError`."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def read_png_indices(path: Path) -> np.ndarray:
    """``(H, W)`` uint8 of the stored values (palette indices for palette PNGs, no colour conversion)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"{path}: a mask must be a single-channel PNG, got mode {image.mode}")
            values = np.array(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable mask ({type(exc).__name__}: {exc})") from None
    if values.dtype != np.uint8:
        if values.max(initial=0) > 255:
            raise DataError(f"{path}: mask values up to {values.max()} do not fit label ids 0..255")
        values = values.astype(np.uint8)
    return values


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix), sorted by name."""
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def resolve_inside(root: Path, relative: str, source: Path, number: int) -> Path:
    """``root / relative`` for line ``number`` of the list file ``source``, with ``..`` applied to the text.

    Links inside the root are not followed: a dataset assembled from linked folders or files (a shared
    read-only copy, a merged train+test tree) is inside its root wherever the links point. What decides is the
    path as written: one that climbs out with ``..``, or an absolute path outside the root, is refused. An
    absolute path inside the root is accepted as it is, and a leading ``/`` on a root-relative path (as in
    DeepLab's ``train_aug.txt``: ``/JPEGImages/...``) is read relative to the root.

    Raises:
        DataError: the path leaves ``root`` or is not a file.
    """
    written = Path(relative)
    if written.is_absolute() and absolute_inside(written, root) is not None:
        path = absolute_inside(written, root)
    else:
        path = normalised(root / relative.lstrip("/"))
        if written.is_absolute() and not path.is_file():  # not a root-relative line with a leading slash
            path = normalised(written)
    if not path.is_relative_to(root):
        raise DataError(f"{source}:{number}: {relative} resolves outside the dataset root {root}")
    if not path.is_file():
        raise DataError(f"{source}:{number}: {relative} not found under {root}")
    return path


def absolute_inside(path: Path, root: Path) -> Path | None:
    """An absolute ``path`` as a path under ``root`` (itself resolved): as written, or through the links of its
    spelling (``/data/link_to_root/x.png`` when ``root`` is where ``link_to_root`` points); None if outside."""
    written = normalised(path)
    if written.is_relative_to(root):
        return written
    real = Path(os.path.realpath(written))
    return root / real.relative_to(root) if real.is_relative_to(root) else None


def normalised(path: Path) -> Path:
    """``path`` made absolute with ``.`` and ``..`` applied to its text; links are left as they are."""
    return Path(os.path.normpath(os.path.abspath(path)))


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _read_id_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def voc_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map (bit-interleaved class index)."""
    colours = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    return voc_palette(n)
