import json

import numpy as np
import pytest
import torch
from PIL import Image

from raysemi.cli import main
from raysemi.data.formats import CITYSCAPES_CLASSES, VOC_CLASSES, ClassInfo, GenericFormat
from raysemi.data.weak_labels import (
    CAMVID_CLASSES,
    Box,
    box_fixed_pixels,
    boxes_from_masks,
    default_things,
    fill_box_raster,
    hide_novel,
    image_tags,
    mask_boxes,
    object_boxes,
    partition_classes,
    rasterize_boxes,
    read_boxes_file,
    read_tags_file,
    stuff_classes,
    tags_from_masks,
    thing_classes,
    voc_annotation_boxes,
    write_boxes_file,
    write_tags_file,
)
from raysemi.errors import DataError
from raysemi.sections import BoxesConfig

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
    boxes = object_boxes(MASK, (1, 2))
    assert boxes == [Box(1, 0, 1, 2, 3), Box(1, 3, 0, 4, 1), Box(2, 1, 4, 3, 5)]


ROAD, POLE, CAR = 0, 1, 2
STREET = ClassInfo(("road", "pole", "car"), ((0, 0, 0),) * 3)


def street_mask() -> np.ndarray:
    """10 × 12 of road, with one car (rows 1-4) cut in two by a pole 2 pixels wide (columns 4-5): the fragments
    are columns 1-3 and 6-8. A 2 × 2 car speck (4 pixels) sits at rows 8-9, columns 10-11, 3 rows below."""
    mask = np.full((10, 12), ROAD, np.uint8)
    mask[:, 4:6] = POLE
    mask[1:5, 1:4] = CAR
    mask[1:5, 6:9] = CAR
    mask[8:10, 10:12] = CAR
    return mask


def test_fragments_of_one_car_get_one_box_a_speck_none_and_road_none():
    # short side 10: merge_radius 0.1 grows each fragment by 1 pixel, so the 2-pixel gap closes; min_share 0.05
    # of 120 pixels is 6 pixels, so the 4-pixel speck is dropped; pole and road are stuff
    rule = BoxesConfig(things=[CAR], min_share=0.05, merge_radius=0.1)
    assert mask_boxes(street_mask(), STREET, rule) == [Box(CAR, 1, 1, 5, 9)]
    # without merging the fragments are two cars; without the size floor the speck is a third object
    assert mask_boxes(street_mask(), STREET, BoxesConfig(things=[CAR], min_share=0.05, merge_radius=0.0)) == [
        Box(CAR, 1, 1, 5, 4), Box(CAR, 1, 6, 5, 9)]
    assert mask_boxes(street_mask(), STREET, BoxesConfig(things=[CAR], min_share=0.0, merge_radius=0.1)) == [
        Box(CAR, 1, 1, 5, 9), Box(CAR, 8, 10, 10, 12)]
    # a thing list with the pole: it spans the image, one box of its own (the car's box stays one)
    assert Box(POLE, 0, 4, 10, 6) in mask_boxes(street_mask(), STREET, BoxesConfig(things=[POLE, CAR],
                                                                                  merge_radius=0.1))


def test_a_gap_wider_than_twice_the_radius_keeps_two_objects():
    mask = np.zeros((10, 12), np.uint8)
    mask[2:6, 1:4] = CAR
    mask[2:6, 7:10] = CAR  # a 3-pixel gap: radius 1 closes at most 2
    assert len(object_boxes(mask, (CAR,), merge_radius=1)) == 2
    assert object_boxes(mask, (CAR,), merge_radius=2) == [Box(CAR, 2, 1, 6, 10)]


def test_dataset_thing_lists_and_the_config_override():
    assert [CAMVID_CLASSES[c] for c in default_things(CAMVID_CLASSES)] == ["Car", "Pedestrian", "Bicyclist"]
    assert [CITYSCAPES_CLASSES[c] for c in default_things(CITYSCAPES_CLASSES)] == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    assert default_things(VOC_CLASSES) == tuple(range(1, 21))  # background is stuff
    assert default_things(("cocostuff_1", "cocostuff_91", "cocostuff_92")) == (0, 1)  # COCO's objects: ids <= 91
    assert default_things(("road", "pole", "car")) == (0, 1, 2)  # no list known, none named background
    assert thing_classes(STREET, BoxesConfig(things=[2])) == (2,) and stuff_classes(STREET, BoxesConfig(
        things=[2])) == (0, 1)
    with pytest.raises(DataError, match=r"data.boxes.things=\[2, 5\]: \[5\] are not class ids 0..2"):
        thing_classes(STREET, BoxesConfig(things=[2, 5]))


def test_box_raster_alone_fixes_a_pixel_only_when_one_class_is_left():
    mask = street_mask()
    boxes = [Box(CAR, 1, 1, 5, 9)]
    # one stuff class (road, the pole boxed as a thing elsewhere or not): outside the car box only road is
    # allowed, so the 120 - 32 = 88 pixels outside it are fixed where they are road: the pole's 20 - 8 = 12
    # pixels outside the box and the speck's 4 are not; inside the box car and road are allowed: nothing fixed
    assert box_fixed_pixels(mask, boxes, 3, stuff=(ROAD,)) == (88 - 12 - 4, 120)
    # two stuff classes (road, pole): nowhere is one class left
    assert box_fixed_pixels(mask, boxes, 3, stuff=(ROAD, POLE)) == (0, 120)


def test_filled_boxes_take_their_class_overlaps_and_unknown_stuff_are_ignored():
    raster = rasterize_boxes([Box(1, 0, 0, 2, 2), Box(2, 1, 1, 3, 3)], 3, 3, 4)[None]
    raster[:, :, :, 3] = 0  # the last column is padding
    one_stuff = fill_box_raster(raster, stuff=(0,))
    assert one_stuff[0].tolist() == [[1, 1, 0, 255],
                                     [1, 255, 2, 255],  # (1, 1) is in both boxes
                                     [0, 2, 2, 255]]
    two_stuff = fill_box_raster(raster, stuff=(0, 3))
    assert two_stuff[0].tolist() == [[1, 1, 255, 255], [1, 255, 2, 255], [255, 2, 2, 255]]
    assert two_stuff.dtype == torch.int64


def write_dataset(root, mask: np.ndarray, names: tuple[str, ...], count: int = 2) -> None:
    """A generic dataset of ``count`` train images, each with ``mask``."""
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "labels").mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"classes": list(names)}))
    for index in range(count):
        Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(root / "train" / "images" / f"{index}.png")
        Image.fromarray(mask).save(root / "train" / "labels" / f"{index}.png")


def test_data_split_boxes_prints_the_share_the_boxes_fix(tmp_path, capsys):
    # 8 × 10: a 3 × 4 car (12 pixels), a 1-pixel car speck at (7, 9), the first row void, the rest background
    mask = np.zeros((8, 10), np.uint8)
    mask[0] = 255
    mask[2:5, 3:7] = 1
    mask[7, 9] = 1
    write_dataset(tmp_path / "data", mask, ("background", "car"))
    out = tmp_path / "split"
    # min share 0.02 of 80 pixels: 2 pixels, the speck gets no box
    assert main(["data", "split", str(tmp_path / "data"), "--count", "1", "--out", str(out), "--boxes",
                 "--min-box-share", "0.02"]) == 0
    printed = capsys.readouterr().out
    assert "boxes of car (stuff, no boxes: background): 1.0 per image (1-1)" in printed
    # 70 labelled pixels: the 12 in the box may be car or background, the speck is car where only background
    # is allowed; the other 57 are background outside every box, which the raster fixes: 57 / 70 = 81.4 %
    assert "fixes the class of 81.4 % of the labelled pixels (57 of 70)" in printed
    assert (out / "unlabeled_boxes.txt").read_text().split()[1:] == ["1,2,3,5,7"]
    for flag, value, error in (("--min-box-share", "2", "--min-box-share=2.0: Input should be less than 1"),
                               ("--things", "car", "--things='car': expected comma-separated class ids")):
        assert main(["data", "split", str(tmp_path / "data"), "--count", "1", "--out", str(out), "--boxes",
                     flag, value]) != 0
        assert error in capsys.readouterr().err


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
