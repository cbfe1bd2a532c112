"""No silent hang: layouts that cannot fit are adapted or refused before a sweep, and a stalled run ends with
the watchdog's one-line reason (``train.stall_timeout_s``), its run directory resumable."""

import json
import threading
import time

import pytest

import raysemi.ray.train as ray_train
from raysemi.config import load_config
from raysemi.engine.checkpoint import latest_checkpoint
from raysemi.engine.loop import WorkerEnv
from raysemi.engine.watchdog import StallError, WatchedIterator, watched
from raysemi.errors import ConfigError
from raysemi.ray.train import train, worker_group_start_retries
from raysemi.ray.tune import plan_layout, trial_needs
from raysemi.tracking import read_metrics
from tests.conftest import fast_config


def _yields_then_blocks(values, release: threading.Event):
    yield from values
    release.wait()  # a data stream that never delivers again (until the test lets it go)


def test_a_watched_iterator_passes_values_and_ends_a_wait_past_its_timeout():
    release = threading.Event()
    try:
        stream = WatchedIterator(_yields_then_blocks([1, 2], release), "data stream 'labeled'", 0.2)
        assert [next(stream), next(stream)] == [1, 2]
        began = time.monotonic()
        with pytest.raises(StallError, match=r"^no batch from data stream 'labeled' for 0.2 s$"):
            next(stream)
        assert 0.2 <= time.monotonic() - began < 2
    finally:
        release.set()
    assert list(WatchedIterator(iter([3, 4]), "val", 1)) == [3, 4]  # the end passes through
    bad = WatchedIterator(iter(int(c) for c in "1x"), "val", 1)
    assert next(bad) == 1
    with pytest.raises(ValueError):  # so do the stream's own errors
        next(bad)
    plain = iter([5])
    assert watched(plain, "val", 0) is plain  # 0 turns the watchdog off


def test_a_sweep_trial_layout_falls_back_to_local_mode_or_is_refused():
    default = load_config(None, [])  # supervised, one worker of 1 CPU: 0.25 + 1 + 1 stream = 2.25 CPUs
    assert trial_needs(default, 1) == {"CPU": 2.25}
    assert plan_layout(default, {"CPU": 4.0}) is default
    local = plan_layout(default, {"CPU": 2.0})  # the 2-core machine: local mode needs 0.25 + 1
    assert local.scaling.num_workers == 0 and trial_needs(local, 1) == {"CPU": 1.25}
    with pytest.raises(ConfigError, match=r"^scaling: a supervised trial with 1 worker\(s\) x 1 CPU needs 2.25 CPU "
                                          r".* and this Ray has 1 CPU, too few even in local mode \(1.25 CPU\)"):
        plan_layout(default, {"CPU": 1.0})
    gpus = load_config(None, ["method=cps", "scaling.num_workers=2", "scaling.use_gpu=true"])
    assert trial_needs(gpus, 2) == {"CPU": 4.25, "GPU": 2.0}
    assert plan_layout(gpus, {"CPU": 8.0, "GPU": 1.0}).scaling.num_workers == 0  # local mode takes 1 GPU
    with pytest.raises(ConfigError, match=r"this Ray has 8 CPU \+ 0 GPU, too few even in local mode"):
        plan_layout(gpus, {"CPU": 8.0})
    on_cluster = load_config(None, ["scaling.address=ray://head:10001"])  # may autoscale: not judged now
    assert plan_layout(on_cluster, {"CPU": 1.0}) is on_cluster


def test_the_driver_gives_up_on_a_worker_group_after_the_stall_timeout():
    # Ray Train tries to place a worker group for 60 s at a time, forever unless limited
    assert worker_group_start_retries(load_config(None, [])) == 9  # 600 s: 10 tries
    assert worker_group_start_retries(load_config(None, ["train.stall_timeout_s=61"])) == 1
    assert worker_group_start_retries(load_config(None, ["train.stall_timeout_s=5"])) == 0  # one try at least
    assert worker_group_start_retries(load_config(None, ["train.stall_timeout_s=0"])) == -1  # off: unlimited


def test_a_stalled_stream_ends_the_run_with_the_reason_and_the_same_command_resumes(
        synthetic_root, tmp_path, ray_local, monkeypatch):
    release = threading.Event()

    def env_whose_stream_stalls_after_3_batches(**fields):
        fields["streams"] = {name: _yields_then_blocks([next(s) for _ in range(3)], release)
                             for name, s in fields["streams"].items()}
        return WorkerEnv(**fields)

    run_dir = tmp_path / "run"
    cfg = fast_config(synthetic_root, run_dir, "train.steps=6", "train.checkpoint_every=2",
                      "train.stall_timeout_s=2")
    monkeypatch.setattr(ray_train, "WorkerEnv", env_whose_stream_stalls_after_3_batches)
    try:
        with pytest.raises(StallError) as stalled:
            train(cfg)
    finally:
        release.set()
    assert str(stalled.value).startswith(
        "train.stall_timeout_s=2: no batch from data stream 'labeled' for 2 s at step 3/6 (Ray Data may have no "
        "free CPU")
    assert str(stalled.value).endswith("keeps its checkpoints and the same command resumes from step 3")
    assert latest_checkpoint(run_dir).read_meta()["step"] == 3  # the steps since step 2's checkpoint kept

    monkeypatch.undo()
    # the resumed run reads real Ray Data streams, whose cold start can take longer than 2 s on a busy machine
    summary = train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"stall_timeout_s": 600.0})}))
    assert summary["steps"] == 6 and [r["step"] for r in read_metrics(run_dir)] == [2, 4, 6]


@pytest.mark.slow
def test_a_stalled_trial_is_recorded_as_failed_with_the_reason(synthetic_root, tmp_path, ray_local):
    """A 10 ms stall timeout stalls a trial on purpose: no cold start delivers its first batch that fast. (The
    sweep going on past a failed trial is checked with a NaN loss in test_tune.py.)"""
    from raysemi.ray.tune import search
    from raysemi.sweeps import SweepSpec

    base = fast_config(synthetic_root, tmp_path / "unused")
    spec = SweepSpec.model_validate({"retries": 0, "scheduler": "fifo",
                                     "space": {"train.stall_timeout_s": {"grid": [0.01]}}})
    [stalled] = search(base, spec, tmp_path / "sweep")
    assert stalled.status == "failed" and stalled.steps == 0
    assert stalled.error.startswith("RuntimeError: train.stall_timeout_s=0.01: no batch from data stream 'labeled' "
                                    "for 0.01 s at step 0/4")
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert summary["failed"] == 1 and summary["trials"][0]["error"] == stalled.error
    assert (tmp_path / "sweep" / "trials" / stalled.name / "config.yaml").is_file()  # resumable with --resume
