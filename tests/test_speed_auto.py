"""``speed_auto.py``'s table (issue 41): the before/after training times, the steady pace and what ``auto``
chose, from a hand-made record (the benchmark itself trains for hours and runs outside the suite)."""

from __future__ import annotations

from pathlib import Path

SPEED_AUTO = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "speed_auto.py"


def test_the_table_gives_both_ratios_and_the_choices(benchmark_script):
    speed_auto = benchmark_script(SPEED_AUTO)  # it imports its sibling gain.py
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
