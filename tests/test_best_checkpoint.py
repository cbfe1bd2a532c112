"""``train.keep_best``: the checkpoint of the best val mIoU beside the newest ones; ``best_miou``/``best_step``."""

import json

import pytest

from raysemi.cli import main
from raysemi.engine.checkpoint import best_checkpoint, list_checkpoints
from raysemi.ray.train import train
from raysemi.tracking import best_of, read_metrics
from tests.conftest import fast_config


def test_best_of_picks_the_highest_miou_and_the_earliest_step_on_a_tie():
    records = [{"step": 2, "loss": 1.0}, {"step": 4, "val": {"miou": 0.30}}, {"step": 6, "val": {"miou": 0.50}},
               {"step": 8, "val": {"miou": 0.50}}, {"step": 10, "val": {"miou": 0.40}}]
    assert best_of(records, 0.40, 10) == {"best_miou": 0.50, "best_step": 6}
    assert best_of([{"step": 2, "loss": 1.0}], 0.25, 10) == {"best_miou": 0.25, "best_step": 10}


def test_keep_best_keeps_the_best_evaluation_beside_the_newest_checkpoint(synthetic_root, tmp_path, ray_local,
                                                                          capsys):
    run_dir = tmp_path / "run"
    cfg = fast_config(synthetic_root, run_dir, "train.eval_every=1", "train.log_every=1", "train.keep_best=true",
                      "train.keep_checkpoints=1", "optim.lr=0.05")
    summary = train(cfg)
    evaluations = {r["step"]: r["val"]["miou"] for r in read_metrics(run_dir)}
    assert sorted(evaluations) == [1, 2, 3, 4]
    best_step = min(evaluations, key=lambda step: (-evaluations[step], step))
    assert summary["best_step"] == best_step and summary["best_miou"] == evaluations[best_step]
    assert summary["miou"] == evaluations[4]
    assert [c.path.name for c in list_checkpoints(run_dir)] == ["step_00000004"]  # best is not pruned
    best = best_checkpoint(run_dir)
    assert best.read_meta()["step"] == best_step and best.read_meta()["miou"] == evaluations[best_step]
    assert summary["best_checkpoint"] == str(best.path)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(best.path)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["miou"] == pytest.approx(
        evaluations[best_step], abs=1e-9)
    assert main(["report", str(run_dir), "--out", str(tmp_path / "report")]) == 0
    runs = (tmp_path / "report" / "runs.csv").read_text().splitlines()
    assert runs[0].startswith("method,fraction,labeled,total,unmasked,unlabeled_dir,seed,miou,best_miou,best_step")
    assert f",{best_step}," in runs[1]
