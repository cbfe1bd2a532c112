"""A ``generic`` dataset as users have it: some train images without masks, plus a folder of raw images."""


import pytest

from raysemi.cli import main
from raysemi.data.dataset import open_dataset
from raysemi.data.splits import read_split_file
from raysemi.errors import DataError
from raysemi.ray.train import train
from tests.conftest import fast_config


def test_data_check_counts_images_without_masks_as_unlabeled(partly_labeled, capsys):
    assert main(["data", "check", str(partly_labeled), "--unlabeled-dir", "extra"]) == 0
    # 24 train + 8 val + 3 extra; 12 train and 8 val masks; 12 + 3 unlabeled
    assert capsys.readouterr().out.strip() == (
        "checked 35 samples in train, val, extra: 20 with masks, 15 unlabeled (no mask), 0 problem(s)")
    (partly_labeled / "val/labels/val_00001.png").unlink()
    assert main(["data", "check", str(partly_labeled)]) == 1
    assert "val_00001.png: val image without a mask" in capsys.readouterr().out


def test_split_draws_labeled_images_from_masked_ones_only(partly_labeled, tmp_path, capsys):
    out = tmp_path / "split"
    assert main(["data", "split", str(partly_labeled), "--fraction", "1/2", "--unlabeled-dir", "extra",
                 "--out", str(out)]) == 0
    # half of the 12 masked images; the other 6 masked, the 12 unmasked and the 3 extra are unlabeled
    assert capsys.readouterr().out.strip().splitlines() == [
        f"6 labeled, 21 unlabeled (15 without masks) -> {out}",
        "label fraction 6/12 = 0.5 (labeled / images with masks)"]
    labeled = read_split_file(out / "labeled.txt", partly_labeled)
    assert len(labeled) == 6 and all(int(s.image.stem[-5:]) >= 12 for s in labeled)
    unlabeled = (out / "unlabeled.txt").read_text().splitlines()
    assert len(unlabeled) == 21 and sum(len(line.split()) == 1 for line in unlabeled) == 15
    assert unlabeled[-1] == "extra/raw_2.png"
    assert main(["data", "split", str(partly_labeled), "--count", "3", "--unlabeled-dir", "extra", "--tags",
                 "--out", str(out)]) == 2
    assert "--tags derives weak labels from masks, but 15 unlabeled images have none" in capsys.readouterr().err


def test_semi_supervised_training_uses_the_unmasked_images(partly_labeled, tmp_path, ray_local):
    run_dir = tmp_path / "run"
    cfg = fast_config(partly_labeled, run_dir, "method=cps", "data.label_fraction=0.5", "data.unlabeled_dir=extra",
                      "train.unlabeled_batch_size=4")
    split = open_dataset(cfg.data).split
    assert len(split.labeled) == 6 and len(split.unlabeled) == 21
    assert train(cfg)["steps"] == 4
    assert len((run_dir / "unlabeled.txt").read_text().splitlines()) == 21


def test_unlabeled_dir_outside_the_root_is_refused(partly_labeled, tmp_path):
    cfg = fast_config(partly_labeled, tmp_path / "run", f"data.unlabeled_dir={tmp_path}")
    with pytest.raises(DataError, match="data.unlabeled_dir=.*: the folder must be inside the dataset root"):
        open_dataset(cfg.data)
