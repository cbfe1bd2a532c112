"""Small pieces of the benchmark harness (raysemi.bench) on hand-made inputs: a protocol's variants, a model's
errors by class, a record in one line, a result's two files. The run store, the suite's outputs and the plan
runner are tested through gain.py and gain_plan.py in tests/test_gain_benchmark.py."""

from __future__ import annotations

import json

import pytest
import torch

from raysemi.bench import runs
from raysemi.bench.confusions import errors_by_class
from raysemi.bench.protocol import Protocol, UnknownVariant, known_variants, variant_overrides
from raysemi.bench.runs import machine_name, measure_runs, write_result, write_run_folder_page
from raysemi.bench.suite import Comparison, Plan, baselines_to_run, record_line
from raysemi.engine.metrics import ConfusionMatrix


def test_a_protocols_variants_stack_the_overrides_and_an_unknown_one_lists_the_known():
    protocol = Protocol(config="p.yaml", all_labels=("data.label_fraction=1.0",), methods={"cps": ("method=cps",),
                        "cac": ("method=cac",)}, controls={"cps": ("cps.weight=0",)})
    assert known_variants(protocol) == ["supervised", "supervised_all_labels", "cps", "cac", "cps_control"]
    assert variant_overrides(protocol, "supervised") == ()
    assert variant_overrides(protocol, "supervised_all_labels") == ("data.label_fraction=1.0",)
    assert variant_overrides(protocol, "cps_control") == ("method=cps", "cps.weight=0")
    with pytest.raises(UnknownVariant, match="cac_control is not defined for this protocol; choose one of "
                                             "supervised, supervised_all_labels, cps, cac, cps_control"):
        variant_overrides(protocol, "cac_control")


def test_baselines_to_run_keeps_the_known_planned_ones_once_at_their_budgets():
    planned = {"m": [Comparison("m", "supervised"), Comparison("m", "supervised", at_total=True),
                     Comparison("m", "m_control"), Comparison("m", "undefined")],
               "m_control": [Comparison("m_control", "supervised")]}
    plan = Plan(lambda method: planned.get(method, []), lambda variant, n: 2 * n if variant.startswith("m") else n,
                lambda protocol: 100, lambda run, baseline: "")
    known = {"supervised", "m", "m_control"}
    assert baselines_to_run(plan, known, ["m"], 100, "supervised") == [("supervised", 100), ("supervised", 200)]
    assert baselines_to_run(plan, known, ["m", "m_control"], 50) == [("supervised", 50), ("supervised", 100)]


def test_errors_by_class_on_a_hand_made_confusion_matrix():
    confusion = ConfusionMatrix(3)
    # true class 0: 6 pixels right, 3 taken by class 2, 1 by class 1; class 1: 4 right; class 2: none at all
    target = torch.tensor([0] * 10 + [1] * 4)
    prediction = torch.tensor([0] * 6 + [2] * 3 + [1] + [1] * 4)
    confusion.update(prediction, target)
    rows = errors_by_class(confusion, ("road", "car", "sky"))
    assert rows["road"] == {"iou": 0.6, "recall": 0.6, "top_error": "sky", "top_error_share": 0.3}
    assert rows["car"] == {"iou": 0.8, "recall": 1.0, "top_error": "road", "top_error_share": 0.0}  # 4 / (4 + 1)
    assert rows["sky"] == {"iou": 0.0, "recall": None, "top_error": None, "top_error_share": None}


def test_record_line_says_a_comparison_and_a_repeatability_record_in_one_line():
    comparison = {"kind": "comparison", "name": "p1/cps-vs-supervised", "seeds": [0, 1], "miou": [0.36, 0.35],
                  "baseline_miou": [0.30, 0.32]}
    assert record_line(comparison) == "p1/cps-vs-supervised (seeds [0, 1]): +4.5 ± 2.1 points"
    repeat = {"kind": "repeatability", "protocol": "p1", "method": "cac", "seed": 1, "miou": [0.4, 0.4, 0.43],
              "torch_threads": [2, 2, 1], "same_threads_diff": 0.0, "other_threads_diff": 0.03}
    assert record_line(repeat) == ("repeatability p1/cac seed 1: mIoU 0.4000 / 0.4000 / 0.4300 at [2, 2, 1] "
                                   "threads; same threads +0.00 points, other +3.00")


def test_write_result_writes_the_record_and_its_table(tmp_path):
    page = write_result(tmp_path / "results", "speed-x", {"a": [1, 2]}, "# x\n", indent=2)
    assert page == tmp_path / "results" / "speed-x.md" and page.read_text() == "# x\n"
    assert (tmp_path / "results" / "speed-x.json").read_text() == json.dumps({"a": [1, 2]}, indent=2)


def test_measure_runs_keeps_earlier_results_and_writes_after_each_run(tmp_path, capsys):
    out = tmp_path / "measured.json"
    out.write_text(json.dumps({"old": {"size": 1}, "b": {"size": 0}}))
    seen = []

    def measure(run_dir):
        seen.append(json.loads(out.read_text()))  # what a stop at this point would have left
        return {"size": len(run_dir.name)}

    results = measure_runs(out, {"a": tmp_path / "run-a", "b": tmp_path / "bb"}, measure,
                           lambda name, result: f"{name}: {result['size']}")
    assert results == {"old": {"size": 1}, "b": {"size": 2}, "a": {"size": 5}}
    assert json.loads(out.read_text()) == results
    assert seen[1]["a"] == {"size": 5}  # a was on disk before b was measured
    assert capsys.readouterr().out.splitlines() == ["a: 5", "b: 2"]


def test_a_run_folder_page_measures_the_named_folders_of_the_protocol_and_writes_its_markdown(tmp_path):
    import argparse

    out = tmp_path / "page-p2.json"
    args = argparse.Namespace(protocol="p2", runs=["a", "bbb"], work=tmp_path / "work")
    write_run_folder_page(args, out, lambda run_dir: {"path": str(run_dir.relative_to(tmp_path))},
                          lambda name, result: name, lambda results: " ".join(sorted(results)))
    assert json.loads(out.read_text()) == {"a": {"path": "work/p2/a"}, "bbb": {"path": "work/p2/bbb"}}
    assert out.with_suffix(".md").read_text() == "a bbb"


def test_machine_name_is_the_cpu_model_and_the_instruction_set_torch_dispatches_on(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel Xeon 8480\n\n"
                       "processor\t: 1\nmodel name\t: Intel Xeon 8480\n")
    assert machine_name(cpuinfo) == "Intel Xeon 8480 (AVX512)"
    monkeypatch.setattr(runs.platform, "processor", lambda: "arm")  # no /proc/cpuinfo (macOS, Windows)
    assert machine_name(tmp_path / "absent") == "arm (AVX512)"
