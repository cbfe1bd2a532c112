"""Shared fixtures: a small synthetic dataset, configs for fast CPU runs, one local Ray per session, and the
benchmark scripts as modules."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("WANDB_MODE", "offline")

from raysemi.config import Config, load_config  # noqa: E402
from raysemi.data.synthetic import write_synthetic  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


@pytest.fixture
def benchmark_script(monkeypatch):
    """``load(path)``: the benchmark script at ``path`` as a module, as ``python <script>`` runs it: its folder
    first on ``sys.path`` (a script may import its siblings) and the module registered in ``sys.modules``
    (dataclasses look their module up there); both undone after the test. Importing runs no benchmark."""
    def load(path: Path):
        monkeypatch.syspath_prepend(str(path.parent))
        spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """24 train and 8 val synthetic scenes at 48×64 in the generic layout."""
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root, num_train=24, num_val=8, height=48, width=64, seed=0)
    return root


def fast_config(data_root: Path, run_dir: Path, *overrides: str) -> Config:
    """Tiny backbone, 48×64 crops, a few steps, the loop in-process: seconds per run on 2 CPUs."""
    base = [
        "data.format=generic",
        f"data.root={data_root}",
        "data.crop_size=[48,64]",
        "model.backbone=tiny",
        "model.pretrained=false",
        "model.head_channels=16",
        "train.steps=4",
        "train.batch_size=4",
        "train.log_every=2",
        "train.torch_threads=1",
        "train.channels_last=false",  # tests compare runs bit for bit; a measured choice could differ between them
        "eval.batch_size=4",
        "scaling.num_workers=0",
        f"run.dir={run_dir}",
    ]
    return load_config(None, base + list(overrides))


def train_until_a_crash_at_step_5(cfg: Config) -> None:
    """Train ``cfg`` and crash at the start of step 5 (as a killed process would, after the step-4
    checkpoint); the next ``train(cfg)`` runs normally."""
    from raysemi.engine.loop import TrainingRun
    from raysemi.ray.train import train

    original = TrainingRun._train_step

    def crash_at_step_5(self, batch):
        if self.step == 4:
            raise RuntimeError("simulated crash")
        return original(self, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainingRun, "_train_step", crash_at_step_5)
        with pytest.raises(Exception, match="simulated crash"):
            train(cfg)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, like CI)."""
    import ray

    if not ray.is_initialized():
        # address="local": a Ray of its own even while another is running on this machine (ray.init() alone
        # joins a running one, and then refuses num_cpus)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield ray
    ray.shutdown()


@pytest.fixture
def partly_labeled(synthetic_root, tmp_path):
    """The 24-image synthetic train set with the masks of train_00000..train_00011 removed, and 3 val images
    copied into ``extra/`` as unlabeled images."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    for index in range(12):
        (root / f"train/labels/train_{index:05d}.png").unlink()
    (root / "extra").mkdir()
    for index in range(3):
        shutil.copy(root / f"val/images/val_{index:05d}.png", root / f"extra/raw_{index}.png")
    return root
