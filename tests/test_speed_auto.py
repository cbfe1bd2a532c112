"""``speed_auto.py``'s table (issue 41): the before/after training times, the steady pace and what ``auto``
chose, from a hand-made record (the benchmark itself trains for hours and runs outside the suite)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


def load_speed_auto(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports its sibling gain.py, as `python <script>` does
    spec = importlib.util.spec_from_file_location("speed_auto_benchmark", BENCHMARKS / "speed_auto.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_table_gives_both_ratios_and_the_choices(monkeypatch):
    speed_auto = load_speed_auto(monkeypatch)
    before = {"method": "supervised", "train_time_s": 300.0, "it_per_s": 3.5, "wall_time_s": 320.0}
    after = {"method": "supervised", "train_time_s": 240.0, "it_per_s": 4.2, "wall_time_s": 275.0,
             "speed": {"channels_last": True, "compile": False,
                       "how": {"channels_last": "measured", "compile": "skipped: too short"},
                       "timings": {"format_probe_s": 12.0, "contiguous_s": 0.29, "channels_last_s": 0.24}}}
    record = {"protocol": "p2", "steps": 1000, "device": "cpu", "commit": "abc1234", "date": "2026-12-06",
              "before": ["train.channels_last=false", "train.compile=false"], "runs": [before, after]}
    row = speed_auto.markdown(record).splitlines()[-1]
    # 300 / 240 = 1.25× in training time; 4.2 / 3.5 = 1.20× in steady pace; the probe's 12 s
    assert row == ("| supervised | 300 | 240 | 1.25× | 3.50 → 4.20 | 1.20× | 320 | 275 | channels_last on (measured), "
                   "compile off (skipped: too short) | 12.0 |")
