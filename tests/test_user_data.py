"""Issue 38: users' data. Splits checked against val and for duplicates, one meaning of "label fraction",
``run.init_from`` checked before anything is written, datasets assembled from links, published split forms,
masks whose encoding cannot be told, and errors that name the flag or pool at fault."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from raysemi.analysis.report import find_runs, runs_frame
from raysemi.cli import main
from raysemi.data.dataset import load_sample, open_dataset
from raysemi.data.formats import open_format
from raysemi.data.splits import read_split_file
from raysemi.engine.preflight import prepare_run
from raysemi.errors import CheckpointError, DataError
from raysemi.tracking.tracker import sweep_facts
from tests.conftest import fast_config


def _image(path, h=4, w=6):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def _mask(path, row, h=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray([row] * h, np.uint8), mode="L").save(path)


def _voc(root, count=12, fine=4):
    """A VOC tree: ``count`` trainaug ids, the first ``fine`` of them the fine train set, 2 val ids."""
    voc = root / "VOCdevkit/VOC2012"
    ids = [f"2007_{i:06d}" for i in range(count + 2)]
    for i in ids:
        _image(voc / f"JPEGImages/{i}.jpg")
        _mask(voc / f"SegmentationClass/{i}.png", [0, 0, 1, 1, 255, 0])
    lists = voc / "ImageSets/Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(ids[:fine]) + "\n")
    (lists / "trainaug.txt").write_text("\n".join(ids[:count]) + "\n")
    (lists / "val.txt").write_text("\n".join(ids[count:]) + "\n")
    return ids


# ---- 2. every split source is checked: no val image, no duplicates, counts printed after the checks ----

def test_an_imported_split_with_a_val_image_is_refused_and_nothing_written(synthetic_root, tmp_path, capsys):
    published = tmp_path / "labeled.txt"
    published.write_text("train/images/train_00001.png train/labels/train_00001.png\n"
                         "val/images/val_00002.png val/labels/val_00002.png\n")
    out = tmp_path / "split"
    assert main(["data", "split", str(synthetic_root), "--import", str(published), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    leaked = synthetic_root / "val/images/val_00002.png"
    assert captured.out == "" and captured.err.strip() == (
        f"error: {published}: 1 labeled image(s) are also val images, e.g. {leaked}; training on them would "
        "inflate val mIoU, so take them out of the labeled images")
    assert not out.exists()


def test_a_labeled_or_unlabeled_split_by_path_with_a_val_image_is_refused(synthetic_root, tmp_path):
    labeled = tmp_path / "labeled.txt"
    labeled.write_text("val/images/val_00000.png val/labels/val_00000.png\n")
    cfg = fast_config(synthetic_root, tmp_path / "run", f"data.labeled_split={labeled}")
    with pytest.raises(DataError, match=r"data.labeled_split=.*labeled.txt: 1 labeled image\(s\) are also val"):
        open_dataset(cfg.data)
    labeled.write_text("train/images/train_00000.png train/labels/train_00000.png\n")
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("train/images/train_00001.png\nval/images/val_00003.png\nval/images/val_00004.png\n")
    cfg = fast_config(synthetic_root, tmp_path / "run", f"data.labeled_split={labeled}",
                      f"data.unlabeled_split={unlabeled}")
    with pytest.raises(DataError, match=r"2 unlabeled image\(s\) are also val images, e.g. .*val_00003.png"):
        open_dataset(cfg.data)


def test_a_generated_split_of_a_train_list_holding_val_images_is_refused(synthetic_root, tmp_path, capsys):
    train_list = tmp_path / "train_list.txt"
    train_list.write_text("".join(f"{s}/images/{s}_0000{i}.png {s}/labels/{s}_0000{i}.png\n"
                                  for s in ("train", "val") for i in range(4)))
    assert main(["data", "split", str(synthetic_root), "--split", str(train_list), "--count", "8",
                 "--out", str(tmp_path / "split")]) == 2
    assert "4 labeled image(s) are also val images" in capsys.readouterr().err
    cfg = fast_config(synthetic_root, tmp_path / "run", f"data.train_split={train_list}", "data.label_count=2")
    with pytest.raises(DataError, match=r"the split of data.train_split=.*image\(s\) are also val images"):
        open_dataset(cfg.data)


def test_a_split_file_listing_an_image_twice_is_refused_with_both_line_numbers(synthetic_root, tmp_path, capsys):
    published = tmp_path / "labeled.txt"
    lines = [f"train/images/train_0000{i}.png train/labels/train_0000{i}.png" for i in range(4)]
    published.write_text("\n".join(lines + lines) + "\n")  # each image twice: lines 1..4 and 5..8
    assert main(["data", "split", str(synthetic_root), "--import", str(published), "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {published}:5: train/images/train_00000.png is listed twice (lines 1 and 5); each image may appear "
        "once")
    cfg = fast_config(synthetic_root, tmp_path / "run", f"data.labeled_split={published}")
    with pytest.raises(DataError, match=r"labeled.txt:5: .* listed twice \(lines 1 and 5\)"):
        open_dataset(cfg.data)


# ---- 3. label fraction = labeled / images with masks, everywhere ----

def test_label_fraction_is_labeled_over_masked_images_in_wandb_and_report(partly_labeled, tmp_path, capsys):
    """12 masked + 12 unmasked train images + 3 in extra/: half of the masked ones is 6/12, not 6/27."""
    run_dir = tmp_path / "run"
    cfg = fast_config(partly_labeled, run_dir, "data.label_fraction=0.5", "data.unlabeled_dir=extra")
    prepare_run(cfg)
    counts = json.loads((run_dir / "split.json").read_text())
    assert counts == {"labeled": 6, "masked": 12, "label_fraction": 0.5, "masked_unlabeled": 6, "unmasked": 12,
                      "unlabeled_dir": 3}
    facts = sweep_facts(cfg, run_dir)
    assert (facts["label_fraction"], facts["label_count"]) == (0.5, 6)
    (run_dir / "summary.json").write_text(json.dumps({"miou": 0.5, "iou": {"a": 0.5}, "steps": 4}))
    (row,) = runs_frame(find_runs(run_dir)).to_dict("records")
    assert {k: row[k] for k in ("fraction", "labeled", "total", "unmasked", "unlabeled_dir")} == {
        "fraction": "1/2", "labeled": 6, "total": 12, "unmasked": 12, "unlabeled_dir": 3}
    # the split tool says the same: --fraction 1/2 of these images is printed as 6/12
    assert main(["data", "split", str(partly_labeled), "--fraction", "1/2", "--unlabeled-dir", "extra",
                 "--out", str(tmp_path / "split")]) == 0
    assert "label fraction 6/12 = 0.5 (labeled / images with masks)" in capsys.readouterr().out


def test_a_sweep_split_file_keeps_the_fraction_of_masked_images(partly_labeled, tmp_path):
    """A sweep trains from split files (data.labeled_split + data.unlabeled_split): the fraction is the same."""
    split = tmp_path / "split"
    assert main(["data", "split", str(partly_labeled), "--fraction", "1/4", "--unlabeled-dir", "extra",
                 "--out", str(split)]) == 0
    run_dir = tmp_path / "run"
    cfg = fast_config(partly_labeled, run_dir, f"data.labeled_split={split / 'labeled.txt'}",
                      f"data.unlabeled_split={split / 'unlabeled.txt'}", "data.unlabeled_dir=extra")
    prepare_run(cfg)
    counts = json.loads((run_dir / "split.json").read_text())
    assert (counts["labeled"], counts["masked"], counts["unmasked"], counts["unlabeled_dir"]) == (3, 12, 12, 3)
    assert sweep_facts(cfg, run_dir)["label_fraction"] == 0.25


# ---- 4. run.init_from is checked before Ray starts or anything is written ----

def test_a_run_init_from_typo_fails_before_ray_starts_or_config_yaml_is_written(synthetic_root, tmp_path,
                                                                               monkeypatch):
    import raysemi.ray.train as ray_train
    from raysemi.ray.train import train

    monkeypatch.setattr(ray_train, "init_ray", lambda cfg: pytest.fail("Ray started before the check"))
    run_dir = tmp_path / "run"
    typo = tmp_path / "previuos_run"
    with pytest.raises(CheckpointError, match=rf"^run.init_from: {typo}: not a checkpoint"):
        train(fast_config(synthetic_root, run_dir, f"run.init_from={typo}"))
    assert not run_dir.exists()
    # the corrected path is accepted in the same run.dir (nothing there to call it a different config)
    previous = tmp_path / "previous_run"
    prepare_run(fast_config(synthetic_root, previous))
    _write_checkpoint(fast_config(synthetic_root, previous), previous)
    prepared = prepare_run(fast_config(synthetic_root, run_dir, f"run.init_from={previous}"))
    assert prepared.run_dir == run_dir and (run_dir / "config.yaml").is_file()


@pytest.mark.parametrize(("override", "message"), [
    ("data.labeled_split={missing}", "split file not found"),
    ("data.unlabeled_dir={missing}", "must be inside the dataset root"),
    ("data.unlabeled_tags={missing}", "not found"),
    ("model.weights={missing}", "model.weights: .* not found"),
])
def test_every_other_path_in_the_config_is_checked_before_the_run_directory_exists(synthetic_root, tmp_path,
                                                                                   override, message):
    from raysemi.errors import RaysemiError

    run_dir = tmp_path / "run"
    cfg = fast_config(synthetic_root, run_dir, "data.label_fraction=0.5", override.format(missing=tmp_path / "nope"))
    with pytest.raises(RaysemiError, match=message):
        prepare_run(cfg)
    assert not run_dir.exists()


def _write_checkpoint(cfg, run_dir):
    from raysemi.engine.checkpoint import write_checkpoint

    write_checkpoint(run_dir, 1, {}, {"models": {}}, cfg.to_yaml(), {"classes": [], "palette": []})


# ---- 5. linked folders and linked files inside the dataset root ----

def test_a_dataset_root_with_linked_folders_and_linked_files_checks_splits_and_prepares(synthetic_root, tmp_path,
                                                                                       capsys):
    """``train/images`` is a link to a folder outside the root, every ``train/labels`` file is a link to a file
    outside it, ``extra`` (data.unlabeled_dir) is a linked folder: all of them are inside the root."""
    shared = tmp_path / "shared_copy"
    shutil.copytree(synthetic_root, shared)
    root = tmp_path / "data"
    (root / "train/labels").mkdir(parents=True)
    shutil.copy(synthetic_root / "classes.json", root)
    shutil.copytree(synthetic_root / "val", root / "val")
    (root / "train/images").symlink_to(shared / "train/images", target_is_directory=True)  # a linked folder
    for mask in sorted((shared / "train/labels").iterdir()):
        (root / "train/labels" / mask.name).symlink_to(mask)  # linked files
    (root / "extra").symlink_to(shared / "val/images", target_is_directory=True)
    assert main(["data", "check", str(root), "--unlabeled-dir", "extra"]) == 0
    out = tmp_path / "split"
    assert main(["data", "split", str(root), "--fraction", "1/4", "--unlabeled-dir", "extra", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-2].startswith("6 labeled, 26 unlabeled (8 without masks)")
    labeled = (out / "labeled.txt").read_text().splitlines()
    assert len(labeled) == 6 and all(line.startswith("train/images/") for line in labeled)
    assert (out / "unlabeled.txt").read_text().splitlines()[-1] == "extra/val_00007.png"
    cfg = fast_config(root, tmp_path / "run", f"data.labeled_split={out / 'labeled.txt'}",
                      f"data.unlabeled_split={out / 'unlabeled.txt'}", "data.unlabeled_dir=extra")
    run_dir = prepare_run(cfg).run_dir
    assert (run_dir / "labeled.txt").read_text().splitlines() == labeled
    # a line that climbs out of the root with .. or names an absolute path outside it is still refused
    for line, shown in (("../shared_copy/train/images/train_00000.png", "../shared_copy/train/images/train_00000.png"),
                        (f"{shared}/train/images/train_00000.png", f"{shared}/train/images/train_00000.png")):
        escaping = tmp_path / "escaping.txt"
        escaping.write_text(f"{line} train/labels/train_00000.png\n")
        with pytest.raises(DataError, match=rf"escaping.txt:1: {shown} resolves outside the dataset root"):
            read_split_file(escaping, root)


# ---- 7. TorchSemiSeg's published split forms, and --protocol with --import ----

def test_import_reads_torchsemiseg_voc_lists_of_bare_ids(tmp_path, capsys):
    ids = _voc(tmp_path)
    published = tmp_path / "1464_labeled.txt"  # TorchSemiSeg's VOC lists: one image id a line
    published.write_text(f"{ids[1]}\n{ids[6]}\n")
    out = tmp_path / "split"
    args = ["data", "split", str(tmp_path), "--format", "voc", "--import", str(published), "--out", str(out)]
    assert main(args) == 2  # ids[6] is in trainaug, not in the fine train list (--split train by default)
    assert capsys.readouterr().err.strip() == (
        f"error: {published}:2: {ids[6]} is not an image of split train; import with the split that holds it "
        "(--split, e.g. trainaug for VOC, or --protocol)")
    assert main([*args, "--split", "trainaug"]) == 0
    assert capsys.readouterr().out.startswith("2 labeled, 10 unlabeled (0 without masks)")
    assert (out / "labeled.txt").read_text().splitlines() == [
        f"JPEGImages/{i}.jpg SegmentationClass/{i}.png" for i in (ids[1], ids[6])]


def test_import_reads_torchsemiseg_flattened_cityscapes_pairs(tmp_path, capsys):
    stems = [f"aachen_00000{i}_000019" for i in range(3)]
    for stem in stems:
        _image(tmp_path / f"leftImg8bit/train/aachen/{stem}_leftImg8bit.png")
        _mask(tmp_path / f"gtFine/train/aachen/{stem}_gtFine_labelIds.png", [7, 8, 26, 33, 0, 1])
    # TorchSemiSeg's Cityscapes lists: the files copied out of their city folders, image and mask tab-separated
    published = tmp_path / "labeled.txt"
    published.write_text(f"images/{stems[2]}_leftImg8bit.png\tsegmentation/{stems[2]}_gtFine.png\n")
    out = tmp_path / "split"
    assert main(["data", "split", str(tmp_path), "--format", "cityscapes", "--import", str(published),
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("1 labeled, 2 unlabeled")
    assert (out / "labeled.txt").read_text() == (f"leftImg8bit/train/aachen/{stems[2]}_leftImg8bit.png "
                                                 f"gtFine/train/aachen/{stems[2]}_gtFine_labelIds.png\n")
    published.write_text(f"images/{stems[0]}_leftImg8bit.png\tsegmentation/{stems[1]}_gtFine.png\n")
    assert main(["data", "split", str(tmp_path), "--format", "cityscapes", "--import", str(published),
                 "--out", str(out)]) == 2
    assert f"{published}:1: expected 'images/<stem>_leftImg8bit.png" in capsys.readouterr().err


def test_import_reads_unimatch_path_lists(tmp_path, capsys):
    ids = _voc(tmp_path)
    published = tmp_path / "labeled.txt"  # UniMatch: image and mask paths relative to VOC2012
    published.write_text(f"JPEGImages/{ids[2]}.jpg SegmentationClass/{ids[2]}.png\n")
    assert main(["data", "split", str(tmp_path), "--format", "voc", "--split", "trainaug", "--import",
                 str(published), "--out", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.startswith("1 labeled, 11 unlabeled")


def test_protocol_with_import_takes_the_protocols_pools(tmp_path, capsys):
    ids = _voc(tmp_path)
    published = tmp_path / "labeled.txt"
    published.write_text(f"{ids[0]}\n{ids[3]}\n")  # both in the fine train list
    out = tmp_path / "split"
    args = ["data", "split", str(tmp_path), "--format", "voc", "--protocol", "classic", "--import", str(published),
            "--out", str(out)]
    assert main(args) == 0  # the rest of trainaug is unlabeled, as classic leaves it
    assert capsys.readouterr().out.startswith("2 labeled, 10 unlabeled")
    published.write_text(f"JPEGImages/{ids[7]}.jpg SegmentationClass/{ids[7]}.png\n")  # outside classic's pool
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {published}: 1 labeled image(s) are not in protocol classic's labeled pool (split train), "
        f"e.g. {tmp_path / 'VOCdevkit/VOC2012/JPEGImages' / ids[7]}.jpg")


def test_import_outside_the_split_notes_the_unlabeled_pool(tmp_path, capsys):
    ids = _voc(tmp_path)
    published = tmp_path / "labeled.txt"
    published.write_text(f"JPEGImages/{ids[7]}.jpg SegmentationClass/{ids[7]}.png\n")  # trainaug, not train
    assert main(["data", "split", str(tmp_path), "--format", "voc", "--import", str(published),
                 "--out", str(tmp_path / "s")]) == 0
    assert ("note: 1 imported labeled image(s) are not in split train, so unlabeled.txt is the rest of train only; "
            "for UniMatch's and CPS's VOC pools use --split trainaug") in capsys.readouterr().out


# ---- 8. a mask whose encoding cannot be told from its values ----

def test_a_mask_whose_encoding_cannot_be_told_is_refused_with_a_mask_encoding_hint(tmp_path, capsys):
    stem = "aachen_000000_000019"
    _image(tmp_path / f"leftImg8bit/train/aachen/{stem}_leftImg8bit.png")
    mask = tmp_path / f"gtFine/train/aachen/{stem}_gtFine_labelIds.png"
    _mask(mask, [0, 1, 13, 13, 18, 7])  # train ids without 255, under a label-id name
    reader = open_format("cityscapes", tmp_path)
    (sample,) = reader.samples("train")
    with pytest.raises(DataError) as caught:
        load_sample(reader, sample)
    assert str(caught.value) == (
        f"{mask}: values 0..18 are Cityscapes train ids as well as label ids, so the encoding cannot be told from "
        "the file; say which with --mask-encoding label_ids|train_ids (data.mask_encoding)")
    assert main(["data", "check", str(tmp_path), "--format", "cityscapes", "--splits", "train"]) == 1
    assert "--mask-encoding label_ids|train_ids" in capsys.readouterr().out
    as_train_ids = open_format("cityscapes", tmp_path, "train_ids")
    assert load_sample(as_train_ids, sample)[1][0].tolist() == [0, 1, 13, 13, 18, 7]
    as_label_ids = open_format("cityscapes", tmp_path, "label_ids")  # ids 0, 1, 18: void; 13 fence; 7 road
    assert load_sample(as_label_ids, sample)[1][0].tolist() == [255, 255, 4, 4, 255, 0]
    assert open_format(as_train_ids.spec, tmp_path).mask_encoding == "train_ids"  # how Ray Data tasks reopen it
    with pytest.raises(DataError, match="mask encoding 'train_ids' is not accepted for data.format=voc"):
        open_format("voc", tmp_path, "train_ids")


# ---- 10. errors that name the right pool and the flag ----

def test_protocol_classic_count_92_names_the_labeled_pool(tmp_path, capsys):
    _voc(tmp_path)
    assert main(["data", "split", str(tmp_path), "--format", "voc", "--protocol", "classic", "--count", "92",
                 "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: label count 92 is not accepted: protocol classic's labeled pool (split train) has 4 images with "
        "masks (1..4)")


def test_split_unlabeled_dir_errors_name_the_flag(synthetic_root, tmp_path, capsys):
    for folder in (str(tmp_path), "nothing_here"):
        assert main(["data", "split", str(synthetic_root), "--count", "2", "--unlabeled-dir", folder,
                     "--out", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --unlabeled-dir={folder}: ") and "data.unlabeled_dir" not in err


def test_absolute_paths_through_a_link_to_the_root_are_inside_it(synthetic_root, tmp_path):
    """data.root is resolved; an absolute split line or unlabeled_dir spelled through a link to it is inside."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    shutil.copytree(root / "val/images", root / "raw")
    link = tmp_path / "dataset_link"
    link.symlink_to(root, target_is_directory=True)
    listed = tmp_path / "labeled.txt"
    listed.write_text(f"{link}/train/images/train_00000.png {link}/train/labels/train_00000.png\n")
    (sample,) = read_split_file(listed, root.resolve())
    assert sample.image == root.resolve() / "train/images/train_00000.png"
    cfg = fast_config(root, tmp_path / "run", f"data.unlabeled_dir={link}/raw", "data.label_count=2")
    assert open_dataset(cfg.data).split.unlabeled[-1].image == root.resolve() / "raw/val_00007.png"
