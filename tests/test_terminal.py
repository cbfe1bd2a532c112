"""The terminal: one ``[raysemi]`` line per log step with elapsed time and ETA; Ray's report lines dropped."""

import logging
import re

from raysemi.engine.loop import _clock, _log_line
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
