import pytest

from raysemi.cli import main
from raysemi.data.formats import GenericFormat
from raysemi.data.splits import labeled_count, make_split, parse_fraction, read_split_file
from raysemi.errors import DataError


@pytest.mark.parametrize(("fraction", "expected"), [("1/16", 2), ("1/8", 3), ("1/4", 6), ("1/2", 12), ("1", 24)])
def test_fraction_counts_round_up(fraction, expected):
    assert labeled_count(24, parse_fraction(fraction)) == expected


def test_voc_style_counts():
    assert labeled_count(10582, count=1464) == 1464
    with pytest.raises(DataError, match="the train set has 24 images"):
        labeled_count(24, count=25)


def test_split_is_deterministic_disjoint_and_covering(synthetic_root):
    train = GenericFormat(synthetic_root).samples("train")
    a = make_split(train, 1 / 8, seed=1)
    b = make_split(train, 1 / 8, seed=1)
    c = make_split(train, 1 / 8, seed=2)
    assert a == b and a.labeled != c.labeled
    labeled, unlabeled = {s.image for s in a.labeled}, {s.image for s in a.unlabeled}
    assert len(labeled) == 3 and not labeled & unlabeled
    assert labeled | unlabeled == {s.image for s in train}


def test_cli_split_writes_pairs_and_imports_published_files(synthetic_root, tmp_path):
    assert main(["data", "split", str(synthetic_root), "--fraction", "1/4", "--seed", "0", "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "labeled.txt").read_text().splitlines()
    assert len(lines) == 6 and lines[0].startswith("train/images/") and " train/labels/" in lines[0]
    assert len((tmp_path / "unlabeled.txt").read_text().splitlines()) == 18
    published = tmp_path / "published.txt"
    published.write_text("/train/images/train_00003.png /train/labels/train_00003.png\n")  # leading / as in CPS
    out = tmp_path / "imported"
    assert main(["data", "split", str(synthetic_root), "--import", str(published), "--out", str(out)]) == 0
    assert (out / "labeled.txt").read_text() == "train/images/train_00003.png train/labels/train_00003.png\n"
    assert len((out / "unlabeled.txt").read_text().splitlines()) == 23


def test_split_file_paths_outside_root_or_missing_are_rejected(synthetic_root, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("../../etc/passwd train/labels/train_00000.png\n")
    with pytest.raises(DataError, match=r"outside.txt:1: \.\./\.\./etc/passwd resolves outside the dataset root"):
        read_split_file(outside, synthetic_root)
    missing = tmp_path / "missing.txt"
    missing.write_text("train/images/train_00000.png train/labels/train_00000.png\ntrain/images/nope.png x.png\n")
    with pytest.raises(DataError, match=r"missing.txt:2: train/images/nope.png not found"):
        read_split_file(missing, synthetic_root)


def test_voc_protocols_have_the_published_counts():
    from raysemi.data.splits import PROTOCOLS

    classic, blended = PROTOCOLS["voc"]["classic"], PROTOCOLS["voc"]["blended"]
    # 1/16, 1/8, 1/4, 1/2 (and all) of the 1,464 fine images; 1/16 .. 1/2 of the 10,582 trainaug images
    assert [labeled_count(1464, f) for f in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1)] == list(classic.counts)
    assert [labeled_count(10582, f) for f in (1 / 16, 1 / 8, 1 / 4, 1 / 2)] == list(blended.counts)
    assert (classic.labeled_pool, classic.train_split, blended.labeled_pool) == ("train", "trainaug", "trainaug")


def test_voc_classic_draws_from_the_fine_images_and_blended_from_trainaug(tmp_path, capsys):
    """A VOC layout with 4 fine images (train.txt) among 12 trainaug ones."""
    import numpy as np
    from PIL import Image

    voc = tmp_path / "VOCdevkit/VOC2012"
    ids = [f"2007_{i:06d}" for i in range(12)]
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    for i in ids:
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(voc / f"JPEGImages/{i}.jpg")
        Image.fromarray(np.zeros((4, 6), np.uint8)).save(voc / f"SegmentationClass/{i}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:4]) + "\n")
    (voc / "ImageSets/Segmentation/trainaug.txt").write_text("\n".join(ids) + "\n")
    fine = {f"JPEGImages/{i}.jpg" for i in ids[:4]}
    for protocol, seed in (("classic", 0), ("classic", 1), ("blended", 3)):
        out = tmp_path / f"{protocol}{seed}"
        assert main(["data", "split", str(tmp_path), "--format", "voc", "--protocol", protocol, "--count", "2",
                     "--seed", str(seed), "--out", str(out)]) == 0
        assert capsys.readouterr().out.startswith("2 labeled, 10 unlabeled (0 without masks)")
        labeled = {line.split()[0] for line in (out / "labeled.txt").read_text().splitlines()}
        if protocol == "classic":
            assert labeled <= fine
    assert not labeled <= fine  # blended with seed 3 draws from outside the fine set (checked by hand)
    assert main(["data", "split", str(tmp_path), "--format", "voc", "--protocol", "mixed", "--count", "2",
                 "--out", str(tmp_path / "x")]) == 2
    assert "protocol 'mixed' is not defined for data.format=voc (accepted: voc: classic, blended)" in (
        capsys.readouterr().err)
