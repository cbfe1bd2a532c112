import shutil

import pytest
import torch

from raysemi.engine.checkpoint import write_checkpoint
from raysemi.engine.preflight import prepare_run
from raysemi.errors import DataError, StorageError
from tests.conftest import fast_config


def test_a_new_run_is_created_and_a_checkpointed_one_reopened_at_its_step(synthetic_root, tmp_path):
    cfg = fast_config(synthetic_root, tmp_path / "run")
    source, method, run_dir, start_step = prepare_run(cfg)
    assert (method.name, start_step, run_dir) == ("supervised", 0, tmp_path / "run")
    assert len(source.split.labeled) == 24 and (run_dir / "config.yaml").is_file()
    write_checkpoint(run_dir, 3, {"w": torch.ones(1)}, {"step": 3}, cfg.to_yaml(), {})
    assert prepare_run(cfg).start_step == 3


def test_a_missing_val_mask_fails_before_a_run_directory_exists(synthetic_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    (root / "val" / "labels" / "val_00003.png").unlink()
    with pytest.raises(DataError, match="val_00003.png"):
        prepare_run(fast_config(root, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_run_dir_under_a_file_fails_before_anything_is_written(synthetic_root, tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StorageError, match=r"a-file is a file, not a folder; choose another run.dir"):
        prepare_run(fast_config(synthetic_root, tmp_path / "a-file" / "run"))
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


@pytest.mark.parametrize("method", ["method=cps", "supervised.unlabeled_batchnorm=true"])
def test_a_method_reading_unlabeled_images_with_none_in_the_split_fails_before_a_run_directory_exists(
        synthetic_root, tmp_path, method):
    cfg = fast_config(synthetic_root, tmp_path / "run", method, "data.label_fraction=1.0")
    with pytest.raises(DataError, match=r"reads the 'unlabeled' stream, but the data's split leaves it no unlabeled "
                                        r"images; set data.label_fraction below 1"):
        prepare_run(cfg)
    assert not (tmp_path / "run").exists()
