import pytest
import yaml

from raysemi.data.dataset import open_dataset
from raysemi.engine.rundir import prepare_run_dir
from raysemi.errors import ConfigError
from tests.conftest import fast_config


def test_run_dir_is_created_once_and_reopened_with_the_same_config(synthetic_root, tmp_path):
    cfg = fast_config(synthetic_root, tmp_path / "run")
    source = open_dataset(cfg.data)
    run_dir, step = prepare_run_dir(cfg, source)
    assert step == 0 and (run_dir / "config.yaml").is_file()
    assert len((run_dir / "labeled.txt").read_text().splitlines()) == 24
    assert (run_dir / "unlabeled.txt").read_text() == "\n"
    # scaling may change between an interruption and its resumption
    assert prepare_run_dir(fast_config(synthetic_root, tmp_path / "run", "scaling.num_workers=2"), source)[1] == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_different_config_is_refused(synthetic_root, tmp_path):
    original = fast_config(synthetic_root, tmp_path / "run")
    prepare_run_dir(original, open_dataset(original.data))
    changed = fast_config(synthetic_root, tmp_path / "run", "optim.lr=0.5")
    with pytest.raises(ConfigError, match=r"holds a run with a different config \(optim.lr: 0.003 there, 0.5 now\)"):
        prepare_run_dir(changed, open_dataset(changed.data))


def test_a_foreign_non_empty_folder_is_refused(synthetic_root, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    cfg = fast_config(synthetic_root, tmp_path / "run")
    with pytest.raises(ConfigError, match="exists and is not a raysemi run"):
        prepare_run_dir(cfg, open_dataset(cfg.data))


def test_a_run_stores_only_its_own_methods_section(synthetic_root, tmp_path):
    cfg = fast_config(synthetic_root, tmp_path / "run", "method=cps")
    run_dir, _ = prepare_run_dir(cfg, open_dataset(cfg.data))
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert "cps" in stored and not {"cac", "self_correction", "simformer"} & set(stored)


def test_an_option_added_to_another_method_leaves_an_older_run_resumable(synthetic_root, tmp_path):
    cfg = fast_config(synthetic_root, tmp_path / "run", "method=cps")
    source = open_dataset(cfg.data)
    run_dir, _ = prepare_run_dir(cfg, source)
    # As an older raysemi wrote it: every method's section, and CAC's without an option added since.
    old = yaml.safe_load((run_dir / "config.yaml").read_text()) | {"cac": {"an_older_option": 1}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    assert prepare_run_dir(cfg, source) == (run_dir, 0)
    old["cps"]["weight"] = 99.0  # the run's own method's options are still compared
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match=r"different config \(cps.weight: 99.0 there, "):
        prepare_run_dir(cfg, source)
