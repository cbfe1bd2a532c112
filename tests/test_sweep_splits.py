from raysemi.ray.tune import write_splits
from tests.conftest import fast_config


def test_sweep_splits_are_written_whole_once_and_a_dead_writers_folder_is_cleared(synthetic_root, tmp_path):
    out = tmp_path / "splits"
    (out / ".tmp-1_4-seed3-dead").mkdir(parents=True)  # a writer killed before its rename
    base = fast_config(synthetic_root, tmp_path / "run")
    splits = write_splits(base, ["1/4"], [3], out)
    folder = out / "1_4-seed3"
    assert splits == {"1/4@3": {"data.labeled_split": str(folder / "labeled.txt"),
                                "data.unlabeled_split": str(folder / "unlabeled.txt"), "run.seed": 3}}
    assert [p.name for p in out.iterdir()] == ["1_4-seed3"]
    assert len((folder / "labeled.txt").read_text().splitlines()) == 6  # a quarter of 24 train images
    assert len((folder / "unlabeled.txt").read_text().splitlines()) == 18
    (folder / "labeled.txt").write_text("kept\n")
    write_splits(base, ["1/4"], [3], out)  # a resumed sweep reuses the folder
    assert (folder / "labeled.txt").read_text() == "kept\n"
