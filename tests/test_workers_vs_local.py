"""The 2-workers-against-local benchmark's arithmetic, on hand-made mIoUs (the runs themselves are not run here)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"))

from workers_vs_local import compare, kept_rows, markdown  # noqa: E402


def test_the_difference_is_judged_against_the_larger_seed_spread():
    result = compare({"local": [0.50, 0.52, 0.54], "2workers": [0.51, 0.53, 0.55]})
    assert result["difference"] == pytest.approx(0.01)  # means 0.52 and 0.53
    assert result["local"]["std"] == pytest.approx(0.02) and result["local"]["range"] == pytest.approx(0.04)
    assert result["within_spread"]
    far = compare({"local": [0.50, 0.51, 0.52], "2workers": [0.60, 0.61, 0.62]})
    assert far["difference"] == pytest.approx(0.10) and not far["within_spread"]  # std 0.01 each
    row = far | {"worker_overrides": ["scaling.cpus_per_worker=0.5"], "code_version": "abc123", "date": "2026-12-07"}
    table = markdown({"seeds": [0, 1, 2], "methods": {"cac": row}})
    assert ("| cac | 0.5100 ± 0.0100 | 0.6100 ± 0.0100 | +0.1000 | no | scaling.cpus_per_worker=0.5 | abc123 | "
            "2026-12-07 |") in table


def test_a_method_not_rerun_keeps_its_row_only_over_the_same_seeds():
    previous = {"seeds": [0, 1, 2], "methods": {"supervised": {"difference": 0.01}, "cac": {"difference": 0.02}}}
    assert kept_rows(previous, [0, 1, 2], ["cac"]) == {"supervised": {"difference": 0.01}}
    assert kept_rows(previous, [0, 1], ["cac"]) == {}  # two seeds do not compare with three
    assert kept_rows(None, [0, 1, 2], ["cac"]) == {}
