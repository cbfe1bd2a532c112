"""The mask-classification segmenter behind SimFormer: semantic output worked out by hand, shapes, and which
parameters each output trains."""

import math

import pytest
import torch

from raysemi.models import MaskFormer, MaskFormerShape, SemanticOutput, semantic_probabilities, sine_positions
from raysemi.models.backbones import build_backbone


def test_semantic_probabilities_weigh_masks_by_class_probabilities():
    # two queries, two classes (+ no-object); query 0 mask σ(0) = 0.5, query 1 mask σ(100) = 1
    class_probs = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]])
    mask_logits = torch.tensor([[[[0.0]], [[100.0]]]])
    scores = semantic_probabilities(class_probs.log(), mask_logits)
    # class 0: 0.5·0.5 + 0.1·1 = 0.35; class 1: 0.25·0.5 + 0.8·1 = 0.925
    assert scores.flatten().tolist() == pytest.approx([0.35, 0.925])


def test_sine_positions_encode_y_then_x():
    codes = sine_positions(1, 2, 4)  # one frequency: y = π (one row), x = π/2 and 3π/2
    assert codes.shape == (2, 4)
    assert codes[0].tolist() == pytest.approx([0.0, -1.0, 1.0, 0.0], abs=1e-6)
    assert codes[1].tolist() == pytest.approx([0.0, -1.0, -1.0, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="divisible by 4, got 6"):
        sine_positions(2, 2, 6)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    shape = MaskFormerShape(queries=5, dim=32, layers=3, heads=4, feedforward=64)
    return MaskFormer(build_backbone("tiny", 16, False, None), num_classes=4, shape=shape)


def test_outputs_have_the_documented_shapes(model):
    out = model(torch.randn(2, 3, 64, 96))
    assert out["class_logits"].shape == (2, 5, 5)
    assert out["mask_logits"].shape == (2, 5, 16, 24)
    assert out["pixel_embeddings"].shape == (2, 32, 16, 24)
    assert [tuple(c.shape) + tuple(m.shape) for c, m in out["aux"]] == [(2, 5, 5, 2, 5, 16, 24)] * 2
    assert SemanticOutput(model)(torch.randn(1, 3, 64, 96)).shape == (1, 4, 64, 96)


def test_mask_logits_train_the_mask_path_and_not_the_class_head(model):
    model.zero_grad(set_to_none=True)
    model(torch.randn(2, 3, 64, 64))["mask_logits"].square().mean().backward()
    assert model.class_head.weight.grad is None
    for module in (model.mask_head, model.pixel_decoder, model.query_decoder, model.backbone):
        assert all(p.grad is not None and math.isfinite(p.grad.abs().sum()) for p in module.parameters())
