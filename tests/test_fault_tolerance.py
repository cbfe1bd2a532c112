"""Runs that survive failures: a killed Ray Train worker, an interrupted checkpoint write, a torn log line."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from raysemi.cli import main
from raysemi.engine import checkpoint as checkpoint_module
from raysemi.engine import storage
from raysemi.engine.checkpoint import latest_checkpoint, list_checkpoints, write_checkpoint
from raysemi.engine.storage import MIB
from raysemi.ray.train import train
from raysemi.tracking import read_metrics
from tests.conftest import fast_config, train_until_a_crash_at_step_5


def config_file(data_root: Path, tmp_path: Path, run_dir: Path, *overrides: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(fast_config(data_root, run_dir, *overrides).to_yaml())
    return path


def train_workers() -> list[psutil.Process]:
    """This test process's Ray Train worker processes (children of the Ray it started, not of any other)."""
    return [p for p in psutil.Process().children(recursive=True)
            if "RayTrainWorker" in " ".join(_cmdline(p))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def kill_a_worker_after(run_dir, step: int, timeout_s: float = 600) -> dict:
    """In a thread: once ``metrics.jsonl`` reaches ``step``, SIGKILL one training worker; the dict it returns
    gets the killed pid and the log's records at that moment."""
    killed: dict = {}

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            steps = [r["step"] for r in read_metrics(run_dir)] if (run_dir / "metrics.jsonl").is_file() else []
            workers = train_workers()
            if steps and steps[-1] >= step and workers:
                killed.update(records=read_metrics(run_dir), pid=workers[-1].pid)
                os.kill(workers[-1].pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    return killed


@pytest.mark.slow
@pytest.mark.drill
def test_a_killed_worker_restarts_from_the_last_checkpoint(synthetic_root, tmp_path, ray_local):
    run_dir = tmp_path / "run"
    cfg = fast_config(synthetic_root, run_dir, "scaling.num_workers=2", "scaling.cpus_per_worker=0.5",
                      "scaling.max_failures=1", "train.steps=40", "train.checkpoint_every=20",
                      "train.log_every=4", "train.eval_every=0")  # each report costs ~1 s on 2 CPUs
    killed = kill_a_worker_after(run_dir, step=24)
    summary = train(cfg)

    before = {r["step"]: r for r in killed["records"]}
    assert 24 <= max(before) < 40  # the kill landed between the checkpoints at 20 and 40
    assert not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE
    # one continuous log: every logged step once, in order
    after = {r["step"]: r for r in read_metrics(run_dir)}
    assert list(after) == list(range(4, 41, 4))
    # steps up to the checkpoint were not redone (their records, timings included, are the first run's);
    # every step after it was (new timings)
    assert all(after[step] == before[step] for step in range(4, 21, 4))
    assert all(after[step]["steps_per_s"] != before[step]["steps_per_s"] for step in range(24, max(before) + 1, 4))
    assert summary["steps"] == 40 and latest_checkpoint(run_dir).read_meta()["step"] == 40
    assert [c.read_meta()["step"] for c in list_checkpoints(run_dir)] == [20, 40]


def test_an_interrupted_checkpoint_write_leaves_the_previous_one_current(tmp_path, monkeypatch):
    weights = {"w": torch.ones(2)}
    write_checkpoint(tmp_path, 2, weights, {"step": 2}, "method: supervised\n", {})
    real_save = torch.save
    calls = []

    def save_then_crash(obj, handle, *args, **kwargs):
        calls.append(handle)
        if len(calls) == 2:  # model.pt is on disk, training_state.pt is half-written when Ctrl-C arrives
            handle.write(b"\x80\x02half")
            raise KeyboardInterrupt
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, 4, weights, {"step": 4}, "method: supervised\n", {})
    assert latest_checkpoint(tmp_path).read_meta()["step"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002"]


WRITER_KILLED_MID_CHECKPOINT = """
import sys, time, torch
from pathlib import Path
from raysemi.engine import checkpoint
real_save = torch.save
def slow_save(obj, handle, *args, **kwargs):
    if Path(handle.name).name == "training_state.pt":  # half of it reaches the disk, then the writer hangs
        handle.write(b"\\x80\\x02half")
        handle.flush()
        time.sleep(600)
    real_save(obj, handle, *args, **kwargs)
checkpoint.torch.save = slow_save
checkpoint.write_checkpoint(Path(sys.argv[1]), 6, {"w": torch.ones(2)}, {"step": 6}, "", {})
"""


@pytest.mark.slow
def test_a_writer_killed_mid_checkpoint_is_ignored_by_resume_and_cleaned_up(synthetic_root, tmp_path, ray_local):
    run_dir = tmp_path / "run"
    cfg = fast_config(synthetic_root, run_dir, "train.steps=6", "train.checkpoint_every=2")
    train_until_a_crash_at_step_5(cfg)

    # a process SIGKILLed while writing the step-6 checkpoint: no cleanup ran, its staging folder stays
    writer = subprocess.Popen([sys.executable, "-c", WRITER_KILLED_MID_CHECKPOINT, str(run_dir)])
    deadline = time.monotonic() + 120
    while not list((run_dir / "checkpoints").glob(".tmp-*/training_state.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    [staging] = (run_dir / "checkpoints").glob(".tmp-step_00000006-*")
    assert {p.name for p in staging.iterdir()} == {"model.pt", "training_state.pt"}
    assert latest_checkpoint(run_dir).read_meta()["step"] == 4  # resume never picks the half-written one

    summary = train(cfg)  # the same command resumes from step 4
    assert summary["steps"] == 6 and latest_checkpoint(run_dir).read_meta()["step"] == 6
    assert not staging.exists()  # the next checkpoint write removed the dead writer's leftovers
    assert [r["step"] for r in read_metrics(run_dir)] == [2, 4, 6]


def test_a_torn_last_metrics_line_is_dropped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 2, "loss": 1.5}\n{"step": 4, "lo')
    assert read_metrics(tmp_path) == [{"step": 2, "loss": 1.5}]


def test_storage_that_cannot_be_written_fails_before_training(synthetic_root, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["train", "-c", str(config_file(synthetic_root, tmp_path, blocker / "run"))]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: run.dir={blocker / 'run'}: {blocker} is a file, not a folder; choose another run.dir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through folder permissions")
def test_a_read_only_folder_fails_before_training(synthetic_root, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["train", "-c", str(config_file(synthetic_root, tmp_path, locked / "run"))]) == 2
    assert "cannot create files in" in capsys.readouterr().err and not (locked / "run").exists()


def test_too_little_free_space_fails_before_training(synthetic_root, tmp_path, monkeypatch, capsys):
    # the fast config's model holds 248,640 bytes of weights: 3 checkpoints x 4 copies + 64 MiB headroom = 66.8 MiB
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 50 * MIB))
    assert main(["train", "-c", str(config_file(synthetic_root, tmp_path, tmp_path / "run"))]) == 2
    assert capsys.readouterr().err.strip() == (f"error: run.dir={tmp_path / 'run'}: 50 MiB free on its disk, the "
                                               "run needs about 67 MiB for its checkpoints; free space or choose "
                                               "another run.dir")
    assert not (tmp_path / "run").exists()


def test_a_disk_that_fills_mid_run_ends_it_with_one_line(synthetic_root, tmp_path, ray_local, monkeypatch, capsys):
    real_open = Path.open

    def full_after_first_checkpoint(path, mode="r", *args, **kwargs):
        if path.name == "training_state.pt" and "step_00000004" in path.parent.name:
            return real_open(Path("/dev/full"), mode, *args, **kwargs)  # every write: ENOSPC
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full_after_first_checkpoint)
    config = config_file(synthetic_root, tmp_path, tmp_path / "run", "train.checkpoint_every=2")
    assert main(["train", "-c", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'run' / 'checkpoints' / 'step_00000004'}: could not write the "
                          "step-4 checkpoint (No space left on device)") and "\n" not in err
    assert [c.read_meta()["step"] for c in list_checkpoints(tmp_path / "run")] == [2]  # resume starts there
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000002"]
    assert not (tmp_path / "run" / "summary.json").exists()
