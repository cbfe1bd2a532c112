"""SimFormer's pair table: partners sharing exactly one novel tag first, then a base class, then anything."""

import numpy as np
import pytest

from raysemi.cli import main
from raysemi.data.pairs import KINDS, read_pairs_file, reference_pairs
from raysemi.errors import DataError

NOVEL = [3, 4]


def test_partners_prefer_one_shared_novel_tag_then_a_base_class():
    tags = [
        (0, 3),  # 0: novel 3 → only image 1 shares exactly one novel tag (image 2 shares two... with itself)
        (1, 3),  # 1: novel 3 → image 0
        (0, 3, 4),  # 2: novel 3 and 4 → images 0, 1 (one shared each); image 3 shares one (4)
        (1, 4),  # 3: novel 4 → image 2
        (0,),  # 4: no novel tag → a base partner: images 0 or 2 (class 0)
        (2,),  # 5: nothing shared with anyone → any image
    ]
    partner, kind = reference_pairs(tags, NOVEL, num_classes=5, seed=0)
    assert [KINDS[k] for k in kind] == ["novel", "novel", "novel", "novel", "base", "any"]
    assert partner[0] in (1, 2) and partner[1] in (0, 2) and partner[2] in (0, 1, 3) and partner[3] == 2
    assert partner[4] in (0, 2) and partner[5] != 5


def test_pairs_are_the_same_in_chunks_and_never_self():
    rng = np.random.default_rng(1)
    tags = [tuple(np.flatnonzero(rng.random(8) < 0.3)) for _ in range(50)]
    whole = reference_pairs(tags, [5, 6, 7], 8, seed=3)
    chunked = reference_pairs(tags, [5, 6, 7], 8, seed=3, chunk=7)
    assert all(np.array_equal(a, b) for a, b in zip(whole, chunked, strict=True))
    assert (whole[0] != np.arange(50)).all()
    with pytest.raises(DataError, match="at least 2 training images, got 1"):
        reference_pairs([(1,)], [1], 3)


def test_data_split_writes_a_pairs_file(synthetic_root, tmp_path, capsys):
    assert main(["data", "split", str(synthetic_root), "--fraction", "1", "--pairs", "--novel", "3,4",
                 "--out", str(tmp_path)]) == 0
    assert "pairs for novel classes [3, 4]" in capsys.readouterr().out
    pairs = read_pairs_file(tmp_path / "pairs.txt", synthetic_root)
    labeled = (tmp_path / "labeled.txt").read_text().splitlines()
    assert len(pairs) == len(labeled) and all(image != partner for image, partner in pairs.items())
    (tmp_path / "bad.txt").write_text(labeled[0].split()[0] + " x\n")
    with pytest.raises(DataError, match=r"bad.txt:1: expected 'image partner kind'"):
        read_pairs_file(tmp_path / "bad.txt", synthetic_root)
    assert main(["data", "split", str(synthetic_root), "--fraction", "1", "--pairs", "--novel", "3,x",
                 "--out", str(tmp_path)]) != 0
