"""Each reader on a tiny fixture written in that format's exact layout, with its label mapping checked."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from raysemi.data.dataset import load_sample
from raysemi.data.formats import open_format
from raysemi.errors import DataError


def _image(path, h=4, w=6):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def _mask(path, values, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(values, np.uint8), mode="L")
    if mode == "P":
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in (i, 0, 0)])
    image.save(path)


ROW = [[0, 1, 2, 3, 4, 5]] * 4


def test_generic_layout_with_listing(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["a", "b"], "palette": [[1, 2, 3], [4, 5, 6]]}))
    _image(tmp_path / "train/images/x.png")
    _mask(tmp_path / "train/labels/x.png", [[0, 1, 255, 1, 0, 0]] * 4)
    (tmp_path / "train.txt").write_text("x.png\n")
    reader = open_format("generic", tmp_path)
    (sample,) = reader.samples("train")
    image, mask = load_sample(reader, sample)
    assert image.shape == (4, 6, 3) and mask[0].tolist() == [0, 1, 255, 1, 0, 0]
    assert reader.classes.palette[1] == (4, 5, 6)


def test_voc_prefers_sbd_aug_masks_and_reads_palette_indices(tmp_path):
    voc = tmp_path / "VOCdevkit/VOC2012"
    _image(voc / "JPEGImages/2007_000032.jpg")
    _mask(voc / "SegmentationClass/2007_000032.png", [[0, 15, 255, 1, 1, 1]] * 4, mode="P")
    _mask(voc / "SegmentationClassAug/2007_000032.png", [[0, 15, 255, 2, 2, 2]] * 4)
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n")
    reader = open_format("voc", tmp_path)
    (sample,) = reader.samples("train")
    assert sample.mask.parent.name == "SegmentationClassAug"
    assert load_sample(reader, sample)[1][0].tolist() == [0, 15, 255, 2, 2, 2]
    (voc / "SegmentationClassAug/2007_000032.png").unlink()
    (voc / "SegmentationClassAug").rmdir()
    reader = open_format("voc", tmp_path)
    assert load_sample(reader, reader.samples("train")[0])[1][0].tolist() == [0, 15, 255, 1, 1, 1]
    assert reader.classes.num_classes == 21 and reader.classes.palette[1] == (128, 0, 0)


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    _image(tmp_path / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
    _mask(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", [[7, 8, 26, 33, 0, 1]] * 4)
    reader = open_format("cityscapes", tmp_path)
    (sample,) = reader.samples("train")
    assert load_sample(reader, sample)[1][0].tolist() == [0, 1, 13, 18, 255, 255]
    assert reader.classes.num_classes == 19


def test_cocostuff10k_reads_mat_and_skips_unused_ids(tmp_path):
    _image(tmp_path / "images/COCO_train2014_000000000077.jpg")
    (tmp_path / "annotations").mkdir()
    savemat(tmp_path / "annotations/COCO_train2014_000000000077.mat",
            {"S": np.array([[0, 1, 11, 13, 182, 1]] * 4, np.uint16)})
    (tmp_path / "imageLists").mkdir()
    (tmp_path / "imageLists/train.txt").write_text("COCO_train2014_000000000077\n")
    reader = open_format("cocostuff10k", tmp_path)
    (sample,) = reader.samples("train")
    # 0 unlabeled -> ignore; 1 -> 0; 11 -> 10; 13 -> 11 (12 is unused); 182 -> 170
    assert load_sample(reader, sample)[1][0].tolist() == [255, 0, 10, 11, 170, 0]
    assert reader.classes.num_classes == 171


def test_ade20k_shifts_labels_and_ignores_other(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    _image(ade / "images/validation/ADE_val_00000001.jpg")
    _mask(ade / "annotations/validation/ADE_val_00000001.png", [[0, 1, 150, 2, 2, 2]] * 4)
    reader = open_format("ade20k", tmp_path)
    (sample,) = reader.samples("val")
    assert load_sample(reader, sample)[1][0].tolist() == [255, 0, 149, 1, 1, 1]
    assert reader.classes.num_classes == 150


def test_unknown_format_lists_the_accepted_ones(tmp_path):
    with pytest.raises(DataError, match="choose one of synthetic, generic, voc, cityscapes, cocostuff10k, ade20k"):
        open_format("kitti", tmp_path)


def _cityscapes_pair(root, stem, label_ids, train_ids):
    _image(root / f"leftImg8bit/train/aachen/{stem}_leftImg8bit.png")
    _mask(root / f"gtFine/train/aachen/{stem}_gtFine_labelIds.png", [label_ids] * 4)
    _mask(root / f"gtFine/train/aachen/{stem}_gtFine_labelTrainIds.png", [train_ids] * 4)


def test_cityscapes_import_of_train_id_masks_decodes_them_as_train_ids(tmp_path, capsys):
    """UniMatch's published Cityscapes splits list *_labelTrainIds.png: they are read as stored, not re-mapped."""
    from raysemi.cli import main
    from raysemi.data.splits import read_split_file

    # label ids 7 road, 8 sidewalk, 26 car, 33 bicycle, 0 unlabeled, 1 ego vehicle = train ids 0, 1, 13, 18, 255
    _cityscapes_pair(tmp_path, "aachen_000000_000019", [7, 8, 26, 33, 0, 1], [0, 1, 13, 18, 255, 255])
    _cityscapes_pair(tmp_path, "aachen_000001_000019", [26, 26, 7, 7, 7, 7], [13, 13, 0, 0, 0, 0])
    published = tmp_path / "labeled_published.txt"
    published.write_text("leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png "
                         "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png\n")
    out = tmp_path / "split"
    assert main(["data", "split", str(tmp_path), "--format", "cityscapes", "--import", str(published),
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("1 labeled, 1 unlabeled")
    reader = open_format("cityscapes", tmp_path)
    (imported,) = read_split_file(out / "labeled.txt", reader.root)
    assert load_sample(reader, imported)[1][0].tolist() == [0, 1, 13, 18, 255, 255]
    (listed,) = [s for s in reader.samples("train") if "000000" in s.image.name]
    assert listed.mask.name.endswith("_labelIds.png")  # the label-id file, mapped: the same train ids
    assert load_sample(reader, listed)[1][0].tolist() == [0, 1, 13, 18, 255, 255]

    # a label-id file named as train ids holds 26 and 33 (not train ids 0..18): refused, naming both files
    mislabeled = tmp_path / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelTrainIds.png"
    _mask(mislabeled, [[26, 26, 7, 7, 7, 33]] * 4)
    published.write_text("leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png "
                         "gtFine/train/aachen/aachen_000001_000019_gtFine_labelTrainIds.png\n")
    assert main(["data", "split", str(tmp_path), "--format", "cityscapes", "--import", str(published),
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {published}: {mislabeled}: label values [26, 33] are outside 0..18 and the ignore value 255")
    # a train-id file named as label ids holds 255: not a label id
    train_ids_as_label_ids = tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    _mask(train_ids_as_label_ids, [[0, 1, 13, 18, 255, 255]] * 4)
    with pytest.raises(DataError, match=r"labelIds.png: values up to 255 are not Cityscapes label ids 0..33"):
        load_sample(reader, listed)
    # a mask name that says neither
    other = tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_color.png"
    _mask(other, [[0] * 6] * 4)
    with pytest.raises(DataError, match=r"_color.png: cannot tell the mask's encoding from its name"):
        reader.decode_mask(other)


def test_generic_import_with_masks_outside_the_label_range_is_refused(tmp_path, capsys):
    from raysemi.cli import main

    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    for name, values in (("x", [0, 1, 2, 2, 255, 0]), ("y", [0, 1, 2, 3, 4, 5])):  # y: 3, 4, 5 are not classes
        _image(tmp_path / f"train/images/{name}.png")
        _mask(tmp_path / f"train/labels/{name}.png", [values] * 4)
    published = tmp_path / "published.txt"
    published.write_text("train/images/x.png train/labels/x.png\ntrain/images/y.png train/labels/y.png\n")
    assert main(["data", "split", str(tmp_path), "--import", str(published), "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {published}: {tmp_path / 'train/labels/y.png'}: label "
                                               "values [3, 4, 5] are outside 0..2 and the ignore value 255")
