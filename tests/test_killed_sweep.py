"""A sweep driver killed with SIGKILL mid-trial (no handler runs: a lost head, an OOM kill), then ``--resume``.

The finished trial is not trained again, the interrupted one continues from its newest checkpoint, and every
trial ends with the mIoU and weights of the same trial run without interruption (each trial's config.yaml,
trained in this process by :func:`raysemi.engine.plain.train_plain`, which feeds the loop the same tensors as
the Ray path: tests/test_plain_runner.py). The sweep's report is built from those numbers, so it equals an
uninterrupted sweep's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from raysemi.analysis.report import write_report
from raysemi.config import Config
from raysemi.engine.checkpoint import latest_checkpoint
from raysemi.engine.plain import train_plain
from tests.test_tune import REPO, _overrides, _wait_for

STEPS = ["train.steps=40", "train.checkpoint_every=10", "train.log_every=10", "train.keep_checkpoints=4"]


def sweep_command(kind: str, sweep_dir: Path, data_root: Path, tmp_path: Path) -> list[str]:
    """Two trials, one at a time: two seeds of ``supervised`` (``sweep``), or two Optuna samples of the
    learning rate (``tune``)."""
    base = [sys.executable, "-m", "raysemi.cli", kind, "--out", str(sweep_dir)]
    if kind == "sweep":
        return [*base, "--methods", "supervised", "--fractions", "1/2", "--seeds", "0,1",
                *_overrides(data_root), *STEPS]
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("samples: 2\nscheduler: fifo\nconcurrency: 1\nretries: 0\n"
                          "space:\n  optim.lr: {loguniform: [1.0e-3, 1.0e-1]}\n")
    return [*base, "--sweep", str(sweep_file), *_overrides(data_root), *STEPS]


def kill_with_its_ray(process: subprocess.Popen) -> None:
    """SIGKILL the driver, then every process it started (its local Ray) that outlived it."""
    started = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    _, alive = psutil.wait_procs(started, timeout=10)
    for leftover in alive:
        leftover.kill()


def checkpointed(trial: Path) -> bool:
    return any((trial / "checkpoints").glob("step_*/meta.json"))


@pytest.mark.slow
@pytest.mark.drill
@pytest.mark.parametrize("kind", ["sweep", "tune"])
def test_a_sweep_killed_mid_trial_resumes_to_the_uninterrupted_results(synthetic_root, tmp_path, kind):
    sweep_dir = tmp_path / "sweep"
    command = sweep_command(kind, sweep_dir, synthetic_root, tmp_path)
    # RAY_ADDRESS=local: the sweep starts a Ray of its own, never joins another running on this machine
    env = {**os.environ, "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0", "RAY_ADDRESS": "local"}
    first_log = tmp_path / "first.log"
    with first_log.open("w") as output:
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        finished = _wait_for(lambda: list(sweep_dir.glob("trials/*/summary.json")), seconds=300)[0].parent
        running = _wait_for(lambda: [t for t in sweep_dir.glob("trials/*") if t != finished and checkpointed(t)],
                            seconds=300)[0]
    except AssertionError as waited:
        raise AssertionError(f"{waited}; the sweep's output ends:\n{first_log.read_text()[-3000:]}") from None
    finally:
        kill_with_its_ray(first)
    assert not (running / "summary.json").exists()
    kept = latest_checkpoint(running)
    kept_step, kept_written = int(kept.read_meta()["step"]), kept.model.stat().st_mtime_ns
    finished_files = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}

    log = tmp_path / "resumed.log"
    with log.open("w") as output:
        try:
            resumed = subprocess.run([*command, "--resume"], cwd=REPO, env=env, stdout=output,
                                     stderr=subprocess.STDOUT, timeout=300)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"--resume ran past 300 s; its output ends:\n{log.read_text()[-3000:]}") from None
    assert resumed.returncode == 0, log.read_text()[-3000:]
    assert {p: p.stat().st_mtime_ns for p in finished_files} == finished_files  # not one file written again
    assert 0 < kept_step < 40 and kept.model.stat().st_mtime_ns == kept_written  # resumed from it, not redone
    steps = [json.loads(line)["step"] for line in (running / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]

    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["finished", "finished"]
    assert sorted(t["name"] for t in summary["trials"]) == sorted(p.name for p in (sweep_dir / "trials").iterdir())
    for trial in (finished, running):
        reference = uninterrupted(trial, tmp_path / "reference" / trial.name)
        assert json.loads((trial / "summary.json").read_text())["miou"] == reference["miou"]
        assert next(t for t in summary["trials"] if t["name"] == trial.name)["metric"] == reference["miou"]
        ours = torch.load(latest_checkpoint(trial).model, weights_only=True)
        theirs = torch.load(latest_checkpoint(Path(reference["run_dir"])).model, weights_only=True)
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    write_report(tmp_path / "reference", tmp_path / "reference-report")  # the uninterrupted sweep's report
    for table in ("summary.csv", "runs.csv"):  # runs.csv names each run's folder: the same names, other parents
        ours = (sweep_dir / "report" / table).read_text().replace(str(sweep_dir / "trials"), "<runs>")
        theirs = (tmp_path / "reference-report" / table).read_text().replace(str(tmp_path / "reference"), "<runs>")
        assert ours == theirs


def uninterrupted(trial: Path, run_dir: Path) -> dict:
    """The trial's own config, trained from scratch in this process into ``run_dir``; its summary."""
    import yaml

    values = yaml.safe_load((trial / "config.yaml").read_text())
    values["run"]["dir"] = str(run_dir)
    return train_plain(Config.model_validate(values), data_workers=0)
