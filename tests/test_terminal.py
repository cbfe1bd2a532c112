"""The terminal: one ``[raysemi]`` line per log step with elapsed time and ETA; Ray's report lines dropped."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from raysemi.engine.loop import _clock, _log_line
from raysemi.ray.console import RAY_LOG, TOKEN_AUTH_LOGGER, RunLog, WorkerOutput, quiet_token_auth_warning
from raysemi.ray.train import silence_report_lines, train
from tests.conftest import fast_config


def test_log_line_says_elapsed_time_and_eta():
    line = _log_line(20, 100, {"loss": 0.4123, "steps_per_s": 2.0, "data_wait_frac": 0.05}, 12.4, 48.0)
    assert line == "step 20/100 | loss 0.4123 | 2.00 it/s, data wait 5.0% | 0:00:12 elapsed, ETA 0:00:48"
    assert _clock(3725.4) == "1:02:05"


def test_ray_report_lines_are_dropped_and_others_kept():
    from ray.train.v2._internal.execution import context

    silence_report_lines()
    silence_report_lines()  # idempotent: one filter
    ray_logger = logging.getLogger(context.__file__)
    seen: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())
    ray_logger.addHandler(handler)
    level = ray_logger.level
    ray_logger.setLevel(logging.INFO)
    try:
        ray_logger.info("Reporting training result 3: TrainingReport(metrics={'step': 2}) from rank 0")
        ray_logger.info("something else")
    finally:
        ray_logger.removeHandler(handler)
        ray_logger.setLevel(level)
    assert seen == ["something else"]
    assert sum(type(f).__name__ == "_DropReportLines" for f in ray_logger.filters) == 1


def test_one_line_per_log_step(synthetic_root, tmp_path, ray_local, capsys):
    train(fast_config(synthetic_root, tmp_path / "run", "train.steps=4", "train.log_every=2"))
    out = capsys.readouterr().out.splitlines()
    steps = [line for line in out if line.startswith("[raysemi] step ")]
    assert [line.split(" | ")[0] for line in steps] == ["[raysemi] step 2/4", "[raysemi] step 4/4"]
    assert all(re.search(r"\| \d+:\d\d:\d\d elapsed, ETA \d+:\d\d:\d\d$", line) for line in steps)
    assert steps[1].endswith("ETA 0:00:00")
    assert not any("Reporting training result" in line for line in out)


# ---- issue 38: a default run prints its step lines, its results table and at most 5 other lines ----

def _results_table(lines: list[str]) -> list[str]:
    """The rich table ``raysemi train`` prints: its title line through its bottom border."""
    start = next(i for i, line in enumerate(lines) if line == "supervised on synthetic")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("└"))
    return lines[start:end + 1]


@pytest.mark.slow
def test_a_default_run_prints_its_steps_its_table_and_at_most_5_other_lines(tmp_path):
    """A subprocess ``raysemi train`` with one Ray Train worker (the default scaling) on a tiny synthetic set,
    stdout and stderr into one pipe (not a terminal), as a user's log file gets it."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "raysemi.cli", "train", f"data.root={tmp_path / 'data'}",
               "data.synthetic.num_train=16", "data.synthetic.num_val=4", "data.synthetic.height=48",
               "data.synthetic.width=64", "data.crop_size=[48,64]", "model.head_channels=16", "train.steps=4",
               "train.log_every=2", "train.batch_size=4", "eval.batch_size=4", "train.torch_threads=1",
               f"run.dir={run_dir}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          timeout=600, cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode == 0, done.stdout
    steps = [line for line in lines if line.startswith("[raysemi] step ")]
    assert [line.split(" | ")[0] for line in steps] == ["[raysemi] step 2/4", "[raysemi] step 4/4"]
    table = _results_table(lines)
    others = [line for line in lines if line not in steps and line not in table]
    assert len(others) <= 5, "\n".join(others)
    assert "\x1b[" not in done.stdout and "pid=" not in done.stdout  # no colour codes, no worker prefixes
    assert "RAY_AUTH_MODE=disabled" not in done.stdout  # no advice to turn authentication off
    routed = (run_dir / RAY_LOG).read_text()
    assert "Started training worker group" in routed and "execution finished" in routed


def test_ray_lines_go_to_the_run_log_and_step_lines_print_bare(tmp_path, capsys):
    """The driver's printer of worker output on Ray's batches as its log monitor sends them."""
    printed: list[tuple[list[str], bool]] = []
    output = WorkerOutput(RunLog(tmp_path / RAY_LOG), lambda data, ignore_prefix: printed.append(
        (data["lines"], ignore_prefix)), isatty=False)
    output({"actor_name": "TrainController", "pid": 7, "is_err": False,
            "lines": ["Requesting resources: {'CPU': 1.0} * 1", "Started training worker group of size 1: "]})
    output({"actor_name": "RayTrainWorker", "pid": 8, "is_err": False,
            "lines": ["Setting up process group for: env:// [rank=0, world_size=1]",
                      "[raysemi] step 2/4 | loss 1.0000", "UserWarning: something of the user's"]})
    output({"actor_name": "SplitCoordinator", "pid": 9, "is_err": False,
            "lines": ["Progress bars disabled. To enable, set ...", "Dataset val_0 execution finished in 0.2 s"]})
    assert capsys.readouterr().out == "[raysemi] step 2/4 | loss 1.0000\n"
    assert printed == [(["UserWarning: something of the user's"], True)]  # as Ray prints it, without prefix
    assert (tmp_path / RAY_LOG).read_text().splitlines() == [
        "(TrainController pid=7) Requesting resources: {'CPU': 1.0} * 1",
        "(TrainController pid=7) Started training worker group of size 1: ",
        "(RayTrainWorker pid=8) Setting up process group for: env:// [rank=0, world_size=1]",
        "(SplitCoordinator pid=9) Progress bars disabled. To enable, set ...",
        "(SplitCoordinator pid=9) Dataset val_0 execution finished in 0.2 s"]


def test_the_token_auth_warning_goes_to_the_run_log(tmp_path):
    logger = logging.getLogger(TOKEN_AUTH_LOGGER)
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)  # as a Ray started at warning level leaves it
    try:
        quiet_token_auth_warning(tmp_path)
        logger.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        for added in logger.filters[:]:
            logger.removeFilter(added)
    assert seen == []
    assert "RAY_AUTH_MODE=disabled to opt out" in (tmp_path / RAY_LOG).read_text()
