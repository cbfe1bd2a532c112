import math

import torch

from raysemi.losses import ohem_cross_entropy, pixel_cross_entropy


def _logits(*pixel_logits):
    """``(1, C, 1, P)`` from P per-pixel logit vectors."""
    return torch.tensor(pixel_logits, dtype=torch.float32).T.reshape(1, len(pixel_logits[0]), 1, -1)


def test_cross_entropy_on_hand_values_ignores_255():
    logits = _logits([0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0])
    target = torch.tensor([[[0, 0, 255]]])
    # pixel 1: -log(1/2); pixel 2: -log(3/4); pixel 3 ignored
    expected = (math.log(2) + math.log(4 / 3)) / 2
    assert math.isclose(pixel_cross_entropy(logits, target).item(), expected, rel_tol=1e-6)


def test_all_ignored_is_zero_with_graph():
    logits = _logits([1.0, 2.0]).requires_grad_()
    loss = pixel_cross_entropy(logits, torch.tensor([[[255]]]))
    loss.backward()
    assert loss.item() == 0 and logits.grad.abs().sum() == 0


def test_ohem_keeps_pixels_whose_true_class_probability_is_below_threshold():
    # true-class probabilities: 0.5, 0.75, 0.9, 0.2 -> with threshold 0.7 and min_kept 1, keep 0.5 and 0.2
    logits = _logits([0.0, 0.0], [math.log(3.0), 0.0], [math.log(9.0), 0.0], [0.0, math.log(4.0)])
    target = torch.tensor([[[0, 0, 0, 0]]])
    expected = (-math.log(0.5) - math.log(0.2)) / 2
    assert math.isclose(ohem_cross_entropy(logits, target, 0.7, min_kept=1).item(), expected, rel_tol=1e-6)


def test_ohem_raises_the_threshold_to_keep_min_kept_pixels():
    logits = _logits([0.0, 0.0], [math.log(3.0), 0.0], [math.log(9.0), 0.0], [0.0, math.log(4.0)])
    target = torch.tensor([[[0, 0, 0, 0]]])
    # min_kept=3: the 3rd smallest probability is 0.75 > 0.7, so 0.2, 0.5 and 0.75 count
    expected = (-math.log(0.5) - math.log(0.75) - math.log(0.2)) / 3
    assert math.isclose(ohem_cross_entropy(logits, target, 0.7, min_kept=3).item(), expected, rel_tol=1e-6)
    # no more valid pixels than min_kept: plain CE over all
    assert math.isclose(ohem_cross_entropy(logits, target, 0.7, min_kept=4).item(),
                        pixel_cross_entropy(logits, target).item(), rel_tol=1e-6)
