"""Checks on the real CamVid copy in ../shared/data; skipped with a message where it is absent."""

import pytest

from raysemi.cli import main
from raysemi.data.formats import open_format
from raysemi.data.splits import make_split
from tests.conftest import SHARED_DATA

CAMVID = SHARED_DATA / "camvid-96x128"
pytestmark = pytest.mark.skipif(not CAMVID.is_dir(), reason=f"{CAMVID} not found: CamVid checks need ../shared/data")


def test_camvid_reads_as_generic_with_its_split_sizes():
    reader = open_format("generic", CAMVID)
    assert reader.classes.num_classes == 11 and reader.classes.names[0] == "Sky"
    assert len(reader.samples("train")) == 367 and len(reader.samples("val")) == 101
    split = make_split(reader.samples("train"), 1 / 16, seed=0)
    assert len(split.labeled) == 23 and len(split.unlabeled) == 344


def test_camvid_passes_data_check(capsys):
    assert main(["data", "check", str(CAMVID)]) == 0
    assert capsys.readouterr().out.strip().endswith(
        "checked 468 samples in train, val: 468 with masks, 0 unlabeled (no mask), 0 problem(s)")
