"""The channels-last memory format: chosen per device, switchable, and every method's outputs unchanged by it."""

import pytest
import torch
from torch import nn

from raysemi.config import load_config
from raysemi.engine.loop import prepare_batch, use_channels_last
from raysemi.errors import ConfigError
from raysemi.methods import build_method
from tests.test_method_contract import METHODS, _batch, _config, _models


@pytest.mark.parametrize(
    ("setting", "device", "amp", "expected"),
    [("auto", "cpu", False, False), ("auto", "cuda", True, True), ("auto", "cuda", False, False),
     ("auto", "mps", False, False), (False, "cpu", False, False), (True, "cuda", False, True),
     (True, "cpu", False, True)],
)
def test_auto_chooses_per_device_and_an_explicit_setting_wins(setting, device, amp, expected):
    assert use_channels_last(setting, torch.device(device), amp) is expected


def test_config_key_accepts_auto_true_false_and_names_a_bad_value():
    assert load_config().train.channels_last == "auto"
    assert load_config(None, ["train.channels_last=false"]).train.channels_last is False
    accepted = r"train.channels_last='sometimes' is not accepted; choose one of 'auto', True or False"
    with pytest.raises(ConfigError, match=accepted):
        load_config(None, ["train.channels_last=sometimes"])


def test_prepare_batch_lays_out_images_channels_last_with_the_same_values():
    raw = {"image": torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).reshape(2, 3, 4, 5),
           "mask": torch.zeros(2, 4, 5, dtype=torch.uint8)}
    plain = prepare_batch(raw, torch.device("cpu"))["image"]
    nhwc = prepare_batch(raw, torch.device("cpu"), torch.channels_last)["image"]
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and not plain.stride() == nhwc.stride()
    assert torch.equal(plain, nhwc)


def _step(name: str, channels_last: bool) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One training step of ``name`` (dropout off: its mask is drawn in memory order) → logged values, grads."""
    method = build_method(_config(name))
    models = _models(method)
    batch = _batch(method)
    if channels_last:
        models = {k: m.to(memory_format=torch.channels_last) for k, m in models.items()}
        batch = {s: {k: v.contiguous(memory_format=torch.channels_last) if k.endswith("image") and v.dim() == 4
                     else v for k, v in stream.items()} for s, stream in batch.items()}
    for model in models.values():
        for module in model.modules():
            if isinstance(module, nn.Dropout | nn.Dropout2d):
                module.p = 0.0  # not .eval(): a method may switch modes and back (UniMatch's eval-mode mix pass)
    torch.manual_seed(1)
    out = method.training_step(models, batch, step=0)
    out["loss"].backward()
    grads = {f"{k}.{n}": p.grad for k, m in models.items() for n, p in m.named_parameters() if p.grad is not None}
    return {k: v.item() for k, v in out.items()}, grads


@pytest.mark.parametrize("name", METHODS)
def test_every_method_gives_the_same_loss_and_gradients_channels_last(name):
    logged, grads = _step(name, channels_last=False)
    logged_cl, grads_cl = _step(name, channels_last=True)
    assert logged_cl == pytest.approx(logged, rel=1e-4, abs=1e-5)
    assert grads_cl.keys() == grads.keys()
    for key, grad in grads.items():
        torch.testing.assert_close(grads_cl[key], grad, rtol=1e-3, atol=1e-4, msg=key)
