import importlib

import pytest

from raysemi.config import Config, load_config
from raysemi.errors import ConfigError


def test_defaults_are_the_embedded_default_run():
    cfg = load_config()
    assert (cfg.method, cfg.data.format, cfg.model.backbone) == ("supervised", "synthetic", "tiny")


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 50\nmodel:\n  head: pspnet\n")
    cfg = load_config(path, ["train.steps=7", "data.crop_size=[32,40]", "model.pretrained=false"])
    assert cfg.train.steps == 7 and cfg.model.head == "pspnet"
    assert cfg.data.crop_size == (32, 40) and cfg.model.pretrained is False


def test_unknown_key_names_it_and_suggests_the_close_one():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.step=5"])
    message = str(err.value)
    assert "unknown key train.step" in message and "did you mean train.steps?" in message
    assert "\n" not in message


def test_bad_choice_lists_accepted_values():
    with pytest.raises(ConfigError, match=r"model.backbone='resnet18' is not accepted; choose one of .*'resnet50'"):
        load_config(None, ["model.backbone=resnet18"])


def test_bad_value_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"train.steps: .* \(got 'many'\)"):
        load_config(None, ["train.steps=many"])


def test_typo_in_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("optim:\n  lr: 0.1\n  momentun: 0.9\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown key optim.momentun; did you mean optim.momentum"):
        load_config(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_global_batch_must_divide_among_workers():
    with pytest.raises(ConfigError, match="train.batch_size=6 is the global batch"):
        load_config(None, ["train.batch_size=6", "scaling.num_workers=4"])


def test_yaml_round_trip():
    cfg = load_config(None, ["train.steps=3"])
    assert Config.model_validate(__import__("yaml").safe_load(cfg.to_yaml())) == cfg


@pytest.mark.parametrize(("owner", "key"), [("raysemi.models.backbones.BACKBONES", "model.backbone"),
                                            ("raysemi.models.heads.HEADS", "model.head"),
                                            ("raysemi.data.formats.FORMATS", "data.format")])
def test_a_name_added_to_its_owners_dict_is_accepted_with_no_other_edit(owner, key, monkeypatch):
    module, _, name = owner.rpartition(".")
    with pytest.raises(ConfigError, match=rf"{key}='mine' is not accepted; choose one of .*"):
        load_config(None, [f"{key}=mine"])
    monkeypatch.setitem(getattr(importlib.import_module(module), name), "mine", object)
    section, field = key.split(".")
    assert getattr(getattr(load_config(None, [f"{key}=mine"]), section), field) == "mine"
