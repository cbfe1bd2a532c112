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


def test_norm_and_bias_parameters_can_skip_weight_decay():
    # a 1x1 conv with bias and a BatchNorm: the conv weight decays; its bias and the norm parameters do not
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    cfg = OptimConfig(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.5, decay_norm_and_bias=False)
    optimizer, _ = build_optimizer({"m": model}, cfg, 10)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert sorted(groups) == ["head", "head_no_decay"]
    assert [p.shape for p in groups["head"]["params"]] == [(3, 2, 1, 1)] and groups["head"]["weight_decay"] == 0.5
    assert len(groups["head_no_decay"]["params"]) == 3 and groups["head_no_decay"]["weight_decay"] == 0.0
    # no gradient: one SGD step moves a decayed weight by lr · decay · w = 0.05 w, the rest not at all
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    before = [param.detach().clone() for param in model.parameters()]
    optimizer.step()
    conv_weight, conv_bias, norm_weight, norm_bias = model.parameters()
    torch.testing.assert_close(conv_weight.detach(), before[0] * 0.95)
    for param, old in zip((conv_bias, norm_weight, norm_bias), before[1:]):
        assert torch.equal(param.detach(), old)
    # the default decays every parameter, in the two groups of before
    default, _ = build_optimizer(_models(), OptimConfig(backbone_lr_mult=0.1), 10)
    assert [g["name"] for g in default.param_groups] == ["head", "backbone"]
