from pathlib import Path

import pytest

from raysemi.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_experiment_config_validates(path):
    cfg = load_config(path)
    assert path.stem.startswith(f"{cfg.method}_")


def test_the_synthetic_config_is_the_embedded_default():
    default = load_config()
    written = load_config(Path(CONFIGS[0]).with_name("supervised_synthetic.yaml"))
    assert written.model_dump(exclude={"run"}) == default.model_dump(exclude={"run"})
