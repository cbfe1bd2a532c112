"""Each bad input is one `error:` line naming the file or key, exit code 2, and no run directory."""

import shutil

import numpy as np
import pytest
from PIL import Image

from raysemi.cli import main

FAST = ["data.format=generic", "model.backbone=tiny", "model.pretrained=false", "train.steps=2",
        "scaling.num_workers=0"]


@pytest.fixture
def dataset(synthetic_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    return root


def _train(capsys, root, run_dir, *extra):
    code = main(["train", f"data.root={root}", f"run.dir={run_dir}", *FAST, *extra])
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_refused(code, err, run_dir, *fragments):
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err
    assert not run_dir.exists()


def test_unreadable_image(dataset, tmp_path, capsys):
    (dataset / "train/images/train_00005.png").write_bytes(b"not a png")
    code, err = _train(capsys, dataset, tmp_path / "run")
    _assert_refused(code, err, tmp_path / "run", "train_00005.png: unreadable image")


def test_mask_size_differs_from_image(dataset, tmp_path, capsys):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(dataset / "train/labels/train_00002.png")
    code, err = _train(capsys, dataset, tmp_path / "run")
    _assert_refused(code, err, tmp_path / "run", "train_00002.png: mask is 10x10 but its image is 64x48")


def test_label_values_out_of_range(dataset, tmp_path, capsys):
    mask = np.zeros((48, 64), np.uint8)
    mask[0, :3] = [6, 7, 255]
    Image.fromarray(mask).save(dataset / "val/labels/val_00001.png")
    code, err = _train(capsys, dataset, tmp_path / "run")
    _assert_refused(code, err, tmp_path / "run", "val_00001.png: label values [6, 7] are outside 0..5")


def test_empty_labeled_split(dataset, tmp_path, capsys):
    empty = tmp_path / "labeled.txt"
    empty.write_text("\n")
    code, err = _train(capsys, dataset, tmp_path / "run", f"data.labeled_split={empty}")
    _assert_refused(code, err, tmp_path / "run", "labeled.txt: the split file lists no images")


def test_split_file_with_missing_file_or_path_outside_root(dataset, tmp_path, capsys):
    split = tmp_path / "labeled.txt"
    split.write_text("train/images/train_00001.png train/labels/gone.png\n")
    code, err = _train(capsys, dataset, tmp_path / "run", f"data.labeled_split={split}")
    _assert_refused(code, err, tmp_path / "run", "labeled.txt:1: train/labels/gone.png not found")
    split.write_text("train/images/train_00001.png ../../secret.png\n")
    code, err = _train(capsys, dataset, tmp_path / "run", f"data.labeled_split={split}")
    _assert_refused(code, err, tmp_path / "run", "../../secret.png resolves outside the dataset root")


def test_config_typo(dataset, tmp_path, capsys):
    code, err = _train(capsys, dataset, tmp_path / "run", "optim.learning_rate=0.1")
    _assert_refused(code, err, tmp_path / "run", "unknown key optim.learning_rate", "accepted: backbone_lr_mult")


def test_data_check_reports_every_problem_in_one_pass(dataset, capsys):
    (dataset / "train/images/train_00005.png").write_bytes(b"broken")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(dataset / "train/labels/train_00002.png")
    Image.fromarray(np.full((48, 64), 9, np.uint8)).save(dataset / "val/labels/val_00003.png")
    (dataset / "val/labels/val_00004.png").unlink()
    assert main(["data", "check", str(dataset)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[-1] == (
        "checked 32 samples in train, val: 31 with masks, 0 unlabeled (no mask), 4 problem(s)")
    assert any("train_00005.png: unreadable image" in line for line in lines)
    assert any("train_00002.png: mask is 10x10" in line for line in lines)
    assert any("val_00003.png: label values [9]" in line for line in lines)
    assert any("val_00004.png: val image without a mask" in line for line in lines)


def test_data_check_clean_dataset(synthetic_root, capsys):
    assert main(["data", "check", str(synthetic_root)]) == 0
    assert capsys.readouterr().out.strip() == (
        "checked 32 samples in train, val: 32 with masks, 0 unlabeled (no mask), 0 problem(s)")


def test_simformer_novel_class_outside_the_dataset_or_a_pair_table_of_another_split(dataset, tmp_path, capsys):
    code, err = _train(capsys, dataset, tmp_path / "run", "method=simformer", "simformer.novel=[4,9]")
    _assert_refused(code, err, tmp_path / "run", "novel classes [9] are not class ids 0..5")
    pairs = tmp_path / "pairs.txt"
    first = sorted((dataset / "train" / "images").iterdir())[0].relative_to(dataset).as_posix()
    pairs.write_text(f"{first} {first} any\n")  # one line: the other 23 training images have no partner
    code, err = _train(capsys, dataset, tmp_path / "run", "method=simformer", "simformer.novel=[4]",
                       f"simformer.pairs_file={pairs}")
    _assert_refused(code, err, tmp_path / "run", "pairs.txt: no partner for 23 training images")
