"""A lost node: a 2-node Ray cluster on this machine, a 2-worker run, the node of one worker killed mid-run
(tests/lost_node.py drives it in a process of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raysemi.engine.checkpoint import latest_checkpoint, list_checkpoints
from raysemi.tracking import read_metrics

REPO = Path(__file__).resolve().parents[1]
WEIGHT_TOLERANCE = 1e-4  # see the test's comment: the data order across workers is Ray Data's


@pytest.mark.slow
@pytest.mark.drill
def test_a_run_that_loses_the_node_of_a_worker_finishes_from_its_checkpoint(synthetic_root, tmp_path):
    home = tmp_path / "home"  # no token file of this machine's user: the cluster runs without authentication
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}
    driver = subprocess.run([sys.executable, "-m", "tests.lost_node", str(synthetic_root), str(tmp_path)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=600)
    assert driver.returncode == 0, driver.stderr[-3000:]
    check_lost_node_run(tmp_path, driver.stdout + driver.stderr)


def check_lost_node_run(out: Path, stdout: str) -> None:
    """What ``tests/lost_node.py`` left in ``out`` (and printed) shows a run that lost a node and finished."""
    result = json.loads((out / "result.json").read_text())
    assert result["nodes"] == 2
    run_dir, reference_dir = out / "run", out / "reference"

    before = {r["step"]: r for r in result["records_at_kill"]}
    assert 24 <= max(before) < 40  # the node died between the checkpoints at 20 and 40
    after = {r["step"]: r for r in read_metrics(run_dir)}
    assert list(after) == list(range(4, 41, 4))  # one continuous log
    assert all(after[step] == before[step] for step in range(4, 21, 4))  # steps to the checkpoint not redone
    assert f"resuming {run_dir} from step 20" in stdout
    assert result["summary"]["steps"] == 40 and [c.read_meta()["step"] for c in list_checkpoints(run_dir)] == [20, 40]

    # The uninterrupted run on the same layout: the same losses and weights, to WEIGHT_TOLERANCE (relative);
    # each worker's rows come from Ray Data's streaming split, whose order between the two workers is not fixed
    reference = {r["step"]: r for r in read_metrics(reference_dir)}
    for step in range(4, 41, 4):
        assert after[step]["loss"] == pytest.approx(reference[step]["loss"], rel=WEIGHT_TOLERANCE), step
    ours = torch.load(latest_checkpoint(run_dir).model, weights_only=True)
    theirs = torch.load(latest_checkpoint(reference_dir).model, weights_only=True)
    for key, value in theirs.items():
        difference = float((ours[key].double() - value.double()).norm() / value.double().norm().clamp_min(1e-12))
        assert difference < WEIGHT_TOLERANCE, (key, difference)
