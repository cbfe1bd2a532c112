"""Sweep files: distributions, checks against the tuned config, default spaces per method."""

from pathlib import Path

import pytest

from raysemi.config import load_config
from raysemi.errors import ConfigError
from raysemi.methods import method_names
from raysemi.sweeps import apply_values, check_space, default_space, load_sweep

REPO = Path(__file__).resolve().parents[1]

GOOD = """
metric: val_miou
samples: 4
scheduler: asha
grace_steps: 50
space:
  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
  cps.weight: {uniform: [0.5, 3.0]}
  cps.n_boxes: {randint: [1, 4]}
  cps.prop_range: {choice: [[0.25, 0.5], [0.1, 0.3]]}
  data.label_fraction: {grid: [0.0625, 0.125]}
"""


def _write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_a_sweep_file_reads_into_distributions(tmp_path):
    spec = load_sweep(_write(tmp_path, GOOD), load_config(None, ["method=cps", "train.eval_every=25"]))
    assert spec.samples == 4 and spec.grace_steps == 50 and spec.mode == "max"
    kinds = {key: (d.kind, d.argument) for key, d in spec.space.items()}
    assert kinds["optim.lr"] == ("loguniform", (1e-4, 1e-2))
    assert kinds["cps.n_boxes"] == ("randint", (1, 4)) and spec.space["cps.n_boxes"].examples() == [1, 3]
    assert kinds["data.label_fraction"] == ("grid", [0.0625, 0.125])


@pytest.mark.parametrize(("line", "message"), [
    ("  optim.lr: {loguniform: [0, 0.01]}", "space.optim.lr: loguniform takes [low, high] with low < high and low > 0"),
    ("  optim.lr: {uniform: [0.1]}", "space.optim.lr: uniform takes [low, high]"),
    ("  optim.lr: {normal: [0, 1]}", "space.optim.lr must be one of {loguniform: ..., uniform: ..., randint: ..."),
    ("  cps.weight: {choice: []}", "space.cps.weight: choice takes a non-empty list"),
    ("  optim.learning_rate: {uniform: [0.1, 0.2]}", "unknown key optim.learning_rate (accepted: backbone_lr_mult"),
    ("  cps.weight: {uniform: [-1.0, 2.0]}", "space.cps.weight=-1.0: cps.weight: Input should be greater than or"),
    ("  cps.eval: {grid: [first, last]}", "cps.eval='last' is not accepted; choose one of 'first', 'second'"),
])
def test_bad_sweep_entries_are_one_line_naming_the_key(tmp_path, line, message):
    path = _write(tmp_path, "space:\n" + line + "\n")
    with pytest.raises(ConfigError) as error:
        load_sweep(path, load_config(None, ["method=cps"]))
    assert message in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


def test_unknown_sweep_setting_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep.yaml: sampels: Extra inputs are not permitted"):
        load_sweep(_write(tmp_path, "sampels: 3\n"), load_config())
    with pytest.raises(ConfigError, match="sweep file not found"):
        load_sweep(tmp_path / "nope.yaml", load_config())


@pytest.mark.parametrize("method", sorted(method_names()))
def test_every_default_space_fits_its_method(method, tmp_path):
    extra = {"self_correction": ["data.unlabeled_boxes=b.txt"]}.get(method, [])
    base = load_config(None, [f"method={method}", "train.eval_every=100", *extra])
    space = default_space(base)
    assert "optim.lr" in space and all(key.startswith(("optim.", f"{method}.", "data.")) for key in space)
    check_space(space, base, source="defaults")  # raises if a value is not accepted
    spec = load_sweep(_write(tmp_path, "samples: 2\n"), base)  # no space: the method's default
    assert set(spec.space) == set(space)


def test_the_default_space_runs_one_search_per_label_fraction_where_the_fraction_takes_effect():
    fraction = ("grid", [0.0625, 0.125, 0.25])
    space = default_space(load_config(None, ["method=cps"]))
    assert (space["data.label_fraction"].kind, space["data.label_fraction"].argument) == fraction
    # a split file, a label count or a tags file fixes the split; simformer trains on every image
    for fixed in (["data.labeled_split=l.txt"], ["data.label_count=10"], ["data.unlabeled_tags=t.txt"],
                  ["data.unlabeled_boxes=b.txt", "method=self_correction"], ["method=simformer"]):
        base = load_config(None, ["method=cps", *fixed])
        assert "data.label_fraction" not in default_space(base), fixed


def test_a_trial_config_sets_every_sampled_key():
    cfg = apply_values(load_config(None, ["method=cps"]), {"optim.lr": 0.01, "cps.prop_range": [0.1, 0.3]})
    assert cfg.optim.lr == 0.01 and cfg.cps.prop_range == (0.1, 0.3)


def test_the_p2_cps_sweep_loads_on_p2_with_cps_as_published_and_scores_on_the_selection_split():
    path = REPO / "experiments" / "sweeps" / "cps_p2.yaml"
    overrides = ["method=cps", "optim.weight_decay=0.0005", "optim.decay_norm_and_bias=false",
                 "optim.backbone_lr_mult=1.0", "data.val_split=experiments/protocols/p2_camvid/selection.txt"]
    assert " ".join(overrides) in path.read_text()  # the command its header gives
    protocol = REPO / "experiments" / "protocols" / "p2_camvid.yaml"
    cfg = load_config(protocol, overrides)
    spec = load_sweep(path, cfg)
    assert set(spec.space) == {"cps.weight", "cps.confidence_threshold", "cps.prop_range", "cps.rampup_steps",
                               "optim.lr"}
    assert (spec.metric, spec.scheduler, spec.steps) == ("val_miou", "asha", cfg.train.steps)
    assert spec.grace_steps % cfg.train.eval_every == 0  # ASHA's rungs fall on evaluations
    assert cfg.data.val_split != load_config(protocol).data.val_split  # never the report split
    trial = apply_values(cfg, {"cps.prop_range": [0.1, 0.25], "cps.confidence_threshold": 0.0, "optim.lr": 0.02})
    assert trial.cps.prop_range == (0.1, 0.25) and trial.optim.backbone_lr_mult == 1.0
