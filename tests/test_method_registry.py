"""A method added the way a contributor adds one: one class and one ``register`` line. The config accepts it and
its section, it trains in local mode, and ``raysemi tune`` has its default search space; the registry is
restored after each test. A method outside the package, named in ``plugins:``, exists in every process that
reads the config: in Ray Train workers and Tune trials too."""

import re
import sys

import pytest
import yaml

from raysemi.config import Config, load_config
from raysemi.errors import ConfigError
from raysemi.methods.registry import method_names, register, unregister
from raysemi.sweeps import default_space
from raysemi.tracking import read_metrics
from tests.conftest import fast_config
from tests.scaled_ce import ScaledCE, ScaledCEConfig


@pytest.fixture
def scaled_ce():
    before = method_names()
    register(ScaledCE)  # the one registration line
    yield ScaledCE
    unregister(ScaledCE.name)
    assert method_names() == before


def test_the_config_accepts_the_method_and_its_section(scaled_ce, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: scaled_ce\nscaled_ce:\n  scale: 2.5\n")
    cfg = load_config(path)
    assert (cfg.method, cfg.scaled_ce.scale) == ("scaled_ce", 2.5)
    assert list(cfg.model_dump())[-1] == "scaled_ce"  # the last registered section comes last
    assert load_config(None, ["method=cps"]).scaled_ce.scale == 1.0  # every section is there, with defaults
    with pytest.raises(ConfigError, match=r"unknown key scaled_ce.scal; did you mean scaled_ce.scale\? "
                                          r"\(accepted: scale\)"):
        load_config(None, ["method=scaled_ce", "scaled_ce.scal=2"])
    with pytest.raises(ConfigError, match=r"scaled_ce.scale: Input should be greater than 0 \(got -1\)"):
        load_config(None, ["method=scaled_ce", "scaled_ce.scale=-1"])


def test_without_the_registration_the_name_and_the_section_are_refused():
    names = method_names()
    expected = ", ".join(map(repr, names[:-1])) + f" or {names[-1]!r}"
    with pytest.raises(ConfigError, match=re.escape(f"method='scaled_ce' is not accepted; choose one of {expected}")):
        load_config(None, ["method=scaled_ce"])
    accepted = ", ".join(Config.accepted_keys())
    with pytest.raises(ConfigError, match=re.escape(f"unknown key scaled_ce (accepted: {accepted})")):
        load_config(None, ["scaled_ce.scale=2"])


def test_a_name_is_registered_once(scaled_ce):
    with pytest.raises(ValueError, match="the name 'scaled_ce' is taken"):
        register(ScaledCE)
    with pytest.raises(ValueError, match="a method is a subclass of raysemi.methods.base.Method"):
        register(ScaledCEConfig)


def test_the_default_search_space_is_the_methods(scaled_ce):
    space = default_space(load_config(None, ["method=scaled_ce"]))
    assert set(space) == {"optim.lr", "optim.weight_decay", "scaled_ce.scale", "data.label_fraction"}
    assert (space["scaled_ce.scale"].kind, space["scaled_ce.scale"].argument) == ("uniform", (0.5, 2.0))


def test_a_method_without_a_search_space_is_told_to_give_one():
    class NoSpace(ScaledCE):
        name = "no_space"
        config_model = None
        search_space = None

    register(NoSpace)
    try:
        with pytest.raises(ConfigError, match="method no_space declares no default search space; give the sweep "
                                              "file a `space:`"):
            default_space(load_config(None, ["method=no_space"]))
    finally:
        unregister("no_space")


def test_the_method_trains_in_local_mode(scaled_ce, synthetic_root, tmp_path, ray_local):
    from raysemi.ray.train import train

    cfg = fast_config(synthetic_root, tmp_path / "run", "method=scaled_ce", "scaled_ce.scale=2")
    summary = train(cfg)
    records = read_metrics(tmp_path / "run")
    assert summary["method"] == "scaled_ce" and [r["step"] for r in records] == [2, 4]
    for r in records:
        assert r["loss"] == pytest.approx(2 * r["loss_ce"], rel=1e-5)


@pytest.fixture
def plugin_ce():
    """Leaves the registry and ``sys.modules`` as they were (the plug-in registers itself when imported)."""
    before = method_names()
    yield "tests.plugin_method"
    if "plugin_ce" in method_names():
        unregister("plugin_ce")
    sys.modules.pop("tests.plugin_method", None)
    assert method_names() == before


def test_a_config_imports_its_plugins_before_it_is_read(plugin_ce):
    assert "plugin_ce" not in method_names()
    cfg = load_config(None, [f"plugins=[{plugin_ce}]", "method=plugin_ce", "plugin_ce.scale=2"])
    assert (cfg.method, cfg.plugin_ce.scale) == ("plugin_ce", 2.0)
    assert Config.model_validate(cfg.model_dump()).plugin_ce.scale == 2.0  # as a worker rebuilds it


def test_a_plugin_that_cannot_be_imported_is_one_line():
    with pytest.raises(ConfigError, match=r"^plugins: cannot import 'no_such_plugin' \(No module named "
                                          r"'no_such_plugin'\); install it, or put its folder on PYTHONPATH"):
        load_config(None, ["plugins=[no_such_plugin]", "method=supervised"])


@pytest.mark.slow
def test_a_plugin_method_trains_with_two_workers_inside_a_tune_trial(plugin_ce, synthetic_root, tmp_path,
                                                                     ray_local):
    from raysemi.ray.tune import search
    from raysemi.sweeps import SweepSpec

    base = fast_config(synthetic_root, tmp_path / "unused", f"plugins=[{plugin_ce}]", "method=plugin_ce",
                       "scaling.num_workers=2", "scaling.cpus_per_worker=0.25")  # fits 2 CPUs with its data
    spec = SweepSpec.model_validate({"retries": 0, "samples": 1, "steps": 4, "scheduler": "fifo",
                                     "space": {"plugin_ce.scale": {"uniform": [0.5, 2.0]}}})
    (outcome,) = search(base, spec, tmp_path / "sweep")  # the trial and both workers rebuild the config
    assert outcome.status == "finished", outcome
    scale = outcome.params["plugin_ce.scale"]
    run_dir = tmp_path / "sweep" / "trials" / outcome.name
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["scaling"]["num_workers"] == 2
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert r["loss"] == pytest.approx(scale * r["loss_ce"], rel=1e-5)
