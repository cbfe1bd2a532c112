"""One real 2-worker DDP run on CPU (gloo): ~30 s of Ray start-up and teardown."""

import pytest

from raysemi.engine.inference import evaluate_checkpoint, load_eval_model
from raysemi.ray.train import train
from raysemi.tracking import read_metrics
from tests.conftest import fast_config


@pytest.mark.slow
def test_two_worker_ddp_run_evaluates_the_whole_val_set(synthetic_root, tmp_path, ray_local):
    # 7 val images over 2 workers: one padding row evens the shards and must count for nothing
    root = tmp_path / "data"
    import shutil

    shutil.copytree(synthetic_root, root)
    (root / "val/images/val_00007.png").unlink()
    (root / "val/labels/val_00007.png").unlink()
    (root / "val.txt").write_text("".join(f"val_{i:05d}.png\n" for i in range(7)))
    cfg = fast_config(root, tmp_path / "run", "scaling.num_workers=2", "scaling.cpus_per_worker=0.5",
                      "train.batch_size=4", "eval.batch_size=2")
    summary = train(cfg)
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [2, 4]
    # the mIoU the two workers computed together equals a single-process evaluation of the same weights
    loaded = load_eval_model(summary["checkpoint"])
    assert evaluate_checkpoint(loaded).miou() == pytest.approx(summary["miou"], abs=1e-9)
