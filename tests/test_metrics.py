import math

import torch
from torch import nn

from raysemi.config import EvalConfig
from raysemi.engine.evaluate import sliding_window_logits
from raysemi.engine.metrics import ConfusionMatrix


def test_confusion_matrix_iou_on_a_known_case():
    target = torch.tensor([0, 0, 0, 1, 1, 2, 255])
    prediction = torch.tensor([0, 0, 1, 1, 1, 0, 2])
    cm = ConfusionMatrix(4)
    cm.update(prediction, target)
    assert cm.matrix.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    iou = cm.iou()
    # class 0: 2 / (3 + 3 - 2) = 0.5; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 0/1; class 3 absent -> NaN
    assert torch.allclose(iou[:3], torch.tensor([0.5, 2 / 3, 0.0], dtype=torch.float64))
    assert math.isnan(iou[3])
    assert math.isclose(cm.miou(), (0.5 + 2 / 3 + 0) / 3)
    assert math.isclose(cm.pixel_accuracy(), 4 / 6)
    summary = cm.summary(["a", "b", "c", "d"])
    assert summary["iou"]["d"] is None and math.isclose(summary["iou"]["b"], 2 / 3)


def test_sliding_window_matches_whole_image_for_a_pointwise_model():
    model = nn.Conv2d(3, 5, kernel_size=1)
    images = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        whole = model(images)
        slid = sliding_window_logits(model, images, crop=(16, 20), stride=(10, 13))
    assert torch.allclose(whole, slid, atol=1e-6)
    assert EvalConfig(mode="slide").mode == "slide"
