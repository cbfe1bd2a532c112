import math

import pytest
import torch

from raysemi.config import ModelConfig, OptimConfig
from raysemi.engine.optim import build_optimizer
from raysemi.models import build_segmenter


def _models():
    return {"segmenter": build_segmenter(ModelConfig(backbone="tiny", pretrained=False, head_channels=8), 3)}


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_backbone_group_gets_the_multiplier_and_lr_follows_poly(name):
    models = _models()
    optimizer, scheduler = build_optimizer(models, OptimConfig(name=name, lr=0.2, backbone_lr_mult=0.1), 10)
    groups = {g["name"]: g for g in optimizer.param_groups}
    backbone_params = {id(p) for p in models["segmenter"].backbone.parameters()}
    assert {id(p) for p in groups["backbone"]["params"]} == backbone_params
    assert not backbone_params & {id(p) for p in groups["head"]["params"]}
    assert groups["head"]["lr"] == pytest.approx(0.2) and groups["backbone"]["lr"] == pytest.approx(0.02)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    assert groups["head"]["lr"] == pytest.approx(0.2 * (1 - 4 / 10) ** 0.9)
    assert groups["backbone"]["lr"] == pytest.approx(0.02 * (1 - 4 / 10) ** 0.9)
    assert isinstance(optimizer, torch.optim.SGD if name == "sgd" else torch.optim.AdamW)
    assert math.isclose(scheduler.get_last_lr()[0], groups["head"]["lr"])
