"""The gain benchmark's arithmetic on hand-made run JSONs, its resume after an interruption, its options, and
gain_plan.py running invocations side by side within its limits."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

from raysemi.config import load_config
from raysemi.data.dataset import open_dataset
from raysemi.data.weak_labels import mask_boxes
from tests.conftest import fast_config

REPO = Path(__file__).resolve().parents[1]


def load_gain():
    """experiments/benchmarks/gain.py as a module (registered first: its dataclasses look themselves up)."""
    spec = importlib.util.spec_from_file_location("gain_benchmark", REPO / "experiments" / "benchmarks" / "gain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def gain(tmp_path, monkeypatch):
    module = load_gain()
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(module, "RUNS", tmp_path / "results" / "gain")
    monkeypatch.setattr(module, "WORK", tmp_path / "work")
    monkeypatch.chdir(tmp_path)  # main() moves to the repository root; this puts the cwd back afterwards
    return module


def write_run(gain, method, seed, miou, baseline=None, iou=None, overrides=(), iterations=600):
    run = {"protocol": "p1", "method": method, "baseline": baseline, "seed": seed, "iterations": iterations,
           "overrides": list(overrides), "val_miou": miou, "per_class_iou": iou or {"a": miou, "b": None},
           "train_time_s": 100.0, "it_per_s": 6.0 if method == "supervised" else 2.0, "wall_time_s": 120.0,
           "curve": [[300, miou - 0.05], [450, miou - 0.005], [600, miou]]}
    path = gain.RUNS / "p1" / f"{gain.run_name(method, seed, iterations, tuple(overrides))}.json"
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
    assert "| 0 | 0.3000 | 0.3600 | +6.0 | 6.00 | 2.00 |" in table
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
    gain = load_gain()
    assert gain.levelled_off([[100, 0.1], [700, 0.52], [800, 0.5]])  # 700 >= 600: a band of 0.02 (±1 point)
    assert not gain.levelled_off([[100, 0.1], [600, 0.479], [800, 0.5]])  # 600 is in the last quarter: 0.021
    assert not gain.levelled_off([[100, 0.1], [700, 0.49], [750, 0.515], [800, 0.5]])  # 0.025 wide
    assert gain.step_times([{"step": 50, "steps_per_s": 1.0}, {"step": 100, "steps_per_s": 2.0},
                            {"step": 150, "steps_per_s": 2.0}], 150) == {"train_time_s": 100.0, "it_per_s": 2.0}


def test_an_interrupted_benchmark_resumes_without_rerunning_finished_runs(gain, monkeypatch):
    trained = []

    def fake_train(cfg):
        if cfg.method == "cps" and cfg.run.seed == 1 and "cps-1" not in trained:
            trained.append("cps-1")
            raise KeyboardInterrupt  # the stop, in the middle of seed 1's method run
        trained.append(f"{cfg.method}-{cfg.run.seed}")
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
    assert trained == ["supervised-0", "cps-0", "supervised-1", "cps-1"]
    assert gain.main(command) == 0
    assert trained[4:] == ["cps-1"]  # only the interrupted run trains again
    (record,) = json.loads((gain.RESULTS / "summary.json").read_text())
    assert record["seeds"] == [0, 1] and record["diff_mean"] == pytest.approx(0.05)


def test_protocol_configs_load_and_p2_holds_its_clip_out():
    p1 = load_config(REPO / "experiments" / "protocols" / "p1_synthetic.yaml")
    assert (p1.data.label_count, p1.data.synthetic.height, p1.data.synthetic.width) == (10, 144, 192)
    assert p1.data.crop_size == (96, 128)  # smaller than the scenes: two crops of one scene differ
    lines = {name: (REPO / "experiments" / "protocols" / "p2_camvid" / f"{name}.txt").read_text().splitlines()
             for name in ("labeled", "unlabeled", "all_labeled", "val")}
    clips = {name: {Path(line.split()[0]).name.split("_")[0] for line in text} for name, text in lines.items()}
    assert clips["val"] == {"0006R0"} and len(lines["val"]) == 101
    assert "0006R0" not in clips["all_labeled"] | clips["labeled"] | clips["unlabeled"]
    assert (len(lines["labeled"]), len(lines["unlabeled"]), len(lines["all_labeled"])) == (12, 355, 367)
    assert clips["labeled"] == {"0001TP"}  # the labels come from one clip (make_p2_camvid_splits.py says why)


def test_p2_protocol_reads_its_split_files():
    root = REPO.parent / "shared" / "data" / "camvid-180x240"
    if not root.is_dir():
        pytest.skip(f"{root} not found: CamVid is read from ../shared/data")
    cfg = load_config(REPO / "experiments" / "protocols" / "p2_camvid.yaml", [f"data.root={root}"])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        source = open_dataset(cfg.data)
    assert (len(source.split.labeled), len(source.split.unlabeled), len(source.val)) == (12, 355, 101)
    assert all(s.mask is None for s in source.split.unlabeled)
    assert {s.image.name[:6] for s in source.val} == {"0006R0"}


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
        path = gain.RUNS / "p1" / f"{gain.run_name(method, seed, 600)}.json"
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


@pytest.mark.parametrize("field, value, flag", [
    ("commit", "abc1234", "**Seeds [1] compare runs of different code versions**"),
    # the baseline's JSON has no "device": runs from before the field trained on the CPU
    ("device", "NVIDIA H200", "**Seeds [1] compare runs on different devices**"),
])
def test_pairs_of_different_code_versions_or_devices_are_flagged(gain, field, value, flag):
    for seed in (0, 1):
        write_run(gain, "supervised", seed, 0.30)
        write_run(gain, "cps", seed, 0.36, "supervised")
    path = gain.RUNS / "p1" / "cps-seed1-it600.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    gain.write_outputs()
    assert flag in (gain.RUNS / "README.md").read_text()


def test_self_correction_runs_get_boxes_of_the_unlabeled_masks_and_the_budget_of_the_baseline(
        gain, synthetic_root, tmp_path, monkeypatch):
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(fast_config(synthetic_root, tmp_path / "unused", "data.label_count=6").to_yaml())
    monkeypatch.setitem(gain.PROTOCOLS, "p1", gain.Protocol(config=str(protocol), all_labels=(),
                                                            methods=gain.self_correction_variants()))
    configs = []

    def fake_train(cfg):
        configs.append(cfg)
        stage_dir = Path(cfg.run.dir) / "primary"  # a chained run: the result is its last stage's
        stage_dir.mkdir(parents=True)
        (stage_dir / "metrics.jsonl").write_text(json.dumps({"step": 6, "steps_per_s": 2.0}) + "\n")
        return {"miou": 0.4, "iou": {"a": 0.4}, "run_dir": str(stage_dir)}

    monkeypatch.setattr(gain, "train_run", fake_train)
    linear = gain.run_once("p1", "self_correction_linear", 0, 8, "supervised")
    conv = gain.run_once("p1", "self_correction_conv", 0, 8, "supervised")

    assert (configs[0].train.steps, configs[0].self_correction.ancillary_steps) == (8, 8)
    # conv: corrector 2 + primary 6 = the baseline's 8 iterations
    assert (configs[1].train.steps, configs[1].self_correction.corrector_steps) == (6, 2)
    assert linear["it_per_s"] == 2.0 and conv["val_miou"] == 0.4  # read from the last stage's run
    boxes = Path(configs[0].data.unlabeled_boxes)
    source = open_dataset(configs[0].data)
    assert boxes == gain.WORK / "p1" / "unlabeled_object_boxes.txt" and len(source.split.unlabeled) == 18
    # the boxes of the first unlabeled image are those of its mask
    first = source.split.unlabeled[0]
    mask = source.reader.decode_mask(next(s.mask for s in source.train if s.image == first.image))
    expected = mask_boxes(mask, source.reader.classes)
    assert tuple(first.boxes) == tuple(expected) and expected


def fake_trainer(trained: list[tuple[str, int]], miou: float = 0.4):
    """A trainer that records ``(method, seed)``, writes one metrics record and returns a summary of ``miou``."""
    def train(cfg):
        trained.append((cfg.method, cfg.run.seed))
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
    assert (run["seed"], run["baseline"], run["device"]) == (1, "supervised", "cpu")  # paired once one exists
    assert gain.main(["--protocol", "p1", "--method", "cps", "--seed", "3", "--seed", "0", "--iterations", "8"]) == 0
    assert trained[1:] == [("supervised", 3), ("cps", 3), ("supervised", 0), ("cps", 0)]  # in the order given


def test_runner_local_trains_through_train_run_local_and_records_the_device(gain, monkeypatch):
    trained = []
    monkeypatch.setattr(gain, "train_run", lambda cfg: pytest.fail("--runner local trained through Ray"))
    monkeypatch.setattr(gain, "train_run_local", fake_trainer(trained))
    command = ["--protocol", "p1", "--method", "cps", "--seed", "0", "--iterations", "8", "--runner", "local"]
    assert gain.main(command) == 0
    assert trained == [("supervised", 0), ("cps", 0)]
    assert json.loads((gain.RUNS / "p1" / "cps-seed0-it8.json").read_text())["device"] == "cpu"

    # on a CUDA machine the local runner's runs name the GPU; the Ray runner's (no protocol sets use_gpu) do not
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Fake GPU")
    assert gain.device_name(gain.train_run_local) == "Fake GPU" and gain.device_name(None) == "cpu"


def test_train_run_local_decodes_in_two_processes_beside_one_thread(monkeypatch):
    import raysemi.engine.local

    gain = load_gain()
    calls = []
    monkeypatch.setattr(raysemi.engine.local, "train_local", lambda cfg, **kwargs: calls.append(kwargs) or {})
    gain.train_run_local("cfg")
    assert calls == [{"data_workers": 2, "torch_threads": 1}]


def load_gain_plan():
    spec = importlib.util.spec_from_file_location("gain_plan", REPO / "experiments" / "benchmarks" / "gain_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Stands in for gain.py: `SECONDS CODE [extra...]` prints its arguments and start time, sleeps SECONDS, prints its
# end time and exits with CODE; `--table` leaves a file `table` beside itself.
FAKE_GAIN = """\
import sys, time
from pathlib import Path
if "--table" in sys.argv:
    Path(__file__).with_name("table").touch()
    sys.exit(0)
print("args", *sys.argv[1:])
print("start", time.time(), flush=True)
time.sleep(float(sys.argv[1]))
print("end", time.time(), flush=True)
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture
def gain_plan(tmp_path, monkeypatch):
    module = load_gain_plan()
    script = tmp_path / "fake_gain.py"
    script.write_text(FAKE_GAIN)
    monkeypatch.setattr(module, "GAIN", script)
    monkeypatch.setattr(module, "POLL_S", 0.05)
    return module


def log_times(path: Path) -> dict[str, float]:
    """The ``start`` and ``end`` times a fake gain.py printed to its log."""
    return {word: float(value) for word, value in
            (line.split() for line in path.read_text().splitlines() if line.split()[0] in ("start", "end"))}


def test_read_plan_drops_comments_and_blank_lines_and_splits_like_a_shell(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text("# the baselines first\n\n--protocol p1 --method cps --seed 0   # a trailing comment\n"
                    "   \n--set 'cps.note=a b#c' --seed=1\n")
    assert load_gain_plan().read_plan(plan) == [["--protocol", "p1", "--method", "cps", "--seed", "0"],
                                                ["--set", "cps.note=a b#c", "--seed=1"]]


def test_run_plan_runs_jobs_at_a_time_and_stops_at_its_limits(gain_plan, tmp_path):
    """Two at a time; none starts after 1.5 s; whatever runs at 4 s is stopped. Lines 1 and 2 (0.5 s) run
    together; then 3 (10 s) and 4 (1.8 s); 4 ends after 0.5 + 1.8 > 1.5 s, so 5 never starts; 3 is stopped at 4 s."""
    plan = [["0.5", "0"], ["0.5", "3"], ["10", "0"], ["1.8", "0"], ["0", "0"]]
    logs = tmp_path / "logs"
    started, clock = time.monotonic(), time.time()  # the fake prints time.time()
    status = gain_plan.run_plan(plan, jobs=2, stop_starting=1.5, time_limit=4.0, logs=logs, extra=["--runner=local"])
    assert 4.0 <= time.monotonic() - started < 6.0
    assert status == {0: 0, 1: 3, 2: None, 3: 0, 4: None}
    assert sorted(p.name for p in logs.iterdir()) == ["01.log", "02.log", "03.log", "04.log"]
    times = [log_times(logs / f"0{n}.log") for n in (1, 2, 3, 4)]
    assert times[0]["start"] < times[1]["end"] and times[1]["start"] < times[0]["end"]  # 1 and 2 overlap
    assert times[2]["start"] >= min(times[0]["end"], times[1]["end"])  # 3 waited for a free slot
    assert "end" not in times[2]  # stopped while it slept
    assert times[3]["end"] - clock > 1.5  # 4 freed its slot after starting had stopped
    assert "args 0.5 0 --runner=local" in (logs / "01.log").read_text()


def test_gain_plan_main_fails_when_a_line_fails_and_rebuilds_the_table(gain_plan, tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text("0 0\n0 2  # fails\n")
    assert gain_plan.main([str(plan), "--jobs", "2", "--logs", str(tmp_path / "logs")]) == 1
    assert (tmp_path / "table").is_file()
    plan.write_text("0 0\n")
    assert gain_plan.main([str(plan), "--logs", str(tmp_path / "logs")]) == 0


def test_difference_text_uses_the_unrounded_mious():
    gain = load_gain()
    # 0.2504 − 0.2239 = 0.02650000000000002: rounded to 4 places first, it would print +2.6 beside a row's +2.7
    assert gain.difference_text({"miou": [0.2504], "baseline_miou": [0.2239]}) == "+2.7 ± 0.0 points"
    assert gain.difference_text({"miou": [0.36, 0.35], "baseline_miou": [0.30, 0.32]}) == "+4.5 ± 2.1 points"


def test_p2_cps_as_published_and_its_baselines_share_one_optimizer():
    gain = load_gain()
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
