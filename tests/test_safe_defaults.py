"""Safe defaults: no code runs from a config or a checkpoint, and secrets stay in the environment."""

import pytest
import torch

from raysemi.cli import main
from raysemi.config import load_config
from raysemi.engine.checkpoint import load_tensors
from raysemi.errors import CheckpointError, ConfigError
from raysemi.ray.train import train
from tests.conftest import fast_config


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling would create the marker file


def test_a_yaml_tag_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f'run: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match=r"evil.yaml: not valid YAML \(line 1\)"):
        load_config(config)
    assert not marker.exists()


def test_a_checkpoint_holding_code_is_refused_not_run(synthetic_root, tmp_path, capsys):
    marker = tmp_path / "ran"
    checkpoint = tmp_path / "step_00000002"
    checkpoint.mkdir()
    with (checkpoint / "model.pt").open("wb") as handle:
        torch.save({"w": RunsCodeWhenUnpickled(marker)}, handle)
    (checkpoint / "meta.json").write_text('{"step": 2, "method": "supervised", "classes": ["a", "b"]}')
    (checkpoint / "config.yaml").write_text(fast_config(synthetic_root, tmp_path / "run").to_yaml())
    with pytest.raises(CheckpointError, match="model.pt: unreadable checkpoint file"):
        load_tensors(checkpoint / "model.pt")
    assert main(["eval", "--checkpoint", str(checkpoint)]) == 2
    assert "unreadable checkpoint file" in capsys.readouterr().err
    assert not marker.exists()


def test_secrets_in_the_environment_reach_no_file_of_the_run(synthetic_root, tmp_path, ray_local, monkeypatch):
    secrets = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
               "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    run_dir = tmp_path / "run"
    train(fast_config(synthetic_root, run_dir, "tracking.wandb.mode=offline", "train.checkpoint_every=2"))
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 10 and any(p.suffix == ".wandb" for p in files)  # checkpoints, logs and W&B's own files
    for path in files:
        content = path.read_bytes()
        for name, value in secrets.items():
            assert value.encode() not in content, f"{name} found in {path}"
