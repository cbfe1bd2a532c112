import json
import math

import pytest
import torch
from torch import nn

from raysemi.config import load_config
from raysemi.errors import ConfigError
from raysemi.methods import build_method


class NormalisedImage(nn.Module):
    """Logits = the image through a BatchNorm without affine weights (3 channels, 3 classes)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(3, affine=False)

    def forward(self, images):
        return {"logits": self.norm(images)}


def _batch():
    labeled = torch.zeros(1, 3, 1, 2)  # every channel 0
    unlabeled = torch.full((1, 3, 1, 2), 2.0)  # every channel 2
    return {"labeled": {"image": labeled, "mask": torch.zeros(1, 1, 2, dtype=torch.long)},
            "unlabeled": {"image": unlabeled}}


def test_by_default_the_supervised_baseline_reads_and_normalises_the_labeled_images_alone():
    method = build_method(load_config(None, ["train.batch_size=4", "train.unlabeled_batch_size=6"]))
    assert {name: spec.batch_size for name, spec in method.streams().items()} == {"labeled": 4}
    model = NormalisedImage()
    out = method.training_step({"segmenter": model}, _batch(), step=0)
    # one constant image: zero variance, every logit 0, CE = ln 3; BN's running mean moves 0.1 towards 0
    assert out["loss"].item() == pytest.approx(math.log(3), rel=1e-6)
    assert torch.equal(model.norm.running_mean, torch.zeros(3))


def test_unlabeled_batchnorm_puts_the_unlabeled_images_in_the_pass_without_a_loss_on_them():
    method = build_method(load_config(None, ["train.batch_size=4", "train.unlabeled_batch_size=6",
                                             "supervised.unlabeled_batchnorm=true"]))
    assert {name: spec.batch_size for name, spec in method.streams().items()} == {"labeled": 4, "unlabeled": 6}
    model = NormalisedImage()
    out = method.training_step({"segmenter": model}, _batch(), step=0)
    # batch mean 1, biased variance 1: the labeled pixels become -1 in every channel, so CE is still ln 3
    # (all logits equal) but BN's running mean moves 0.1 of the way to 1, the mean over both images
    assert out["loss"].item() == pytest.approx(math.log(3), rel=1e-5)
    assert torch.allclose(model.norm.running_mean, torch.full((3,), 0.1))


def test_unlabeled_batchnorm_changes_the_labeled_logits_and_the_loss_counts_only_labeled_pixels():
    method = build_method(load_config(None, ["supervised.unlabeled_batchnorm=true"]))
    model = NormalisedImage()
    batch = _batch()
    batch["labeled"]["image"] = torch.tensor([0.0, 0.0, 4.0]).reshape(1, 3, 1, 1).expand(1, 3, 1, 2).clone()
    out = method.training_step({"segmenter": model}, batch, step=0)
    # per channel over the 4 pixels: channels 0, 1 hold (0, 0, 2, 2) -> labeled -1; channel 2 holds (4, 4, 2, 2)
    # -> labeled +1. The labeled pixels' logits are (-1, -1, 1) with mask 0: CE = log(2 + e^2) + 1
    assert out["loss"].item() == pytest.approx(math.log(2 * math.exp(-1) + math.exp(1)) + 1, rel=1e-5)


class ImageAsLogits(nn.Module):
    """Logits = the image's 3 channels (3 classes)."""

    def forward(self, images):
        return {"logits": images}


def test_weak_boxes_fill_adds_the_ce_on_the_box_filled_masks_of_the_weak_images(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["background", "car", "person"]}))
    method = build_method(load_config(None, ["data.format=generic", f"data.root={tmp_path}", "train.batch_size=4",
                                             "train.unlabeled_batch_size=6", "supervised.weak_boxes=fill",
                                             "data.unlabeled_boxes=boxes.txt"]))
    assert {name: spec.batch_size for name, spec in method.streams().items()} == {"labeled": 4, "weak": 6}
    weak = torch.zeros(1, 3, 1, 3)
    weak[:, 1] = 2.0  # logits (0, 2, 0) on every weak pixel
    boxes = torch.zeros(1, 4, 1, 3, dtype=torch.uint8)
    boxes[0, 1, 0, 0] = 1  # pixel 0: inside a car box -> car
    boxes[0, 3, 0, 1] = 1  # pixel 1: outside every box -> background, the one stuff class; pixel 2: padding
    batch = {"labeled": {"image": torch.zeros(1, 3, 1, 3), "mask": torch.zeros(1, 1, 3, dtype=torch.long)},
             "weak": {"image": weak, "boxes": boxes}}
    out = method.training_step({"segmenter": ImageAsLogits()}, batch, step=0)
    # F: all logits 0, CE ln 3. W: pixel 0 -log(e²/(e² + 2)), pixel 1 -log(1/(e² + 2)), mean of the two
    loss_weak = (math.log(1 + 2 * math.exp(-2)) + math.log(2 + math.exp(2))) / 2
    assert out["loss_weak"].item() == pytest.approx(loss_weak, rel=1e-6)
    assert out["loss"].item() == pytest.approx(math.log(3) + loss_weak, rel=1e-6)


@pytest.mark.parametrize("overrides, error", [
    ([], "supervised.weak_boxes=fill needs data.unlabeled_boxes"),
    (["data.unlabeled_boxes=b.txt", "supervised.unlabeled_batchnorm=true"], "set supervised.unlabeled_batchnorm=false"),
])
def test_weak_boxes_fill_needs_a_boxes_file_and_no_second_unlabeled_stream(overrides, error):
    with pytest.raises(ConfigError, match=error):
        load_config(None, ["supervised.weak_boxes=fill", *overrides])
