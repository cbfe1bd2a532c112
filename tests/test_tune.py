"""Ray Tune sweeps: Optuna + ASHA searches, grid sweeps of methods × fractions × seeds, failures, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from raysemi.config import load_config
from raysemi.errors import ConfigError
from raysemi.ray.tune import (
    concurrency,
    grid_points,
    one_line,
    point_name,
    search,
    trial_config,
    trial_resources,
)
from raysemi.sweeps import SweepSpec, load_sweep
from tests.conftest import fast_config

REPO = Path(__file__).resolve().parents[1]


def _spec(**fields) -> SweepSpec:
    return SweepSpec.model_validate({"retries": 0, **fields})


def _config_of(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


# ---- pieces, on hand-made inputs ----


def test_concurrency_leaves_each_trials_data_cpus_free():
    local = load_config(None, ["scaling.num_workers=0"])
    # local mode: driver 0.25 + the training CPU 1 + one stream 1 = 2.25 CPUs a trial
    assert concurrency(local, 1, {"CPU": 2}) == 1  # never 0: Tune queues the rest
    assert concurrency(local, 1, {"CPU": 9}) == 4
    assert concurrency(local, 2, {"CPU": 16}) == 4  # 3.25 a trial
    workers = load_config(None, ["scaling.num_workers=2", "scaling.cpus_per_worker=0.5"])
    assert concurrency(workers, 2, {"CPU": 32}) == 9  # 0.25 + 2 x 0.5 + 2 = 3.25
    gpus = load_config(None, ["scaling.num_workers=2", "scaling.use_gpu=true", "scaling.cpus_per_worker=4"])
    assert concurrency(gpus, 1, {"CPU": 64, "GPU": 8}) == 4  # the GPUs bind first: 8 / 2


def test_a_trial_reserves_a_quarter_cpu_and_the_gpu_only_when_it_trains_itself():
    assert trial_resources(load_config(None, ["scaling.num_workers=0"])) == {"CPU": 0.25}
    assert trial_resources(load_config(None, ["scaling.num_workers=0", "scaling.use_gpu=true"])) == {
        "CPU": 0.25, "GPU": 1}
    assert trial_resources(load_config(None, ["scaling.num_workers=4", "scaling.use_gpu=true"])) == {"CPU": 0.25}


def test_grid_keys_cross_into_one_search_per_point():
    spec = _spec(space={"optim.lr": {"loguniform": [1e-3, 1e-1]}, "data.label_fraction": {"grid": [0.25, 0.5]},
                        "cps.cutmix": {"grid": [True, False]}})
    points = grid_points(spec)
    assert [(p["data.label_fraction"], p["cps.cutmix"]) for p in points] == [
        (0.25, True), (0.25, False), (0.5, True), (0.5, False)]
    assert point_name(points[1]) == "tune-label_fraction=0.25-cutmix=False"
    assert grid_points(_spec(space={"optim.lr": {"uniform": [0.1, 0.2]}})) == [{}]
    assert point_name({}) == "tune"


def test_a_trial_config_gets_its_values_own_run_dir_and_wandb_group(tmp_path):
    base = load_config(None, ["method=cps"])
    cfg = trial_config(base, {"cps.weight": 2.5, "optim.lr": 0.02}, tmp_path / "lr-sweep", "trial-abc")
    assert cfg.cps.weight == 2.5 and cfg.optim.lr == 0.02
    assert cfg.run.dir == str(tmp_path / "lr-sweep" / "trials" / "trial-abc") and cfg.run.name == "trial-abc"
    assert cfg.tracking.wandb.group == "lr-sweep"
    named = load_config(None, ["tracking.wandb.group=mine"])
    assert trial_config(named, {}, tmp_path / "s", "t").tracking.wandb.group == "mine"


def test_a_trial_mirrors_below_the_sweeps_uri_with_the_uri_query_kept_last(tmp_path):
    base = load_config(None, ["run.sync_to=s3://runs/team/sweep?endpoint_override=127.0.0.1:9000&scheme=http"])
    cfg = trial_config(base, {}, tmp_path / "sweep", "trial-abc")
    assert cfg.run.sync_to == "s3://runs/team/sweep/trials/trial-abc?endpoint_override=127.0.0.1:9000&scheme=http"
    plain = trial_config(load_config(None, ["run.sync_to=gs://runs/sweep/"]), {}, tmp_path / "s", "t")
    assert plain.run.sync_to == "gs://runs/sweep/trials/t"


def test_a_failure_reads_as_its_last_line():
    error = RuntimeError("Traceback (most recent call last):\n  File x\n\nRuntimeError: the loss became nan\n")
    assert one_line(error) == "RuntimeError: the loss became nan"


def test_asha_needs_an_evaluation_on_every_rung(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("grace_steps: 100\nspace:\n  optim.lr: {uniform: [0.01, 0.1]}\n")
    with pytest.raises(ConfigError, match=r"grace_steps=100 with metric val_miou needs train.eval_every set to a "
                                          r"divisor of it \(now 0\)"):
        load_sweep(path, load_config(None, []))
    assert load_sweep(path, load_config(None, ["train.eval_every=50"])).grace_steps == 100


def test_a_new_sweep_refuses_a_used_folder_and_resume_needs_a_sweep(synthetic_root, tmp_path):
    base = fast_config(synthetic_root, tmp_path / "unused")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    spec = _spec(scheduler="fifo", space={"optim.lr": {"uniform": [0.01, 0.1]}})
    with pytest.raises(ConfigError, match="busy is not empty; choose an empty or new folder"):
        search(base, spec, tmp_path / "busy")
    with pytest.raises(ConfigError, match="no sweep to resume here"):
        search(base, spec, tmp_path / "nothing", resume=True)


# ---- real Tune runs on the synthetic data (local-mode trials) ----


@pytest.mark.slow
def test_optuna_search_under_asha_runs_its_trials_with_their_values(synthetic_root, tmp_path, ray_local):
    base = fast_config(synthetic_root, tmp_path / "unused", "train.eval_every=2", "train.steps=100")
    spec = _spec(samples=2, steps=4, grace_steps=2, reduction_factor=2,  # steps: each trial's budget
                 space={"optim.lr": {"loguniform": [1e-3, 1e-1]}})
    outcomes = search(base, spec, tmp_path / "sweep")
    assert len(outcomes) == 2
    for o in outcomes:
        assert 1e-3 <= o.params["optim.lr"] <= 1e-1
        run_dir = tmp_path / "sweep" / "trials" / o.name
        assert _config_of(run_dir)["optim"]["lr"] == o.params["optim.lr"]  # the sampled value reached the run
        assert _config_of(run_dir)["train"]["steps"] == 4
        assert o.status in ("finished", "stopped early") and o.steps in (2, 4) and 0.0 <= o.metric <= 1.0
        if o.status == "finished":  # its summary is written before its last report ends the trial
            assert json.loads((run_dir / "summary.json").read_text())["miou"] == pytest.approx(o.metric)
    assert {o.status for o in outcomes} <= {"finished", "stopped early"} and outcomes[0].status == "finished"
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert summary["trial_steps"] == sum(o.steps for o in outcomes)
    assert summary["best"]["metric"] == max(o.metric for o in outcomes)
    assert (tmp_path / "sweep" / "tune").is_dir() and (tmp_path / "sweep" / "sweep.yaml").is_file()


@pytest.mark.slow
def test_a_failing_trial_is_retried_then_recorded_and_the_sweep_goes_on(synthetic_root, tmp_path, ray_local):
    base = fast_config(synthetic_root, tmp_path / "unused")
    spec = _spec(scheduler="fifo", retries=1, space={"optim.lr": {"grid": [0.01, 1.0e9]}})  # 1e9: a nan loss
    outcomes = search(base, spec, tmp_path / "sweep")
    by_lr = {o.params["optim.lr"]: o for o in outcomes}
    assert by_lr[0.01].status == "finished" and by_lr[0.01].steps == 4
    assert by_lr[1.0e9].status == "failed"
    assert by_lr[1.0e9].error.endswith("the loss became nan at step 1; lower optim.lr or check the data")
    assert by_lr[1.0e9].attempts == 2 and by_lr[0.01].attempts == 1  # run once, retried once, then recorded
    assert json.loads((tmp_path / "sweep" / "summary.json").read_text())["failed"] == 1


@pytest.mark.slow
def test_a_grid_sweep_runs_each_method_on_its_own_split(synthetic_root, tmp_path, ray_local, capsys):
    """Also issue 24's command: the default layout (one 1-CPU worker a trial) on a 2-CPU Ray hung after 10
    steps; its trials now run in local mode, and a stall would end a trial after 60 s rather than never."""
    from raysemi.cli import main

    sweep_dir = tmp_path / "sweep"
    overrides = [o for o in _overrides(synthetic_root) if o != "scaling.num_workers=0"]
    overrides += ["tracking.wandb.mode=offline", "train.stall_timeout_s=60"]
    status = main(["sweep", "--methods", "supervised", "--fractions", "1/4,1/2", "--seeds", "3",
                   "--out", str(sweep_dir), *overrides])
    assert status == 0
    assert ("a supervised trial with 1 worker(s) x 1 CPU needs 2.25 CPU (0.25 for its driver, the workers', 1 CPU "
            "per data stream) and this Ray has 2 CPU; the trials run in local mode (scaling.num_workers=0, 1.25 "
            "CPU)") in capsys.readouterr().out
    statuses = [t["status"] for t in json.loads((sweep_dir / "summary.json").read_text())["trials"]]
    assert statuses == ["finished", "finished"]
    for fraction, labeled in (("1_4", 6), ("1_2", 12)):  # 24 synthetic train images
        split = sweep_dir / "splits" / f"{fraction}-seed3"
        assert len((split / "labeled.txt").read_text().splitlines()) == labeled
        run_dir = sweep_dir / "trials" / f"supervised-{fraction}-seed3"
        assert (run_dir / "labeled.txt").read_text() == (split / "labeled.txt").read_text()
        assert _config_of(run_dir)["run"]["seed"] == 3 and (run_dir / "summary.json").is_file()
        assert _config_of(run_dir)["scaling"]["num_workers"] == 0
        assert list((run_dir / "wandb").glob("offline-run-*"))  # one W&B run per trial
    report = (sweep_dir / "report" / "summary.csv").read_text()
    assert "supervised" in report and "1/4" in report and "1/2" in report
    assert list((sweep_dir / "wandb").glob("offline-run-*"))  # the report's plots, logged to W&B


def _overrides(data_root: Path) -> list[str]:
    return ["data.format=generic", f"data.root={data_root}", "data.crop_size=[48,64]", "model.backbone=tiny",
            "model.pretrained=false", "model.head_channels=16", "train.steps=4", "train.batch_size=4",
            "train.log_every=2", "train.torch_threads=1", "eval.batch_size=4", "scaling.num_workers=0"]


@pytest.mark.slow
@pytest.mark.drill
def test_an_interrupted_sweep_resumes_where_it_stopped(synthetic_root, tmp_path):
    """Ctrl-C during the second trial, then ``--resume``: the finished trial is not run again, the other
    completes, and the search holds exactly its two trials."""
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("samples: 2\nscheduler: fifo\nconcurrency: 1\nretries: 0\n"
                          "space:\n  optim.lr: {loguniform: [1.0e-3, 1.0e-1]}\n")
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "raysemi.cli", "tune", "--sweep", str(sweep_file), "--out", str(sweep_dir),
               *_overrides(synthetic_root), "train.steps=600", "train.checkpoint_every=100", "train.log_every=50"]
    env = {**os.environ, "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        finished = _wait_for(lambda: list(sweep_dir.glob("trials/*/summary.json")), seconds=600)
        _wait_for(lambda: len(list(sweep_dir.glob("trials/*"))) == 2, seconds=300)  # the second has started
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    finally:
        first.kill()
    done_before = finished[0].parent
    log_before = (done_before / "metrics.jsonl").read_text()
    interrupted = next(p for p in (sweep_dir / "trials").iterdir() if p != done_before)
    assert not (interrupted / "summary.json").exists()

    resumed = subprocess.run([*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["finished", "finished"]
    assert sorted(p.name for p in (sweep_dir / "trials").iterdir()) == sorted(t["name"] for t in summary["trials"])
    assert (done_before / "metrics.jsonl").read_text() == log_before  # not trained again
    steps = [json.loads(line)["step"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(50, 601, 50))  # one continuous log: redone steps replace the lost ones


def _wait_for(condition, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"waited {seconds} s for {condition}")
