"""The gain benchmark's arithmetic on hand-made run JSONs, its resume after an interruption, its options, and
the plan runner (raysemi.bench.plan, gain_plan.py) running invocations side by side within its limits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from raysemi.bench import lineage, pairs, quotes, tables, versions
from raysemi.bench import plan as bench_plan
from raysemi.bench.pairs import difference_text
from raysemi.bench.runs import machine_name, step_times
from raysemi.bench.store import run_name
from raysemi.bench.tables import levelled_off
from raysemi.config import load_config
from raysemi.data.dataset import open_dataset
from raysemi.data.weak_labels import mask_boxes
from raysemi.errors import RaysemiError
from tests.conftest import fast_config

REPO = Path(__file__).resolve().parents[1]


BENCHMARKS = REPO / "experiments" / "benchmarks"


@pytest.fixture
def gain(tmp_path, monkeypatch, benchmark_script):
    module = benchmark_script(BENCHMARKS / "gain.py")
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(module, "RUNS", tmp_path / "results" / "gain")
    monkeypatch.setattr(module, "WORK", tmp_path / "work")
    monkeypatch.setattr(module, "QUOTING", ())  # the repository's documents are checked, not rewritten
    monkeypatch.chdir(tmp_path)  # main() moves to the repository root; this puts the cwd back afterwards
    return module


def write_run(gain, method, seed, miou, baseline=None, iou=None, overrides=(), iterations=600, code="v1", **fields):
    """A hand-made run JSON (``code``: its code_version; None leaves the field out, as runs from before it)."""
    run = {"protocol": "p1", "method": method, "baseline": baseline, "seed": seed, "iterations": iterations,
           "overrides": list(overrides), "val_miou": miou, "per_class_iou": iou or {"a": miou, "b": None},
           "train_time_s": 100.0, "it_per_s": 6.0 if method == "supervised" else 2.0, "wall_time_s": 120.0,
           "curve": [[300, miou - 0.05], [450, miou - 0.005], [600, miou]], "commit": "abc1234",
           **({"code_version": code} if code else {}), **fields}
    split = fields.get("split", "report")
    path = gain.RUNS / "p1" / f"{run_name(method, seed, iterations, tuple(overrides), split)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run))


def test_summary_pairs_seeds_and_reports_mean_and_std_of_differences(gain):
    write_run(gain, "supervised", 0, 0.30, iou={"a": 0.5, "b": 0.1})
    write_run(gain, "supervised", 1, 0.32, iou={"a": 0.6, "b": None})
    write_run(gain, "cps", 0, 0.36, "supervised", iou={"a": 0.7, "b": 0.2})
    write_run(gain, "cps", 1, 0.35, "supervised", iou={"a": 0.6, "b": 0.1})
    write_run(gain, "cps", 2, 0.40, "supervised")  # no baseline run for seed 2: left out of the pairing
    write_run(gain, "cps", 0, 0.31, "supervised", overrides=("cps.weight=3",))  # an ablation: its own record

    records = gain.write_outputs()

    assert records == json.loads((gain.RESULTS / "summary.json").read_text())
    plain, ablation = sorted(records, key=lambda r: "overrides" in r)
    assert plain["seeds"] == [0, 1] and plain["miou"] == [0.36, 0.35] and plain["baseline_miou"] == [0.30, 0.32]
    assert plain["diff_mean"] == pytest.approx(0.045)  # (0.06 + 0.03) / 2
    assert plain["diff_std"] == pytest.approx(0.0212, abs=1e-4)  # sample std of 0.06 and 0.03: 0.015·√2
    assert ablation["overrides"] == ["cps.weight=3"] and ablation["diff_mean"] == pytest.approx(0.01)
    table = (gain.RUNS / "README.md").read_text()
    # each curve ends miou − 0.05, miou − 0.005, miou: the tail means differ as the last evaluations do
    assert plain["tail_miou"] == pytest.approx([0.36 - 0.055 / 3, 0.35 - 0.055 / 3])
    assert "| 0 | 0.3000 | 0.3600 | +6.0 | +6.0 | 6.00 | 2.00 |" in table
    assert "last 3 evaluations (a check on the last one's noise): +4.5 ± 2.1 points." in table
    assert "**+4.5 ± 2.1 points**" in table and "time per iteration 3.00× the baseline's" in table
    assert "| a | 0.5500 | 0.6500 | +10.0 |" in table  # class a: baseline mean 0.55, method mean 0.65
    assert "| b | 0.1000 | 0.1500 | +5.0 |" in table  # absent (None) values are left out of the means


def test_headroom_record_and_budget_curve(gain):
    for seed, (k, everything) in enumerate([(0.26, 0.55), (0.24, 0.57)]):
        write_run(gain, "supervised", seed, k)
        write_run(gain, "supervised_all_labels", seed, everything, "supervised")
    (record,) = gain.write_outputs()
    assert (record["method"], record["baseline"]) == ("supervised_all_labels", "supervised")
    assert record["diff_mean"] == pytest.approx(0.31)
    assert "| 600 | 0 | 0.2600 | 300:0.210 450:0.255 600:0.260 | yes |" in (gain.RUNS / "README.md").read_text()


def test_per_class_tables_show_what_all_labels_reach_beside_each_method(gain):
    write_run(gain, "supervised", 0, 0.30, iou={"road": 0.5, "pole": 0.0})
    write_run(gain, "cps", 0, 0.40, "supervised", iou={"road": 0.8, "pole": 0.02})
    write_run(gain, "supervised_all_labels", 0, 0.45, "supervised", iou={"road": 0.9, "pole": 0.0})
    write_run(gain, "supervised_all_labels", 1, 0.47, iou={"road": 0.8, "pole": 0.04})  # no seed-1 baseline
    write_run(gain, "supervised_all_labels", 0, 0.40, iterations=300, iou={"road": 0.1, "pole": 0.1})  # other budget

    gain.write_outputs()

    table = (gain.RUNS / "README.md").read_text()
    cps, headroom = (next(s for s in table.split("### ") if s.startswith(f"p1: {m} against")) for m in
                     ("cps", "supervised_all_labels"))
    assert "| road | 0.5000 | 0.8000 | +30.0 | 0.8500 |" in cps  # all labels: mean of 0.9 and 0.8, at 600 it only
    assert "| pole | 0.0000 | 0.0200 | +2.0 | 0.0200 |" in cps
    assert "mean of seeds [0, 1]" in cps
    assert "all labels IoU" not in headroom and "| road | 0.5000 | 0.9000 | +40.0 |" in headroom


def test_levelled_off_looks_at_the_last_quarter_only():
    assert levelled_off([[100, 0.1], [700, 0.52], [800, 0.5]])  # 700 >= 600: a band of 0.02 (±1 point)
    assert not levelled_off([[100, 0.1], [600, 0.479], [800, 0.5]])  # 600 is in the last quarter: 0.021
    assert not levelled_off([[100, 0.1], [700, 0.49], [750, 0.515], [800, 0.5]])  # 0.025 wide
    assert step_times([{"step": 50, "steps_per_s": 1.0}, {"step": 100, "steps_per_s": 2.0},
                            {"step": 150, "steps_per_s": 2.0}], 150) == {"train_time_s": 100.0, "it_per_s": 2.0}


def test_an_interrupted_benchmark_resumes_without_rerunning_finished_runs(gain, monkeypatch):
    trained = []

    def fake_train(cfg):
        variant = Path(cfg.run.dir).name.split("-seed")[0]
        if variant == "cps" and cfg.run.seed == 1 and "cps-1" not in trained:
            trained.append("cps-1")
            raise KeyboardInterrupt  # the stop, in the middle of seed 1's method run
        trained.append(f"{variant}-{cfg.run.seed}")
        run_dir = Path(cfg.run.dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": cfg.train.steps, "steps_per_s": 4.0,
                                                           "val": {"miou": 0.3}}) + "\n")
        miou = 0.3 + 0.05 * (cfg.method == "cps")
        return {"miou": miou, "iou": {"a": miou}}

    monkeypatch.setattr(gain, "train_run", fake_train)
    command = ["--protocol", "p1", "--method", "cps", "--seeds", "2", "--iterations", "8"]
    with pytest.raises(KeyboardInterrupt):
        gain.main(command)
    # the planned baselines first: supervised and supervised with the unlabeled batch through BatchNorm
    assert trained == ["supervised-0", "supervised_unlabeled_bn-0", "cps-0", "supervised-1",
                       "supervised_unlabeled_bn-1", "cps-1"]
    assert gain.main(command) == 0
    assert trained[6:] == ["cps-1"]  # only the interrupted run trains again
    records = json.loads((gain.RESULTS / "summary.json").read_text())
    by_name = {r["name"]: r for r in records}
    assert sorted(by_name) == ["p1/it8/cps-vs-supervised", "p1/it8/cps-vs-supervised_unlabeled_bn",
                               "p1/it8/supervised_unlabeled_bn-vs-supervised"]
    record = by_name["p1/it8/cps-vs-supervised"]
    assert record["seeds"] == [0, 1] and record["diff_mean"] == pytest.approx(0.05)
    version = gain.code_version("p1")
    assert record["method_runs"]["code_version"] == record["baseline_runs"]["code_version"] == [version, version]


def test_code_version_hashes_exactly_the_modules_a_training_run_imports(gain):
    """The files left out of the code version are the modules outside the import closure (function-level imports
    and parent packages included) of the two runners: nothing a run executes is left out, nothing else is in."""
    from tests.test_import_graph import import_graph

    graph, closure, pending = import_graph(), set(), ["raysemi.engine.plain", "raysemi.ray.train"]
    while pending:
        module = pending.pop()
        if module not in closure:
            closure.add(module)
            parents = [module.rsplit(".", n)[0] for n in range(1, module.count(".") + 1)]
            pending += [*graph.get(module, ()), *parents]  # a namespace package (no __init__) has no node
    outside = {m for m in graph if m not in closure}
    excluded = {m for m in graph if not versions.is_training_code(_module_path(m))}
    assert excluded == outside
    files, from_git = gain.training_files("p1")
    assert from_git and "raysemi/engine/loop.py" in files and "raysemi/ray/tune.py" not in files


def _module_path(module: str) -> str:
    """``raysemi.ray.tune`` → ``raysemi/ray/tune.py``; a package → its ``__init__.py``."""
    path = Path(*module.split("."))
    return (path / "__init__.py" if (REPO / path).is_dir() else path.with_suffix(".py")).as_posix()


def test_protocol_configs_load_and_p2_holds_its_report_and_selection_splits_out():
    p1 = load_config(REPO / "experiments" / "protocols" / "p1_synthetic.yaml")
    assert (p1.data.label_count, p1.data.synthetic.height, p1.data.synthetic.width) == (10, 144, 192)
    assert p1.data.crop_size == (96, 128)  # smaller than the scenes: two crops of one scene differ
    assert (p1.data.synthetic.seed, p1.data.synthetic.selection_seed) == (0, 1)  # selection: another generator seed
    lines = {name: (REPO / "experiments" / "protocols" / "p2_camvid" / f"{name}.txt").read_text().splitlines()
             for name in ("labeled", "unlabeled", "all_labeled", "val", "selection")}
    images = {name: {line.split()[0] for line in text} for name, text in lines.items()}
    clips = {name: {Path(image).name.split("_")[0] for image in names} for name, names in images.items()}
    assert clips["val"] == {"0006R0"} and len(lines["val"]) == 101
    assert clips["selection"] == {"0016E5"} and len(lines["selection"]) == 101
    pool = images["all_labeled"] | images["labeled"] | images["unlabeled"]
    assert not pool & images["val"] and not pool & images["selection"] and not images["val"] & images["selection"]
    assert (len(lines["labeled"]), len(lines["unlabeled"]), len(lines["all_labeled"])) == (12, 254, 266)
    assert clips["labeled"] == {"0001TP"}  # the labels come from one clip (make_p2_camvid_splits.py says why)
    p2 = load_config(REPO / "experiments" / "protocols" / "p2_camvid.yaml")
    assert p2.data.selection_split == "experiments/protocols/p2_camvid/selection.txt"


def test_evaluate_on_selection_scores_the_selection_split(tmp_path):
    """``data.evaluate_on=selection`` swaps the evaluation set: P1's is the val scenes of generator seed 1, none of
    them a report scene; a non-synthetic format without ``data.selection_split`` is refused in one line."""
    from raysemi.errors import DataError

    overrides = [f"data.root={tmp_path}", "data.synthetic.num_train=12", "data.synthetic.num_val=3"]
    protocol = REPO / "experiments" / "protocols" / "p1_synthetic.yaml"
    report = open_dataset(load_config(protocol, overrides).data).val
    selection = open_dataset(load_config(protocol, [*overrides, "data.evaluate_on=selection"]).data).val
    assert len(report) == len(selection) == 3
    assert all("seed1" in str(s.image) for s in selection) and all("seed0" in str(s.image) for s in report)
    assert {s.image.read_bytes() for s in selection}.isdisjoint(s.image.read_bytes() for s in report)
    with pytest.raises(DataError, match="data.synthetic.selection_seed=0 is the training scenes' seed"):
        open_dataset(load_config(protocol, [*overrides, "data.evaluate_on=selection",
                                            "data.synthetic.selection_seed=0"]).data)
    with pytest.raises(DataError, match="data.evaluate_on=selection needs data.selection_split"):
        open_dataset(load_config(protocol, [*overrides, "data.evaluate_on=selection", "data.format=generic",
                                            f"data.root={report[0].image.parents[2]}"]).data)


def test_p2_protocol_reads_its_split_files():
    root = REPO.parent / "shared" / "data" / "camvid-180x240"
    if not root.is_dir():
        pytest.skip(f"{root} not found: CamVid is read from ../shared/data")
    cfg = load_config(REPO / "experiments" / "protocols" / "p2_camvid.yaml", [f"data.root={root}"])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        source = open_dataset(cfg.data)
    assert (len(source.split.labeled), len(source.split.unlabeled), len(source.val)) == (12, 254, 101)
    assert all(s.mask is None for s in source.split.unlabeled)
    assert {s.image.name[:6] for s in source.val} == {"0006R0"}
    cfg = load_config(REPO / "experiments" / "protocols" / "p2_camvid.yaml",
                      [f"data.root={root}", "data.evaluate_on=selection"])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        selection = open_dataset(cfg.data).val
    assert len(selection) == 101 and {s.image.name[:6] for s in selection} == {"0016E5"}


@pytest.mark.parametrize("method", ["cps", "cac"])
def test_a_method_and_its_baseline_get_the_same_labeled_batches(synthetic_root, tmp_path, method):
    """Paired seeds compare like with like: the labeled stream (its samples, order and per-image augmentation
    seeds) depends on the split and run.seed, not on the method or its unlabeled stream."""
    from raysemi.data.streams import stream_records
    from raysemi.methods import build_method

    def labeled_plan(*overrides):
        cfg = fast_config(synthetic_root, tmp_path, "data.label_count=6", "run.seed=3", *overrides)
        spec = build_method(cfg).streams()["labeled"]
        return spec, stream_records(open_dataset(cfg.data), spec, 12, 0, cfg.run.seed, "labeled")

    (baseline_spec, baseline), (method_spec, plan) = labeled_plan(), labeled_plan(f"method={method}")
    assert method_spec == baseline_spec and plan == baseline and len(plan) == 12 * 4
    assert labeled_plan("run.seed=4")[1] != baseline  # the seed does change the order


def test_simformer_records_carry_novel_lists_and_the_oracle_of_each_seed(gain):
    def weak_shot(method, seed, novel, baseline=None):
        write_run(gain, method, seed, 0.4, baseline)
        path = gain.RUNS / "p1" / f"{run_name(method, seed, 600)}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "miou_novel": novel, "miou_base": 0.5}))

    for seed, (basic, full, oracle) in enumerate([(0.05, 0.12, 0.17), (0.03, 0.08, 0.15)]):
        weak_shot("simformer_basic", seed, basic)
        weak_shot("simformer_full", seed, full, "simformer_basic")
        if seed == 0:  # seed 1 has no oracle run yet
            weak_shot("simformer_oracle", seed, oracle, "simformer_basic")
    full = next(r for r in gain.write_outputs() if r["method"] == "simformer_full")
    assert full["novel_miou"] == [0.12, 0.08] and full["baseline_novel_miou"] == [0.05, 0.03]
    assert full["oracle_novel_miou"] == [0.17, None]
    # the share of the basic -> oracle gap closed, computable from the file: (0.12 - 0.05) / (0.17 - 0.05)
    share = (full["novel_miou"][0] - full["baseline_novel_miou"][0]) / (
        full["oracle_novel_miou"][0] - full["baseline_novel_miou"][0])
    assert share == pytest.approx(0.5833, abs=1e-4)
    readme = (gain.RUNS / "README.md").read_text()
    assert "| 0 | 0.5000 | 0.5000 | 0.0500 | 0.1200 | 0.1700 | 0.58 |" in readme
    assert "| 1 | 0.5000 | 0.5000 | 0.0300 | 0.0800 | - | - |" in readme
    assert "gap closed: **0.58** (mean over the seeds with an oracle run), 0.58 for the mean mIoUs" in readme
    assert gain.variant_overrides(gain.PROTOCOLS["p1"], "simformer_basic")[-1] == "simformer.distill_weight=0"
    three = gain.variant_overrides(gain.PROTOCOLS["p2"], "simformer3_oracle")  # Car, Pedestrian, Bicyclist
    assert "simformer.novel=[8,9,10]" in three and three[-1] == "simformer.oracle=true"
    assert gain.ORACLES["simformer3_full"] == "simformer3_oracle"


def test_pairs_of_different_devices_are_flagged(gain):
    for seed in (0, 1):
        write_run(gain, "supervised", seed, 0.30)  # no "device": runs from before the field trained on the CPU
        write_run(gain, "cps", seed, 0.36, "supervised", **({"device": "NVIDIA H200"} if seed else {}))
    gain.write_outputs()
    assert "**Seeds [1] compare runs on different devices**" in (gain.RUNS / "README.md").read_text()


def test_pairs_on_different_processors_are_flagged_and_unrecorded_ones_are_not(gain):
    machines = {0: ("CPU A (AVX2)", "CPU A (AVX2)"), 1: ("CPU A (AVX2)", "CPU B (AVX512)"), 2: (None, "CPU B (AVX512)")}
    for seed, (baseline_machine, method_machine) in machines.items():
        write_run(gain, "supervised", seed, 0.30, **({"machine": baseline_machine} if baseline_machine else {}))
        write_run(gain, "cps", seed, 0.36, "supervised", machine=method_machine)
    gain.write_outputs()
    assert "**Seeds [1] compare runs on different processors**" in (gain.RUNS / "README.md").read_text()
    record = next(r for r in json.loads((gain.RESULTS / "summary.json").read_text()) if r.get("method") == "cps")
    assert record["baseline_runs"]["machine"] == ["CPU A (AVX2)", "CPU A (AVX2)", None]


def test_runs_of_different_code_versions_are_paired_only_when_allowed(gain, capsys):
    """A pair whose code versions differ (or one is unknown: a JSON from before the field) is refused with one
    line naming both runs, their versions and what to do; --allow-mixed-code pairs it and the tables flag it."""
    write_run(gain, "supervised", 0, 0.30)
    write_run(gain, "cps", 0, 0.36, "supervised")
    write_run(gain, "supervised", 1, 0.32, code="v0")  # a stale baseline
    write_run(gain, "cps", 1, 0.35, "supervised")
    write_run(gain, "supervised", 2, 0.30, code=None)  # from before code_version: unknown, stale
    write_run(gain, "cps", 2, 0.40, "supervised")

    (record,) = gain.write_outputs()
    assert record["seeds"] == [0] and record["diff_mean"] == pytest.approx(0.06)  # only seed 0 ran one code
    lines = [line for line in capsys.readouterr().err.splitlines() if "refused" in line]
    assert len(lines) == 2
    assert lines[0].startswith("[gain] refused to pair p1/cps-seed1-it600 (code v1) with p1/supervised-seed1-it600 "
                               "(code v0): rerun the stale side (")
    assert "--method supervised --seed 1 --iterations 600 --skip-baseline --rerun-stale" in lines[0]
    assert "or pass --allow-mixed-code" in lines[0] and "(code unknown)" in lines[1]

    (mixed,) = gain.write_outputs(allow_mixed=True)
    assert mixed["seeds"] == [0, 1, 2] and mixed["mixed_code"] is True
    assert mixed["baseline_runs"]["code_version"] == ["v1", "v0", None]
    assert "**Seeds [1, 2] compare runs of different code versions**" in (gain.RUNS / "README.md").read_text()
    assert gain.main(["--table", "--allow-mixed-code"]) == 0 and len(json.loads(
        (gain.RESULTS / "summary.json").read_text())[0]["seeds"]) == 3


def test_self_correction_runs_get_boxes_of_the_unlabeled_masks_and_count_every_stage(
        gain, synthetic_root, tmp_path, monkeypatch):
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(fast_config(synthetic_root, tmp_path / "unused", "data.label_count=6").to_yaml())
    monkeypatch.setitem(gain.PROTOCOLS, "p1", gain.Protocol(config=str(protocol), all_labels=(),
                                                            methods=gain.self_correction_variants()))
    configs = []
    stage_speed = {"ancillary": 4.0, "corrector": 2.0, "primary": 2.0}  # it/s each stage logs

    def fake_train(cfg):
        """A chained run: each stage's metrics and stages.json (as raysemi.engine.stages writes them); the
        result is the last stage's."""
        configs.append(cfg)
        budgets = {"ancillary": cfg.self_correction.ancillary_steps, "primary": cfg.train.steps}
        if cfg.self_correction.mode == "conv":
            budgets = {"ancillary": budgets["ancillary"], "corrector": cfg.self_correction.corrector_steps,
                       "primary": cfg.train.steps}
        for name, steps in budgets.items():
            (Path(cfg.run.dir) / name).mkdir(parents=True)
            (Path(cfg.run.dir) / name / "metrics.jsonl").write_text(
                json.dumps({"step": steps, "steps_per_s": stage_speed[name]}) + "\n")
        (Path(cfg.run.dir) / "stages.json").write_text(json.dumps(
            {name: {"run_dir": str(Path(cfg.run.dir) / name), "steps": steps} for name, steps in budgets.items()}))
        return {"miou": 0.4, "iou": {"a": 0.4}, "run_dir": str(Path(cfg.run.dir) / "primary")}

    monkeypatch.setattr(gain, "train_run", fake_train)
    linear = gain.run_once("p1", "self_correction_linear", 0, 8, "supervised")
    conv = gain.run_once("p1", "self_correction_conv", 0, 8, "supervised")

    # not equal iterations: the ancillary trains the budget, then the primary trains it again
    assert (configs[0].train.steps, configs[0].self_correction.ancillary_steps) == (8, 8)
    assert (configs[1].train.steps, configs[1].self_correction.corrector_steps) == (6, 2)  # conv: 8 + 2 + 6
    assert linear["total_iterations"] == conv["total_iterations"] == 16
    assert gain.total_iterations("self_correction_conv", 8) == gain.total_iterations("self_correction_linear", 8) == 16
    # training time summed over the stages: linear 8/4 + 8/2 = 6 s; conv 8/4 + 2/2 + 6/2 = 6 s; 16 it in 6 s
    assert linear["train_time_s"] == conv["train_time_s"] == 6.0 and linear["it_per_s"] == pytest.approx(2.667)
    assert [s["iterations"] for s in conv["stages"]] == [8, 2, 6] and conv["val_miou"] == 0.4
    boxes = Path(configs[0].data.unlabeled_boxes)
    source = open_dataset(configs[0].data)
    assert boxes == gain.WORK / "p1" / f"unlabeled_object_boxes-{gain.code_version('p1')}.txt"
    assert len(source.split.unlabeled) == 18
    # the boxes of the first unlabeled image are those of its mask
    first = source.split.unlabeled[0]
    mask = source.reader.decode_mask(next(s.mask for s in source.train if s.image == first.image))
    expected = mask_boxes(mask, source.reader.classes)
    assert tuple(first.boxes) == tuple(expected) and expected


def test_self_correction_faces_supervised_at_its_summed_budget_and_its_own_baselines(gain):
    """At a budget of 600 self-correction trains 1,200 iterations: its records pair it with supervised at 1,200
    (equal compute) and at 600 (the second row), with ``none``, and with ``supervised_boxes`` at 1,200."""
    for seed, (plain, long_run, none, linear, boxes) in enumerate([(0.30, 0.33, 0.40, 0.42, 0.41),
                                                                    (0.28, 0.31, 0.38, 0.41, 0.37)]):
        write_run(gain, "supervised", seed, plain)
        write_run(gain, "supervised", seed, long_run, iterations=1200)
        write_run(gain, "supervised_boxes", seed, boxes, iterations=1200)
        write_run(gain, "self_correction_none", seed, none, "supervised", total_iterations=1200)
        write_run(gain, "self_correction_linear", seed, linear, "supervised", total_iterations=1200)
    records = {r["name"]: r for r in gain.write_outputs()}
    linear = "p1/it600/self_correction_linear-vs-"
    assert {name.removeprefix(linear) for name in records if name.startswith(linear)} == {
        "supervised@it1200", "supervised", "self_correction_none", "supervised_boxes@it1200"}
    matched = records[linear + "supervised@it1200"]
    assert matched["diff_mean"] == pytest.approx(0.095)  # (0.42 − 0.33 + 0.41 − 0.31) / 2
    assert matched["method_runs"]["total_iterations"] == matched["baseline_runs"]["total_iterations"] == [1200] * 2
    assert records[linear + "supervised"]["baseline_runs"]["total_iterations"] == [600, 600]
    assert records[linear + "supervised"]["diff_mean"] == pytest.approx(0.125)
    assert records[linear + "self_correction_none"]["diff_mean"] == pytest.approx(0.025)
    assert records[linear + "supervised_boxes@it1200"]["diff_mean"] == pytest.approx(0.025)
    assert "p1/it600/self_correction_none-vs-supervised_boxes@it1200" in records
    readme = (gain.RUNS / "README.md").read_text()
    assert "p1: self_correction_linear against supervised, 600 it (baseline 1200 it)" in readme
    assert "1,200 iterations in all against 1,200" in readme and "1,200 iterations in all against 600" in readme


def test_the_plan_names_every_baseline_each_method_must_beat(gain):
    def planned(method):
        return [(c.baseline, c.at_total) for c in gain.planned_comparisons(method)]

    assert planned("cac") == [("supervised", False), ("supervised_unlabeled_bn", False), ("cac_control", False)]
    assert planned("unimatch") == [("supervised", False), ("supervised_unlabeled_bn", False), ("cac", False)]
    assert planned("cps_control") == [("supervised", False), ("supervised_unlabeled_bn", False),
                                      ("supervised_cps_optim", False), ("supervised_unlabeled_bn_cps_optim", False)]
    assert planned("self_correction_conv") == [("supervised", True), ("supervised", False),
                                               ("self_correction_none", False), ("supervised_boxes", True)]
    assert planned("simformer3_full") == [("simformer3_basic", False), ("simformer3_basic_nocomp", False)]
    assert planned("supervised_cps_optim") == [("supervised", False)]
    assert planned("supervised_unlabeled_bn_cps_optim") == [("supervised", False), ("supervised_cps_optim", False)]
    # what gain.py --method cac trains beside it (the control only with --control; undefined variants skipped)
    assert gain.baselines_to_run("p2", ["cac"], 1000, "supervised") == [("supervised", 1000),
                                                                        ("supervised_unlabeled_bn", 1000)]
    known = set(gain.known_variants(gain.PROTOCOLS["p2"]))
    expected = [("supervised", 2000), ("supervised", 1000)] + [(b, n) for b, n in [
        ("self_correction_none", 1000), ("supervised_boxes", 2000)] if b in known]
    assert gain.baselines_to_run("p2", ["self_correction_linear"], 1000, None) == expected


def fake_trainer(trained: list[tuple[str, int]], miou: float = 0.4):
    """A trainer that records ``(method, seed)``, writes one metrics record and returns a summary of ``miou``."""
    def train(cfg):
        trained.append((Path(cfg.run.dir).name.split("-seed")[0], cfg.run.seed))
        run_dir = Path(cfg.run.dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": cfg.train.steps, "steps_per_s": 2.0}) + "\n")
        return {"miou": miou, "iou": {"a": miou}}

    return train


def test_seed_and_skip_baseline_run_the_method_alone_at_the_seeds_given(gain, monkeypatch):
    trained = []
    monkeypatch.setattr(gain, "train_run", fake_trainer(trained))
    assert gain.main(["--protocol", "p1", "--method", "cps", "--seed", "1", "--skip-baseline",
                      "--iterations", "8"]) == 0
    assert trained == [("cps", 1)]
    assert sorted(p.name for p in (gain.RUNS / "p1").iterdir()) == ["cps-seed1-it8.json"]
    run = json.loads((gain.RUNS / "p1" / "cps-seed1-it8.json").read_text())
    # paired once one exists; the Ray runner trains at p1_synthetic.yaml's train.torch_threads
    assert (run["seed"], run["baseline"], run["device"], run["torch_threads"]) == (1, "supervised", "cpu", 2)
    import torch

    assert run["machine"] == machine_name() and run["machine"].endswith(f"({torch.backends.cpu.get_cpu_capability()})")
    assert gain.main(["--protocol", "p1", "--method", "cps", "--seed", "3", "--seed", "0", "--iterations", "8"]) == 0
    assert trained[1:] == [("supervised", 3), ("supervised_unlabeled_bn", 3), ("cps", 3),  # in the order given
                           ("supervised", 0), ("supervised_unlabeled_bn", 0), ("cps", 0)]


def test_runner_local_trains_through_train_run_plain_and_records_the_device(gain, monkeypatch):
    trained = []
    monkeypatch.setattr(gain, "train_run", lambda cfg: pytest.fail("--runner plain trained through Ray"))
    monkeypatch.setattr(gain, "train_run_plain", fake_trainer(trained))
    command = ["--protocol", "p1", "--method", "cps", "--seed", "0", "--iterations", "8", "--runner", "plain"]
    assert gain.main(command) == 0
    assert trained == [("supervised", 0), ("supervised_unlabeled_bn", 0), ("cps", 0)]
    assert json.loads((gain.RUNS / "p1" / "cps-seed0-it8.json").read_text())["device"] == "cpu"

    # on a CUDA machine the plain runner's runs name the GPU; the Ray runner's (no protocol sets use_gpu) do not
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Fake GPU")
    assert gain.device_name(gain.train_run_plain) == "Fake GPU" and gain.device_name(None) == "cpu"


def test_train_run_plain_decodes_in_two_processes_beside_one_thread(monkeypatch, benchmark_script):
    import raysemi.engine.plain

    gain = benchmark_script(BENCHMARKS / "gain.py")
    calls = []
    monkeypatch.setattr(raysemi.engine.plain, "train_plain", lambda cfg, **kwargs: calls.append(kwargs) or {})
    assert gain.train_run_plain("cfg") == {"torch_threads": 1}  # the count it trained at, for the record
    assert calls == [{"data_workers": 2, "torch_threads": 1}]


def test_a_plain_runner_record_keeps_the_thread_count_it_trained_at(gain, monkeypatch):
    import raysemi.engine.plain

    trained = []
    fake = fake_trainer(trained)
    monkeypatch.setattr(raysemi.engine.plain, "train_plain", lambda cfg, **kwargs: fake(cfg))
    assert gain.main(["--protocol", "p1", "--method", "cps", "--seed", "0", "--skip-baseline", "--iterations", "8",
                      "--runner", "plain"]) == 0
    # 1 thread beside its decode processes, not p1_synthetic.yaml's 2
    assert json.loads((gain.RUNS / "p1" / "cps-seed0-it8.json").read_text())["torch_threads"] == 1


# Stands in for gain.py: `SECONDS CODE [extra...]` prints its arguments and start time, sleeps SECONDS, prints its
# end time and exits with CODE; `--table` leaves a file `table` beside itself, holding its arguments.
FAKE_GAIN = """\
import sys, time
from pathlib import Path
if "--table" in sys.argv:
    Path(__file__).with_name("table").write_text(" ".join(sys.argv[1:]))
    sys.exit(0)
print("args", *sys.argv[1:])
print("start", time.time(), flush=True)
time.sleep(float(sys.argv[1]))
print("end", time.time(), flush=True)
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture
def gain_plan(tmp_path, monkeypatch, benchmark_script):
    module = benchmark_script(BENCHMARKS / "gain_plan.py")
    script = tmp_path / "fake_gain.py"
    script.write_text(FAKE_GAIN)
    monkeypatch.setattr(module, "GAIN", script)
    monkeypatch.setattr(bench_plan, "POLL_S", 0.05)
    return module


def log_times(path: Path) -> dict[str, float]:
    """The ``start`` and ``end`` times a fake gain.py printed to its log."""
    return {word: float(value) for word, value in
            (line.split() for line in path.read_text().splitlines() if line.split()[0] in ("start", "end"))}


def test_read_plan_drops_comments_and_blank_lines_and_splits_like_a_shell(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text("# the baselines first\n\n--protocol p1 --method cps --seed 0   # a trailing comment\n"
                    "   \n--set 'cps.note=a b#c' --seed=1\n")
    assert bench_plan.read_plan(plan) == [["--protocol", "p1", "--method", "cps", "--seed", "0"],
                                                ["--set", "cps.note=a b#c", "--seed=1"]]


def test_run_plan_runs_jobs_at_a_time_and_stops_at_its_limits(gain_plan, tmp_path):
    """Two at a time; none starts after 1.5 s; whatever runs at 4 s is stopped. Lines 1 and 2 (0.5 s) run
    together; then 3 (10 s) and 4 (1.8 s); 4 ends after 0.5 + 1.8 > 1.5 s, so 5 never starts; 3 is stopped at 4 s."""
    plan = [["0.5", "0"], ["0.5", "3"], ["10", "0"], ["1.8", "0"], ["0", "0"]]
    logs = tmp_path / "logs"
    started, clock = time.monotonic(), time.time()  # the fake prints time.time()
    status = bench_plan.run_plan(plan, bench_plan.python_script(gain_plan.GAIN), jobs=2, stop_starting=1.5,
                                 time_limit=4.0, logs=logs, extra=["--runner=plain"])
    assert 4.0 <= time.monotonic() - started < 6.0
    assert status == {0: 0, 1: 3, 2: None, 3: 0, 4: None}
    assert sorted(p.name for p in logs.iterdir()) == ["01.log", "02.log", "03.log", "04.log"]
    times = [log_times(logs / f"0{n}.log") for n in (1, 2, 3, 4)]
    assert times[0]["start"] < times[1]["end"] and times[1]["start"] < times[0]["end"]  # 1 and 2 overlap
    assert times[2]["start"] >= min(times[0]["end"], times[1]["end"])  # 3 waited for a free slot
    assert "end" not in times[2]  # stopped while it slept
    assert times[3]["end"] - clock > 1.5  # 4 freed its slot after starting had stopped
    assert "args 0.5 0 --runner=plain" in (logs / "01.log").read_text()


def test_gain_plan_main_fails_when_a_line_fails_and_rebuilds_the_table(gain_plan, tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text("0 0\n0 2  # fails\n")
    assert gain_plan.main([str(plan), "--jobs", "2", "--logs", str(tmp_path / "logs")]) == 1
    assert (tmp_path / "table").is_file()
    assert (tmp_path / "table").read_text() == "--table"
    plan.write_text("0 0\n")
    assert gain_plan.main([str(plan), "--logs", str(tmp_path / "logs"), "--allow-mixed-code"]) == 0
    assert (tmp_path / "table").read_text() == "--table --allow-mixed-code"


def test_gain_plan_refuses_a_plan_that_is_not_there_in_one_line(gain_plan, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        gain_plan.main([str(tmp_path / "missing.txt"), "--logs", str(tmp_path / "logs")])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert refused.value.code == 2 and error.endswith(f"plan {tmp_path / 'missing.txt'}: no such file (a plan is a "
                                                      "text file of invocations, one per line: "
                                                      "experiments/benchmarks/plans/)")
    assert not (tmp_path / "table").exists() and not (tmp_path / "logs").exists()  # nothing ran, nothing written


def test_the_rerun_matrix_plan_covers_every_headline_comparison_one_run_per_line(benchmark_script):
    """Every line of plans/rerun_matrix.txt is a valid gain.py invocation that trains one run at this code
    version (--rerun-stale, --skip-baseline; a baseline as its own baseline), no run twice, and the matrix
    holds every variant of the planned comparisons on 3 seeds of both protocols."""
    gain = benchmark_script(BENCHMARKS / "gain.py")
    plan = bench_plan.read_plan(REPO / "experiments" / "benchmarks" / "plans" / "rerun_matrix.txt")
    runs = set()
    for line in plan:
        args = gain.parse_args(line)
        assert args.rerun_stale and args.seed and len(args.seed) == 1, line
        if not args.repeatability:  # exactly its own run: no line trains another line's run beside it
            assert args.skip_baseline, line
        run = (args.protocol, args.method, args.seed[0], args.iterations or 1000, tuple(args.set), args.split,
               args.repeatability)
        assert run not in runs, line
        runs.add(run)
    pending = {"supervised_boxes", "simformer_basic_nocomp", "simformer3_basic_nocomp"}  # the weak-label half
    for protocol in ("p1", "p2"):
        report = {(m, s, n) for p, m, s, n, extra, split, repeat in runs
                  if (p, extra, split, repeat) == (protocol, (), "report", False)}
        assert {m for m, _, _ in report} <= set(gain.known_variants(gain.PROTOCOLS[protocol])) | pending
        for method in {m for m, _, _ in report}:
            assert {s for m, s, n in report if m == method} == {0, 1, 2}, (protocol, method)
            for comparison in gain.planned_comparisons(method):
                if comparison.baseline not in {*gain.known_variants(gain.PROTOCOLS[protocol]), *pending}:
                    continue  # a baseline this protocol does not define (the CPS optimizer's twins on P1)
                for seed in range(3):
                    assert (comparison.baseline, seed, gain.baseline_budget(comparison, 1000)) in report, (
                        protocol, method, comparison)
        assert {"cac", "cps", "self_correction_linear", "self_correction_conv", "simformer_full"} <= {
            m for m, _, _ in report}
        assert (protocol, "supervised", 0, 1000, (), "report", True) in runs  # repeatability


def test_difference_text_uses_the_unrounded_mious():
    # 0.2504 − 0.2239 = 0.02650000000000002: rounded to 4 places first, it would print +2.6 beside a row's +2.7
    assert difference_text({"miou": [0.2504], "baseline_miou": [0.2239]}) == "+2.7 ± 0.0 points"
    assert difference_text({"miou": [0.36, 0.35], "baseline_miou": [0.30, 0.32]}) == "+4.5 ± 2.1 points"


def test_the_tail_mean_averages_each_runs_last_three_evaluations_and_quotes_their_differences():
    """P2's CAC seed 0 against supervised_unlabeled_bn seed 0: the last evaluation says -0.4 points, the mean of
    steps 800-1,000 +2.2 (CAC's curve fell 7 points after step 800)."""
    cac = {"seed": 0, "val_miou": 0.2319, "curve": [[700, 0.29], [800, 0.3036], [900, 0.2308], [1000, 0.2319]]}
    bn = {"seed": 0, "val_miou": 0.2359, "curve": [[800, 0.2354], [900, 0.2302], [1000, 0.2359]]}
    short = {"seed": 1, "val_miou": 0.25, "curve": [[900, 0.24], [1000, 0.25]]}
    assert pairs.tail_miou(cac) == pytest.approx(0.25543, abs=1e-5)  # (0.3036 + 0.2308 + 0.2319) / 3
    assert pairs.tail_miou(bn) == pytest.approx(0.23383, abs=1e-5) and pairs.tail_miou(short) is None
    assert pairs.tail_miou({"seed": 2, "val_miou": 0.3}) is None  # a run JSON without a curve
    record = {"kind": "comparison", "name": "p2/cac-vs-supervised_unlabeled_bn", "seeds": [0],
              "miou": [0.2319], "baseline_miou": [0.2359], **pairs.tail_mious([(cac, bn)])}
    assert quotes.quoted(f"{record['name']}#tail", {record["name"]: record}) == "+2.2 ± 0.0"
    assert quotes.quoted(f"{record['name']}#tail-seed0", {record["name"]: record}) == "+2.2"
    rows = tables.seed_table([(cac, bn)])
    assert rows[2] == "| 0 | 0.2359 | 0.2319 | -0.4 | +2.2 |"
    assert "last 3 evaluations" not in tables.seed_table([(short, bn | {"seed": 1})])[0]  # one short curve: no column
    no_tail = {**record, "tail_miou": [None]}
    with pytest.raises(ValueError, match="has a run without a tail mean"):
        quotes.quoted(f"{record['name']}#tail", {record["name"]: no_tail})


def test_runs_that_made_different_speed_choices_are_not_paired(gain):
    """Seed 1's method run chose channels-last, its baseline (a JSON from before the field: contiguous on the
    CPU) did not: only seed 0 is compared; seed 2's runs both chose channels-last, and pair."""
    for seed in (0, 1, 2):
        write_run(gain, "supervised", seed, 0.30)
        write_run(gain, "cps", seed, 0.36, "supervised")
    for name in ("cps-seed1-it600", "cps-seed2-it600", "supervised-seed2-it600"):
        path = gain.RUNS / "p1" / f"{name}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()),
                                    "speed": {"channels_last": True, "compile": False}}))
    [record] = gain.write_outputs()
    assert record["seeds"] == [0, 2]


def test_p2_cps_as_published_and_its_baselines_share_one_optimizer(benchmark_script):
    gain = benchmark_script(BENCHMARKS / "gain.py")
    protocol = gain.PROTOCOLS["p2"]

    def config(variant):
        return load_config(REPO / protocol.config, list(gain.variant_overrides(protocol, variant)))

    published = {name: config(name) for name in ("cps", "cps_control", "supervised_cps_optim",
                                                  "supervised_unlabeled_bn_cps_optim")}
    for cfg in published.values():  # SGD, weight decay 5e-4 (not on biases and norms), one rate for all
        optim = cfg.optim
        assert (optim.name, optim.weight_decay, optim.decay_norm_and_bias, optim.backbone_lr_mult, optim.lr) == (
            "sgd", 0.0005, False, 1.0, 0.02)
    assert published["cps"].cps.rampup_steps == 0 and published["cps_control"].cps.weight == 0
    assert published["supervised_unlabeled_bn_cps_optim"].supervised.unlabeled_batchnorm
    assert config("supervised").optim.backbone_lr_mult == 0.1  # the protocol's own baseline is unchanged


def flat(tree: dict, prefix: str = "") -> dict:
    """A nested config dump as ``{dotted key: value}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("protocol, variant, pair, keys", [
    (p, variant, pair, keys) for p in ("p1", "p2") for variant, pair, keys in [
        ("supervised_boxes", "supervised", {"supervised.weak_boxes", "data.unlabeled_boxes"}),
        ("simformer_basic", "simformer_full", {"simformer.similarity_weight", "simformer.distill_weight"}),
        ("simformer_basic_nocomp", "simformer_basic", {"simformer.complementary_weight"}),
    ]] + [("p2", "simformer3_basic", "simformer3_full", {"simformer.similarity_weight", "simformer.distill_weight"}),
          ("p2", "simformer3_basic_nocomp", "simformer3_basic", {"simformer.complementary_weight"})])
def test_baseline_variants_differ_from_their_pairs_in_the_intended_keys_only(gain, protocol, variant, pair, keys):
    def resolved(name):
        spec = gain.PROTOCOLS[protocol]
        overrides = [o.replace(gain.DERIVED_BOXES, "boxes.txt") for o in gain.variant_overrides(spec, name)]
        return flat(load_config(REPO / spec.config, overrides).model_dump(mode="json"))

    a, b = resolved(variant), resolved(pair)
    assert {key for key in a if a[key] != b[key]} == keys
    if variant.endswith("_basic"):  # the supplementary's basic keeps the complementary loss
        assert a["simformer.complementary_weight"] == b["simformer.complementary_weight"] > 0


def test_rerun_stale_retrains_a_run_of_another_code_version_and_keeps_the_old_json(gain, monkeypatch):
    trained = []
    monkeypatch.setattr(gain, "train_run", fake_trainer(trained, miou=0.5))
    write_run(gain, "supervised", 0, 0.30, iterations=8, code="old")  # finished at another code version
    command = ["--protocol", "p1", "--method", "supervised", "--seed", "0", "--iterations", "8"]
    assert gain.main(command) == 0 and trained == []  # finished: read, not retrained
    assert gain.main([*command, "--rerun-stale"]) == 0 and trained == [("supervised", 0)]
    run = json.loads((gain.RUNS / "p1" / "supervised-seed0-it8.json").read_text())
    assert (run["val_miou"], run["code_version"]) == (0.5, gain.code_version("p1"))
    assert json.loads((gain.RUNS / "p1" / "stale" / "supervised-seed0-it8-old.json").read_text())["val_miou"] == 0.3
    assert gain.main([*command, "--rerun-stale"]) == 0 and len(trained) == 1  # now current: not retrained

    # a run directory started at another version is not resumed (two versions in one run)
    (gain.WORK / "p1" / "cps-seed0-it8").mkdir(parents=True)
    (gain.WORK / "p1" / "cps-seed0-it8.code_version").write_text("old\n")
    with pytest.raises(SystemExit, match="holds a run started at code old, not .*pass --rerun-stale to restart it"):
        gain.main(["--protocol", "p1", "--method", "cps", "--seed", "0", "--iterations", "8", "--skip-baseline"])


def test_code_version_hashes_the_training_files_as_git_blobs(gain, monkeypatch):
    """The version covers raysemi/, the protocol config and its split files; a file enters as its git blob id,
    so the version follows the files' content, not the commit."""
    import subprocess

    files, from_git = gain.training_files("p2")
    assert from_git and "raysemi/engine/loop.py" in files
    assert {"experiments/protocols/p2_camvid.yaml", "experiments/protocols/p2_camvid/selection.txt",
            "experiments/protocols/p2_camvid/val.txt"} <= set(files)
    blob = subprocess.run(["git", "-C", str(REPO), "hash-object", "raysemi/errors.py"], capture_output=True,
                          text=True).stdout.strip()
    data = (REPO / "raysemi" / "errors.py").read_bytes()
    assert __import__("hashlib").sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob
    assert len(gain.code_version("p2")) == 12 and gain.code_version("p1") != gain.code_version("p2")
    # outside a git checkout: every file under raysemi/ is hashed and the version says so
    monkeypatch.setattr(versions.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 128, "", "no git"))
    gain.code_version.cache_clear()
    try:
        assert gain.code_version("p1").startswith("nogit-")
    finally:
        gain.code_version.cache_clear()


def test_repeatability_runs_one_seed_three_times_and_records_the_differences(gain, monkeypatch):
    """Twice at the protocol's thread count, once at another; summary.json gets a repeatability record."""
    mious = iter([0.40, 0.40, 0.43])
    threads = []

    def fake_train(cfg):
        threads.append(cfg.train.torch_threads)
        run_dir = Path(cfg.run.dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        miou = next(mious)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 8, "steps_per_s": 2.0,
                                                           "val": {"miou": miou}}) + "\n")
        return {"miou": miou, "iou": {"a": miou}}

    monkeypatch.setattr(gain, "train_run", fake_train)
    assert gain.main(["--protocol", "p1", "--method", "cac", "--seed", "1", "--iterations", "8",
                      "--repeatability"]) == 0
    assert threads == [2, 2, 1]  # p1_synthetic.yaml: train.torch_threads 2
    (record,) = [r for r in json.loads((gain.RESULTS / "summary.json").read_text()) if r["kind"] == "repeatability"]
    assert (record["method"], record["seed"], record["torch_threads"]) == ("cac", 1, [2, 2, 1])
    assert record["miou"] == [0.40, 0.40, 0.43] and record["same_threads_diff"] == 0.0
    assert record["other_threads_diff"] == pytest.approx(0.03) and record["same_threads_same_curve"] is True
    assert record["code_version"] == gain.code_version("p1")
    names = {r: run_name("cac", 1, 8, (f"train.torch_threads={n}",)) + f"-repeat-{r}.json"
             for r, n in zip("abc", (2, 2, 1))}
    assert sorted(p.name for p in (gain.RUNS / "p1" / "repeatability").iterdir()) == sorted(names.values())
    assert not list((gain.RUNS / "p1").glob("*.json"))  # kept apart: no comparison pairs a repeatability run
    assert "| cac | 1 | cpu | 2 / 2 / 1 | 0.4000 / 0.4000 / 0.4300 | +0.00 | +3.00 | yes |" in (
        gain.RUNS / "README.md").read_text()
    by_name = {record["name"]: record}  # documents quote it: p1 at 8 iterations, not its budget of 1,000
    assert record["name"] == "p1/it8/cac-seed1-repeatability"
    assert [quotes.quoted(f"{record['name']}#{field}", by_name) for field in quotes.REPEAT_FIELDS] == [
        "+0.0", "+3.0", "0.4000 / 0.4000 / 0.4300", "2 / 2 / 1"]
    with pytest.raises(ValueError, match="#seeds is not a repeatability quote field; choose one of same-threads"):
        quotes.quoted(f"{record['name']}#seeds", by_name)

    # at another code version: read as they are, retrained with --rerun-stale (the old JSONs kept in stale/)
    for name in names.values():
        path = gain.RUNS / "p1" / "repeatability" / name
        path.write_text(json.dumps({**json.loads(path.read_text()), "code_version": "old"}))
    command = ["--protocol", "p1", "--method", "cac", "--seed", "1", "--iterations", "8", "--repeatability"]
    assert gain.main(command) == 0 and len(threads) == 3
    mious = iter([0.41, 0.41, 0.42])
    assert gain.main([*command, "--rerun-stale"]) == 0 and threads[3:] == [2, 2, 1]
    (record,) = [r for r in json.loads((gain.RESULTS / "summary.json").read_text()) if r["kind"] == "repeatability"]
    assert record["miou"] == [0.41, 0.41, 0.42] and record["code_version"] == gain.code_version("p1")


def test_selection_split_runs_are_scored_there_and_never_paired_with_report_runs(gain, monkeypatch):
    trained = []
    monkeypatch.setattr(gain, "train_run", lambda cfg: trained.append(cfg.data.evaluate_on) or fake_trainer([])(cfg))
    assert gain.main(["--protocol", "p1", "--method", "supervised_unlabeled_bn", "--seed", "0", "--iterations", "8",
                      "--split", "selection"]) == 0
    assert trained == ["selection", "selection"]
    assert sorted(p.name for p in (gain.RUNS / "p1").iterdir()) == [
        "supervised-seed0-it8-selection.json", "supervised_unlabeled_bn-seed0-it8-selection.json"]
    write_run(gain, "supervised", 0, 0.2, iterations=8)  # a report-split baseline of the same seed
    write_run(gain, "supervised_unlabeled_bn", 1, 0.2, "supervised", iterations=8)
    (record,) = gain.write_outputs()
    assert (record["name"], record["split"], record["seeds"]) == (
        "p1/selection/it8/supervised_unlabeled_bn-vs-supervised", "selection", [0])
    readme = (gain.RUNS / "README.md").read_text()
    assert "## Protocol p1, selection split" in readme and readme.index("## Protocol p1, report split") < \
        readme.index("## Protocol p1, selection split")


def test_a_selection_split_ablation_faces_the_method_at_its_defaults_and_a_report_one_does_not(gain):
    """The choice between an ablation and the method's defaults is made on the selection split: there the
    ablation gets a record against the method's own plain runs (the paired difference the choice rests on)."""
    for seed, (default, ablation) in enumerate([(0.30, 0.33), (0.32, 0.31), (0.28, 0.30)]):
        for split in ("selection", "report"):
            write_run(gain, "cac", seed, default, "supervised", split=split)
            write_run(gain, "cac", seed, ablation, "supervised", overrides=("cac.gamma=0.5",), split=split)
    by_name = {r["name"]: r for r in gain.write_outputs()}
    record = by_name["p1/selection/it600/cac[cac.gamma=0.5]-vs-cac"]
    assert record["seeds"] == [0, 1, 2] and record["baseline_miou"] == [0.30, 0.32, 0.28]
    assert record["diff_mean"] == 0.0133  # (+0.03 − 0.01 + 0.02) / 3, to 4 places
    assert quotes.quoted(f"{record['name']}#seeds", by_name) == "+3.0 / -1.0 / +2.0"
    assert "p1/it600/cac[cac.gamma=0.5]-vs-cac" not in by_name  # the report split makes no choice
    assert "### p1: cac against cac at its defaults, 600 it (cac.gamma=0.5)" in (gain.RUNS / "README.md").read_text()


@pytest.mark.parametrize("method", ["supervised", "cps", "cac"])
def test_a_local_run_at_a_fixed_seed_and_thread_count_is_bit_repeatable(synthetic_root, tmp_path, method):
    """Two local-runner runs of one config (same seed, one thread, CPU) end with identical weights: batches are
    planned and decoded per record with their own seeds, and the loop's random numbers (initialisation, CutMix
    boxes, CAC's negative sampling) come from seeded generators (results/gain/notes.md, Repeatability)."""
    import torch

    from raysemi.engine.checkpoint import latest_checkpoint
    from raysemi.engine.plain import train_plain

    def final_weights(name):
        cfg = fast_config(synthetic_root, tmp_path / name, "data.label_count=6", f"method={method}",
                          "train.unlabeled_batch_size=4", "run.seed=5")
        train_plain(cfg, data_workers=0, device=torch.device("cpu"), torch_threads=1)
        return torch.load(latest_checkpoint(tmp_path / name).model, weights_only=True)

    first, second = final_weights("a"), final_weights("b")
    assert first.keys() == second.keys() and len(first) > 10
    assert all(torch.equal(first[key], second[key]) for key in first)


QUOTING_DOCUMENTS = ("README.md", "docs/benchmarks.md", "experiments/benchmarks/results/gain/notes.md")


@pytest.mark.parametrize("document", QUOTING_DOCUMENTS)
def test_every_quoted_gain_figure_equals_summary_json(document):
    """The gain figures the README, the benchmarks page and the notes quote are markers filled from
    summary.json; one that differs from its record (or names none) fails here: run `gain.py --table`."""
    records = json.loads((REPO / "experiments" / "benchmarks" / "results" / "summary.json").read_text())
    by_name = quotes.quotable(records)
    found = list(quotes.QUOTE.finditer((REPO / document).read_text()))
    assert len(found) >= 20, f"{document}: {len(found)} gain quotes; its figures should be markers"
    for quote in found:
        expected = quotes.quoted(quote["key"], by_name)
        assert quote["text"] == expected, f"{document}: gain:{quote['key']} says {quote['text']!r}, not {expected!r}"


def test_fill_quotes_sets_each_figure_from_its_record_and_reports_the_ones_it_cannot(gain):
    record = {"kind": "comparison", "name": "p2/cac-vs-supervised", "seeds": [0, 1, 2],
              "miou": [0.2733, 0.3097, 0.2818], "baseline_miou": [0.2202, 0.2587, 0.2085]}
    weak = {"kind": "comparison", "name": "p2/simformer_full-vs-simformer_basic", "seeds": [0, 1],
            "miou": [0.4, 0.4], "baseline_miou": [0.4, 0.4], "novel_miou": [0.55, 0.54],
            "baseline_novel_miou": [0.10, 0.04], "oracle_novel_miou": [0.65, None],
            "base_miou": [0.352, 0.35], "baseline_base_miou": [0.342, 0.364]}
    text = ("CAC <!-- gain:p2/cac-vs-supervised -->+5.8 ± 1.2<!-- /gain --> (seeds "
            "<!-- gain:p2/cac-vs-supervised#seeds -->old<!-- /gain -->; seed 2 "
            "<!-- gain:p2/cac-vs-supervised#seed2 --><!-- /gain -->), gap "
            "<!-- gain:p2/simformer_full-vs-simformer_basic#gap-seeds --><!-- /gain -->, base "
            "<!-- gain:p2/simformer_full-vs-simformer_basic#base --><!-- /gain -->, novel "
            "<!-- gain:p2/simformer_full-vs-simformer_basic#novel-seeds --><!-- /gain -->, headroom "
            "<!-- gain:p2/simformer_full-vs-simformer_basic#headroom-seeds --><!-- /gain -->, "
            "<!-- gain:p2/simformer_full-vs-simformer_basic#headroom --><!-- /gain -->; "
            "<!-- gain:p2/cps-vs-supervised -->-0.1 ± 3.4<!-- /gain -->; "
            "<!-- gain:p2/cac-vs-supervised#code -->?<!-- /gain -->, "
            "<!-- gain:p2/simformer_full-vs-simformer_basic#code -->?<!-- /gain -->")
    filled, problems = quotes.fill_quotes(text, [record, {**weak, "mixed_code": True}])
    # differences: +5.31, +5.10, +7.33 points; mean 5.913, sample std 1.226
    assert "<!-- gain:p2/cac-vs-supervised -->+5.9 ± 1.2<!-- /gain -->" in filled
    assert "#seeds -->+5.3 / +5.1 / +7.3<!-- /gain -->" in filled and "#seed2 -->+7.3<" in filled
    # shares of the gap: (0.55 − 0.10) / (0.65 − 0.10) = 0.82; seed 1 has no oracle; base: (+1.0 − 1.4) / 2
    assert "#gap-seeds -->0.82 / -<" in filled and "#base -->-0.2<" in filled
    assert "#novel-seeds -->+45.0 / +50.0<" in filled  # 0.55 − 0.10, 0.54 − 0.04
    # the oracle over the baseline on the novel classes: 0.65 − 0.10; seed 1 has no oracle, so the mean is seed 0's
    assert "#headroom-seeds -->+55.0 / -<" in filled and "#headroom -->+55.0<" in filled
    assert "<!-- gain:p2/cps-vs-supervised -->-0.1 ± 3.4<!-- /gain -->" in filled  # no record: left as it was
    assert "#code -->one code version<" in filled and "#code -->mixed code versions<" in filled
    assert problems == ["gain:p2/cps-vs-supervised: no summary.json record named p2/cps-vs-supervised"]
    with pytest.raises(ValueError, match="record p2/cac-vs-supervised has no seed 5"):
        quotes.quoted("p2/cac-vs-supervised#seed5", {record["name"]: record})
    with pytest.raises(ValueError, match="#median is not a quote field"):
        quotes.quoted("p2/cac-vs-supervised#median", {record["name"]: record})
    document = gain.RESULTS / "page.md"
    document.parent.mkdir(parents=True)
    document.write_text(text)
    quotes.fill_document(document, [record, {**weak, "mixed_code": True}])
    assert document.read_text() == filled


def test_a_version_is_the_same_as_the_one_it_reproduced_and_that_ones_lineage(tmp_path):
    same_as = {"c": "b", "b": "a", "x": "y", "y": "x"}  # c reproduced b, which reproduced a; x, y: a cycle
    assert [lineage.lineage(v, same_as) for v in ("c", "b", "a", "d", None)] == ["a", "a", "a", "d", None]
    assert lineage.lineage("x", same_as) in {"x", "y"}  # a cycle ends instead of looping
    runs = lineage.with_lineage([{"code_version": "c"}, {"code_version": "a"}, {}], same_as)
    assert runs == [{"code_version": "c", "code_lineage": "a"}, {"code_version": "a"}, {}]
    assert pairs.same_code(runs[0], runs[1]) and not pairs.same_code(runs[0], {"code_version": "b"})
    bad = tmp_path / lineage.FILE
    bad.write_text('[{"version": "b"}]')
    with pytest.raises(RaysemiError, match=r"equivalent_versions.json: not a list of entries with keys protocol, "
                                           r"version, same_as, .* \(KeyError: 'same_as'\)"):
        lineage.load(bad)


def test_prove_same_code_records_a_version_that_reproduces_a_run_and_refuses_one_that_does_not(gain, monkeypatch,
                                                                                               capsys):
    """supervised seed 0 finished at code `old`; --prove-same-code at `new` reruns it to the same mIoU, class IoUs
    and losses, so `new → old` is recorded: a CPS run at `new` pairs with it without --allow-mixed-code and
    --rerun-stale leaves it. A rerun whose loss at one step differs records nothing and says where."""
    trained, losses = [], {"old": 0.5, "new": 0.5, "newer": 0.625}

    def train(cfg):
        trained.append((Path(cfg.run.dir).name, version))
        Path(cfg.run.dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.run.dir) / "metrics.jsonl").write_text(json.dumps({"step": 8, "loss": losses[version],
                                                                     "steps_per_s": 2.0}) + "\n")
        return {"miou": 0.3, "iou": {"a": 0.3}}

    monkeypatch.setattr(gain, "train_run", train)
    run = ["--protocol", "p1", "--method", "supervised", "--iterations", "8"]
    version = "old"
    monkeypatch.setattr(gain, "code_version", lambda protocol: version)
    assert gain.main([*run, "--seed", "0", "--seed", "1"]) == 0 and len(trained) == 2
    version = "new"
    assert gain.main([*run, "--seed", "0", "--prove-same-code"]) == 0
    assert trained[-1] == ("supervised-seed0-it8", "new") and len(trained) == 3
    (entry,) = json.loads((gain.RUNS / lineage.FILE).read_text())
    assert {k: entry[k] for k in ("protocol", "version", "same_as", "run")} == {
        "protocol": "p1", "version": "new", "same_as": "old", "run": "p1/supervised-seed0-it8"}
    assert entry["compared"] == [*lineage.COMPARED, "losses"]
    assert json.loads((gain.RUNS / "p1" / "supervised-seed0-it8.json").read_text())["code_version"] == "old"

    assert gain.main(["--protocol", "p1", "--method", "cps", "--seed", "0", "--iterations", "8",
                      "--skip-baseline"]) == 0
    records = json.loads((gain.RESULTS / "summary.json").read_text())
    (cps,) = [r for r in records if r["method"] == "cps"]
    assert cps["seeds"] == [0] and cps["mixed_code"] is False
    assert cps["baseline_runs"]["code_version"] == ["old"]  # the record still says which code trained it
    assert gain.main([*run, "--seed", "0", "--rerun-stale", "--skip-baseline"]) == 0 and len(trained) == 4

    with pytest.raises(SystemExit, match="already the same as this checkout's new: nothing to prove"):
        gain.main([*run, "--seed", "0", "--prove-same-code"])
    with pytest.raises(SystemExit, match=r"p1/supervised-seed2-it8: no finished run at .*supervised-seed2-it8.json "
                                         "to rerun"):
        gain.main([*run, "--seed", "2", "--prove-same-code"])
    version = "newer"
    with pytest.raises(SystemExit, match=r"^error: p1/supervised-seed1-it8 rerun at code newer differs from its "
                                         r"record at old: loss at step 8: 0.5 then 0.625$"):
        gain.main([*run, "--seed", "1", "--prove-same-code"])
    assert len(json.loads((gain.RUNS / lineage.FILE).read_text())) == 1  # nothing recorded
