import numpy as np
import pytest

from raysemi.data.formats import GenericFormat
from raysemi.data.weak_labels import (
    Box,
    boxes_from_masks,
    class_boxes,
    hide_novel,
    image_tags,
    partition_classes,
    rasterize_boxes,
    read_boxes_file,
    read_tags_file,
    tags_from_masks,
    voc_annotation_boxes,
    write_boxes_file,
    write_tags_file,
)
from raysemi.errors import DataError

MASK = np.array(
    [
        [0, 1, 1, 0, 0, 0],
        [0, 1, 1, 0, 2, 0],
        [0, 0, 0, 0, 2, 0],
        [1, 0, 0, 0, 255, 0],
    ],
    np.uint8,
)


def test_image_tags_are_multi_hot_without_ignore():
    assert image_tags(MASK, 4).tolist() == [1, 1, 1, 0]


def test_boxes_per_connected_component():
    boxes = class_boxes(MASK, 4)
    assert boxes == [Box(1, 0, 1, 2, 3), Box(1, 3, 0, 4, 1), Box(2, 1, 4, 3, 5)]


def test_rasterized_boxes_and_background_channel():
    raster = rasterize_boxes([Box(1, 0, 1, 2, 3), Box(2, 1, 2, 3, 4)], 3, 4, 6)
    assert raster.shape == (4, 4, 6)
    assert raster[1].sum() == 4 and raster[2].sum() == 4 and raster[0].sum() == 0
    assert raster[3].sum() == 24 - 7  # the two boxes overlap in one pixel
    assert (raster[3] * (raster[1] + raster[2])).sum() == 0


def test_partition_is_seeded_and_keeps_background_base():
    base, novel = partition_classes(21, novel_fraction=0.25, seed=0)
    assert len(novel) == 5 and 0 in base and sorted(base + novel) == list(range(21))
    assert partition_classes(21, novel_fraction=0.25, seed=0) == (base, novel)
    assert partition_classes(21, novel=[3, 5]) == ([c for c in range(21) if c not in (3, 5)], [3, 5])
    with pytest.raises(DataError, match="not class ids 0..20"):
        partition_classes(21, novel=[21])


def test_hide_novel_turns_novel_pixels_unknown():
    hidden = hide_novel(MASK, [2])
    assert (hidden == 2).sum() == 0 and (hidden == 255).sum() == 3 and (hidden == 1).sum() == 5


def test_tags_file_round_trip_matches_the_masks(synthetic_root, tmp_path):
    reader = GenericFormat(synthetic_root)
    samples = reader.samples("train")[:5]
    tags = tags_from_masks(reader, samples)
    write_tags_file(tmp_path / "tags.txt", tags, reader.root)
    assert read_tags_file(tmp_path / "tags.txt", reader.root, reader.classes.num_classes) == tags
    for sample in samples:
        present = set(np.unique(reader.decode_mask(sample.mask)).tolist()) - {255}
        assert set(tags[sample.image]) == present


def test_bad_tags_files_name_the_line(synthetic_root, tmp_path):
    reader = GenericFormat(synthetic_root)
    image = reader.samples("train")[0].image.relative_to(reader.root).as_posix()
    (tmp_path / "tags.txt").write_text(f"{image} 1 2\n{image} 1 99\n")
    with pytest.raises(DataError, match=r"tags.txt:2: tags must be class ids 0..5, got \[1, 99\]"):
        read_tags_file(tmp_path / "tags.txt", reader.root, reader.classes.num_classes)


def test_boxes_file_round_trip_and_bad_boxes(synthetic_root, tmp_path):
    reader = GenericFormat(synthetic_root)
    boxes = boxes_from_masks(reader, reader.samples("train")[:4])
    assert all(boxes.values())  # every synthetic scene has shapes
    write_boxes_file(tmp_path / "boxes.txt", boxes, reader.root)
    assert read_boxes_file(tmp_path / "boxes.txt", reader.root, reader.classes.num_classes) == boxes
    image = next(iter(boxes)).relative_to(reader.root).as_posix()
    (tmp_path / "bad.txt").write_text(f"{image} 1,5,5,2,9\n")
    with pytest.raises(DataError, match=r"bad.txt:1: box '1,5,5,2,9' needs a class id in 0..5, 0 <= y0 < y1"):
        read_boxes_file(tmp_path / "bad.txt", reader.root, reader.classes.num_classes)


@pytest.mark.parametrize("read, kind", [(read_tags_file, "tags"), (read_boxes_file, "boxes")])
def test_missing_weak_label_files_say_how_to_write_one(read, kind, tmp_path):
    with pytest.raises(DataError, match=rf"absent.txt: {kind} file not found .*data split ... --{kind}"):
        read(tmp_path / "absent.txt", tmp_path, 5)


def test_voc_annotation_boxes_convert_one_based_inclusive_corners(tmp_path):
    xml = tmp_path / "2007_000032.xml"
    xml.write_text(
        "<annotation><object><name>aeroplane</name><bndbox><xmin>104</xmin><ymin>78</ymin><xmax>375</xmax>"
        "<ymax>183</ymax></bndbox></object><object><name>person</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>10</xmax><ymax>20</ymax></bndbox></object></annotation>"
    )
    names = ("background", "aeroplane", "person")
    assert voc_annotation_boxes(xml, names) == [Box(1, 77, 103, 183, 375), Box(2, 0, 0, 20, 10)]
    with pytest.raises(DataError, match="object class 'person' is not one of background, aeroplane"):
        voc_annotation_boxes(xml, names[:2])
