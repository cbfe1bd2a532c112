"""A method added the way a contributor adds one: one class and one ``register`` line. The config accepts it and
its section, it trains in local mode, and ``raysemi tune`` has its default search space; the registry is
restored after each test."""

import pytest
import torch
from pydantic import Field
from torch import nn

from raysemi.config import load_config
from raysemi.errors import ConfigError
from raysemi.losses import pixel_cross_entropy
from raysemi.methods.base import Batch, Method, StreamSpec
from raysemi.methods.registry import method_names, register, unregister
from raysemi.models import LogitsOnly, build_segmenter, unwrap
from raysemi.sections import Section
from raysemi.sweeps import default_space
from raysemi.tracking import read_metrics
from tests.conftest import fast_config


class ScaledCEConfig(Section):
    """The ``scaled_ce`` section."""

    scale: float = Field(1.0, gt=0.0, description="the loss is this times the pixel CE")


class ScaledCE(Method):
    """Pixel CE on the labeled stream, times ``scaled_ce.scale``."""

    name = "scaled_ce"
    config_model = ScaledCEConfig
    search_space = {"scaled_ce.scale": {"uniform": [0.5, 2.0]}}

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        return {"segmenter": build_segmenter(self.cfg.model, num_classes)}

    def streams(self) -> dict[str, StreamSpec]:
        return {"labeled": StreamSpec("labeled", self.cfg.train.batch_size)}

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        labeled = batch["labeled"]
        loss_ce = pixel_cross_entropy(models["segmenter"](labeled["image"])["logits"], labeled["mask"])
        return {"loss": self.cfg.scaled_ce.scale * loss_ce, "loss_ce": loss_ce.detach()}

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return LogitsOnly(unwrap(models["segmenter"]))


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
    with pytest.raises(ConfigError, match=r"method='scaled_ce' is not accepted; choose one of 'supervised', "
                                          r"'cps', 'cac', 'self_correction', 'simformer' or 'unimatch'"):
        load_config(None, ["method=scaled_ce"])
    with pytest.raises(ConfigError, match=r"unknown key scaled_ce \(accepted: cac, cps, data, eval, loss, method, "):
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
