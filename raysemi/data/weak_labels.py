"""Weak labels derived from full masks: image-level tags, object boxes, base/novel class partitions.

Deriving them from masks lets any fully labeled dataset serve every method; real weak annotations (VOC's
box XML, for instance) are converted to the same forms. Boxes are drawn as an annotator would
(:func:`mask_boxes`, docs/data.md): one per object of a thing class, fragments of one object merged, specks
dropped, none for stuff (road, sky, VOC's background).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from raysemi.atomic import write_lines
from raysemi.data.formats import CITYSCAPES_CLASSES, IGNORE_INDEX, resolve_inside
from raysemi.errors import DataError
from raysemi.sections import BoxesConfig


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


def object_boxes(mask: np.ndarray, things: tuple[int, ...], min_pixels: int = 1, merge_radius: int = 0) -> list[Box]:
    """One box per object of each class in ``things``: what an annotator draws on the mask's image.

    An object is a group of 8-connected components of one class that touch once each is grown by
    ``merge_radius`` pixels (a 3×3 dilation repeated ``merge_radius`` times): fragments of one car split by a
    pole in front of it, with a gap of at most ``2·merge_radius`` pixels, get one box. The box encloses the
    object's own pixels (not the grown ones). Objects with fewer than ``min_pixels`` pixels get no box (an
    annotator does not box a speck). Classes not in ``things`` (stuff: road, sky, background) get none.

    Args:
        mask: ``(H, W)`` class ids (ignore and classes outside ``things`` are never boxed).
        things: the classes that get boxes.
        min_pixels: the smallest object boxed.
        merge_radius: the growth in pixels before fragments are grouped (0: plain 8-connected components).

    Returns:
        Boxes ordered by class, then row-major by where each grown object starts.
    """
    boxes = []
    structure = np.ones((3, 3), bool)
    for label in things:
        pixels = mask == label
        if not pixels.any():
            continue
        grown = ndimage.binary_dilation(pixels, structure, iterations=merge_radius) if merge_radius else pixels
        objects, count = ndimage.label(grown, structure=structure)
        objects = np.where(pixels, objects, 0)  # each object's own pixels
        sizes = ndimage.sum_labels(pixels, objects, index=np.arange(1, count + 1))
        for index, region in enumerate(ndimage.find_objects(objects, max_label=count)):
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


def boxes_from_masks(reader, samples: list, rule: BoxesConfig | None = None) -> dict[Path, list[Box]]:
    """``{image path: boxes of its mask}`` (see :func:`mask_boxes`) for samples with masks."""
    return {s.image: mask_boxes(reader.decode_mask(s.mask), reader.classes, rule) for s in samples}


# The object ("thing") classes of datasets whose class list says nothing about it, by their class names. CamVid
# follows Cityscapes (the same street scenes): its humans and vehicles are things; Pole and SignSymbol are stuff,
# as Cityscapes' pole, traffic light and traffic sign are (no instance annotations).
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")
DATASET_THINGS = {
    CITYSCAPES_CLASSES: ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
    CAMVID_CLASSES: ("Car", "Pedestrian", "Bicyclist"),
}
COCO_THING_IDS = 91  # COCO-Stuff ids 1..91 are COCO's (80 used) object classes, 92..182 stuff


def default_things(names: tuple[str, ...]) -> tuple[int, ...]:
    """The dataset's thing classes: :data:`DATASET_THINGS` for Cityscapes and CamVid, COCO's objects for
    COCO-Stuff (``cocostuff_<id>``, id <= 91), else every class not named ``background`` (VOC's 20 objects,
    the synthetic shapes)."""
    names = tuple(names)
    if names in DATASET_THINGS:
        return tuple(names.index(name) for name in DATASET_THINGS[names])
    if names and all(name.startswith("cocostuff_") for name in names):
        return tuple(i for i, name in enumerate(names) if int(name.removeprefix("cocostuff_")) <= COCO_THING_IDS)
    return tuple(i for i, name in enumerate(names) if name.lower() != "background")


def thing_classes(classes, rule: BoxesConfig | None = None) -> tuple[int, ...]:
    """The classes that get boxes: ``data.boxes.things`` when set, else :func:`default_things` of ``classes``.

    Raises:
        DataError: naming ``data.boxes.things`` when it lists an id outside the dataset's classes.
    """
    if rule is None or rule.things is None:
        return default_things(classes.names)
    bad = [c for c in rule.things if not 0 <= c < classes.num_classes]
    if bad:
        raise DataError(f"data.boxes.things={rule.things}: {bad} are not class ids 0..{classes.num_classes - 1}")
    return tuple(sorted(set(rule.things)))


def stuff_classes(classes, rule: BoxesConfig | None = None) -> tuple[int, ...]:
    """The classes that never get boxes (every class not in :func:`thing_classes`)."""
    things = thing_classes(classes, rule)
    return tuple(c for c in range(classes.num_classes) if c not in things)


def mask_boxes(mask: np.ndarray, classes, rule: BoxesConfig | None = None) -> list[Box]:
    """The boxes an annotator draws on ``mask``'s image (:func:`object_boxes`) under ``rule`` (``data.boxes``;
    None: its defaults): thing classes only, fragments merged, small objects dropped, the size and radius
    scaled to the mask's size."""
    rule = rule or BoxesConfig()
    height, width = mask.shape
    min_pixels = max(1, math.ceil(rule.min_share * height * width))
    radius = round(rule.merge_radius * min(height, width))
    return object_boxes(mask, thing_classes(classes, rule), min_pixels, radius)


def mask_box_raster(mask: np.ndarray, classes, rule: BoxesConfig | None = None) -> torch.Tensor:
    """The ``(C + 1, H, W)`` raster of :func:`mask_boxes` over the whole image (for box-conditioned evaluation)."""
    return rasterize_boxes(mask_boxes(mask, classes, rule), classes.num_classes, *mask.shape)


def fill_box_raster(raster: torch.Tensor, stuff: tuple[int, ...], ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Box-filled masks: what the boxes alone say about each pixel, as a supervised target.

    A pixel inside the boxes of exactly one class takes that class (the box's background included: the
    annotator's box is the whole label). Inside boxes of two or more classes it is ignored: the raster does not
    say which object is in front. Outside every box it takes the stuff class when the dataset has exactly one
    (VOC's background), else it is ignored (which of road, sky, ... is not in the boxes). Padding (no channel
    set) is ignored.

    Args:
        raster: ``(N, C + 1, H, W)`` box rasters (:func:`rasterize_boxes`, channel C = outside every box).
        stuff: the classes without boxes (:func:`stuff_classes`).

    Returns:
        ``(N, H, W)`` int64 class ids, ``ignore_index`` where the boxes do not decide.
    """
    covered = raster[:, :-1] > 0
    count = covered.sum(1)
    filled = torch.where(count == 1, covered.int().argmax(1), torch.full_like(count, ignore_index)).long()
    if len(stuff) == 1:
        filled[raster[:, -1] > 0] = stuff[0]
    return filled


@dataclass(frozen=True)
class BoxSummary:
    """What a set of boxes tells about their images' labelled pixels (``data split --boxes`` prints it)."""

    images: int
    boxes: int
    fewest: int  # boxes on one image
    most: int
    labelled_pixels: int
    fixed_pixels: int  # labelled pixels whose class the box raster alone leaves no choice for

    @property
    def fixed_share(self) -> float:
        return self.fixed_pixels / max(self.labelled_pixels, 1)


def box_fixed_pixels(mask: np.ndarray, boxes: list[Box], num_classes: int, stuff: tuple[int, ...],
                     ignore_index: int = IGNORE_INDEX) -> tuple[int, int]:
    """``(fixed, labelled)`` pixel counts of one image: a labelled pixel is fixed when the classes its boxes
    allow (the classes of the boxes covering it, plus every stuff class, which may lie anywhere; the
    ancillary model's box constraint) are exactly its own class."""
    allowed = rasterize_boxes(boxes, num_classes, *mask.shape)[:num_classes].bool()
    allowed[list(stuff)] = True
    labelled = (mask != ignore_index) & (mask < num_classes)
    own = torch.from_numpy(np.where(labelled, mask, 0).astype(np.int64))
    fixed = (allowed.sum(0) == 1) & allowed.gather(0, own[None])[0] & torch.from_numpy(labelled)
    return int(fixed.sum()), int(labelled.sum())


def summarize_boxes(reader, samples: list, boxes: dict[Path, list[Box]], rule: BoxesConfig | None = None) -> BoxSummary:
    """:class:`BoxSummary` of ``boxes`` (``{image: boxes}``) over ``samples``' masks."""
    stuff = stuff_classes(reader.classes, rule)
    counts, fixed, labelled = [], 0, 0
    for sample in samples:
        image_boxes = boxes[sample.image]
        counts.append(len(image_boxes))
        mask = reader.decode_mask(sample.mask)
        f, n = box_fixed_pixels(mask, image_boxes, reader.classes.num_classes, stuff, reader.classes.ignore_index)
        fixed, labelled = fixed + f, labelled + n
    return BoxSummary(len(counts), sum(counts), min(counts, default=0), max(counts, default=0), labelled, fixed)


def dataset_boxes(reader, samples: list, rule: BoxesConfig | None = None) -> dict[Path, list[Box]]:
    """Real box annotations where the dataset has them (VOC's ``Annotations/<id>.xml``: one box per object
    already), else boxes from masks under ``rule`` (:func:`mask_boxes`)."""
    annotations = reader.root / "Annotations"
    if reader.name == "voc" and annotations.is_dir():
        names = reader.classes.names
        return {s.image: voc_annotation_boxes(annotations / f"{s.image.stem}.xml", names) for s in samples}
    return boxes_from_masks(reader, samples, rule)


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

