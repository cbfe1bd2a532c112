"""Weak labels derived from full masks: image-level tags, per-class boxes, base/novel class partitions.

Deriving them from masks lets any fully labeled dataset serve every method; real weak annotations (VOC's
box XML, for instance) are converted to the same forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from raysemi.atomic import write_lines
from raysemi.data.formats import IGNORE_INDEX, resolve_inside
from raysemi.errors import DataError


@dataclass(frozen=True)
class Box:
    """An axis-aligned box of one class, pixel coordinates with exclusive ends: ``mask[y0:y1, x0:x1]``."""

    label: int
    y0: int
    x0: int
    y1: int
    x1: int

    def to_text(self) -> str:
        """``"label,y0,x0,y1,x1"``: a box in boxes files and stream records."""
        return f"{self.label},{self.y0},{self.x0},{self.y1},{self.x1}"

    @classmethod
    def from_text(cls, text: str) -> Box:
        """Inverse of :meth:`to_text`; ``ValueError`` unless five integers."""
        label, y0, x0, y1, x1 = (int(v) for v in text.split(","))
        return cls(label, y0, x0, y1, x1)


def image_tags(mask: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``(H, W)`` class ids → ``(num_classes,)`` float32 multi-hot of the classes present (ignore excluded)."""
    present = np.unique(mask)
    present = present[(present != ignore_index) & (present < num_classes)]
    tags = np.zeros(num_classes, np.float32)
    tags[present] = 1.0
    return tags


def class_boxes(
    mask: np.ndarray, num_classes: int, skip_classes: tuple[int, ...] = (0,), min_pixels: int = 1
) -> list[Box]:
    """One box per 8-connected component of each class (``skip_classes``, e.g. background, excluded)."""
    boxes = []
    structure = np.ones((3, 3), bool)
    for label in range(num_classes):
        if label in skip_classes:
            continue
        components, count = ndimage.label(mask == label, structure=structure)
        if count == 0:
            continue
        sizes = ndimage.sum_labels(np.ones_like(mask), components, index=np.arange(1, count + 1))
        for index, region in enumerate(ndimage.find_objects(components)):
            if region is not None and sizes[index] >= min_pixels:
                boxes.append(Box(label, region[0].start, region[1].start, region[0].stop, region[1].stop))
    return boxes


def rasterize_boxes(boxes: list[Box], num_classes: int, height: int, width: int) -> torch.Tensor:
    """Boxes → ``(num_classes + 1, H, W)`` float 0/1 raster.

    Channel ``c < num_classes`` is 1 inside every box of class ``c``; the last channel (background) is 1
    outside all boxes.
    """
    raster = torch.zeros(num_classes + 1, height, width)
    for box in boxes:
        raster[box.label, box.y0 : box.y1, box.x0 : box.x1] = 1.0
    raster[num_classes] = (raster[:num_classes].sum(0) == 0).float()
    return raster


def partition_classes(
    num_classes: int,
    novel: list[int] | None = None,
    novel_fraction: float = 0.25,
    seed: int = 0,
    keep_base: tuple[int, ...] = (0,),
) -> tuple[list[int], list[int]]:
    """Split class ids into (base, novel).

    ``novel`` lists the novel classes explicitly; otherwise ``round(novel_fraction * eligible)`` classes are
    drawn with ``seed`` from those not in ``keep_base`` (background stays a base class by default).
    """
    if novel is not None:
        bad = [c for c in novel if not 0 <= c < num_classes]
        if bad:
            raise DataError(f"novel classes {bad} are not class ids 0..{num_classes - 1}")
        chosen = sorted(set(novel))
    else:
        eligible = [c for c in range(num_classes) if c not in keep_base]
        k = max(1, round(novel_fraction * len(eligible)))
        chosen = sorted(int(c) for c in np.random.default_rng(seed).choice(eligible, size=k, replace=False))
    base = [c for c in range(num_classes) if c not in chosen]
    return base, chosen


@dataclass(frozen=True)
class ClassSplit:
    """Base/novel classes of a weak-shot run: ``novel`` ids, or ``novel_fraction`` of the classes not in
    ``keep_base`` (e.g. VOC's background 0) drawn with ``seed`` (see :func:`partition_classes`)."""

    novel: tuple[int, ...] | None = None
    novel_fraction: float = 0.25
    seed: int = 0
    keep_base: tuple[int, ...] = ()

    def resolve(self, num_classes: int) -> tuple[list[int], list[int]]:
        """``(base, novel)`` class ids."""
        novel = None if self.novel is None else list(self.novel)
        return partition_classes(num_classes, novel, self.novel_fraction, self.seed, self.keep_base)


def hide_novel(mask: np.ndarray, novel: list[int], unknown: int = IGNORE_INDEX) -> np.ndarray:
    """Copy of ``mask`` with novel-class pixels set to ``unknown`` (no mask supervision for them)."""
    hidden = mask.copy()
    hidden[np.isin(mask, novel)] = unknown
    return hidden


def tags_from_masks(reader, samples: list) -> dict[Path, tuple[int, ...]]:
    """``{image path: class ids present in its mask}`` for samples with masks (``reader``: a dataset format)."""
    tags = {}
    for sample in samples:
        mask = reader.decode_mask(sample.mask)
        present = np.nonzero(image_tags(mask, reader.classes.num_classes, reader.classes.ignore_index))[0]
        tags[sample.image] = tuple(int(c) for c in present)
    return tags


def write_tags_file(path: Path, tags: dict[Path, tuple[int, ...]], root: Path) -> None:
    """One ``image_path class_id class_id ...`` line per image, paths relative to ``root``."""
    lines = [" ".join([image.relative_to(root).as_posix(), *map(str, ids)]) for image, ids in tags.items()]
    write_lines(path, lines)


def read_tags_file(path: str | Path, root: Path, num_classes: int) -> dict[Path, tuple[int, ...]]:
    """Read an image-level tags file (see :func:`write_tags_file`).

    Raises:
        DataError: naming the file and line of a path outside ``root``, a missing image or a bad class id.
    """

    def parse(cells: list[str], number: int) -> tuple[int, ...]:
        accepted = f"tags must be class ids 0..{num_classes - 1}"
        try:
            ids = tuple(int(t) for t in cells)
        except ValueError:
            raise DataError(f"{path}:{number}: {accepted}, got {' '.join(cells)!r}") from None
        if any(not 0 <= t < num_classes for t in ids):
            raise DataError(f"{path}:{number}: {accepted}, got {list(ids)}")
        return ids

    return read_image_lines(path, root, "tags", parse)


def boxes_from_masks(reader, samples: list) -> dict[Path, list[Box]]:
    """``{image path: boxes of its mask}`` (see :func:`mask_boxes`) for samples with masks."""
    return {s.image: mask_boxes(reader.decode_mask(s.mask), reader.classes) for s in samples}


def boxless_classes(classes) -> tuple[int, ...]:
    """The classes that never get boxes: those named ``background`` (as in box annotations, VOC's XML too)."""
    return tuple(i for i, name in enumerate(classes.names) if name.lower() == "background")


def mask_boxes(mask: np.ndarray, classes) -> list[Box]:
    """One box per connected component of each class of ``mask``; :func:`boxless_classes` get none (their
    raster channel stays empty, and the raster's last channel marks "outside every box")."""
    return class_boxes(mask, classes.num_classes, boxless_classes(classes))


def mask_box_raster(mask: np.ndarray, classes) -> torch.Tensor:
    """The ``(C + 1, H, W)`` raster of :func:`mask_boxes` over the whole image (for box-conditioned evaluation)."""
    return rasterize_boxes(mask_boxes(mask, classes), classes.num_classes, *mask.shape)


def dataset_boxes(reader, samples: list) -> dict[Path, list[Box]]:
    """Real box annotations where the dataset has them (VOC's ``Annotations/<id>.xml``), else boxes from masks."""
    annotations = reader.root / "Annotations"
    if reader.name == "voc" and annotations.is_dir():
        names = reader.classes.names
        return {s.image: voc_annotation_boxes(annotations / f"{s.image.stem}.xml", names) for s in samples}
    return boxes_from_masks(reader, samples)


def voc_annotation_boxes(xml_path: Path, class_names: tuple[str, ...]) -> list[Box]:
    """Boxes of a PASCAL VOC ``Annotations/<id>.xml`` (1-based inclusive pixel corners) as :class:`Box` es.

    Raises:
        DataError: naming the file for unreadable XML or a class name not in ``class_names``.
    """
    from xml.etree import ElementTree

    try:
        root = ElementTree.parse(xml_path).getroot()
    except (ElementTree.ParseError, OSError) as exc:
        raise DataError(f"{xml_path}: not a readable VOC annotation ({exc})") from None
    boxes = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_names:
            raise DataError(f"{xml_path}: object class {name!r} is not one of {', '.join(class_names)}")
        corner = {k: int(float(obj.findtext(f"bndbox/{k}"))) for k in ("xmin", "ymin", "xmax", "ymax")}
        label = class_names.index(name)
        boxes.append(Box(label, corner["ymin"] - 1, corner["xmin"] - 1, corner["ymax"], corner["xmax"]))
    return boxes


def write_boxes_file(path: Path, boxes: dict[Path, list[Box]], root: Path) -> None:
    """One ``image_path label,y0,x0,y1,x1 ...`` line per image (exclusive ends), paths relative to ``root``."""
    lines = []
    for image, image_boxes in boxes.items():
        lines.append(" ".join([image.relative_to(root).as_posix(), *(b.to_text() for b in image_boxes)]))
    write_lines(path, lines)


def read_boxes_file(path: str | Path, root: Path, num_classes: int) -> dict[Path, list[Box]]:
    """Read a boxes file (see :func:`write_boxes_file`).

    Raises:
        DataError: naming the file and line of a path outside ``root``, a missing image or a malformed box.
    """
    return read_image_lines(
        path, root, "boxes", lambda cells, number: [_parse_box(c, num_classes, Path(path), number) for c in cells]
    )


def read_image_lines(path: str | Path, root: Path, kind: str, parse) -> dict:
    """``{image path: parse(cells, line number)}`` for each non-blank ``image_path cell ...`` line of a weak-label
    file; ``kind`` (``tags`` or ``boxes``) names the ``data split`` flag that writes one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {kind} file not found (write one with `raysemi data split ... --{kind}`)")
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if parts:
            entries[resolve_inside(root.resolve(), parts[0], path, number)] = parse(parts[1:], number)
    return entries


def _parse_box(cell: str, num_classes: int, path: Path, number: int) -> Box:
    try:
        box = Box.from_text(cell)
    except ValueError:
        raise DataError(f"{path}:{number}: a box is label,y0,x0,y1,x1 (integers), got {cell!r}") from None
    if not 0 <= box.label < num_classes or box.y1 <= box.y0 or box.x1 <= box.x0 or min(box.y0, box.x0) < 0:
        raise DataError(f"{path}:{number}: box {cell!r} needs a class id in 0..{num_classes - 1}, "
                        "0 <= y0 < y1 and 0 <= x0 < x1")
    return box

