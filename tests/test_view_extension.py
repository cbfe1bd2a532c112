"""A method that needs a data view of its own, added the way a user adds one: the view and the method live in
this file, one ``register`` call adds the method, and nothing in the data pipeline, the loop or the contract
test changes. The view plans a record column of its own, decodes a second image per sample, and names both
images as image keys: they reach ``training_step`` as normalised floats."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from raysemi.data.pipeline import DecodeTrainBatch
from raysemi.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainAugment
from raysemi.data.views import View, fake_labels
from raysemi.engine.local import train_local
from raysemi.losses import pixel_cross_entropy
from raysemi.methods.base import Batch, Method, StreamSpec
from raysemi.methods.registry import method_names, register, unregister
from raysemi.models import LogitsOnly, build_segmenter, unwrap
from tests.conftest import fast_config
from tests.test_method_contract import _batch

SEEN: list[dict[str, torch.Tensor]] = []  # what training_step received, step by step


@dataclass(frozen=True)
class DecodeMirrorPairs:
    """Plain crops, plus ``mirror``: the crop flipped left-right where the record's ``mirrored`` is 1, else a
    copy; ``mirrored`` ``(B,)`` int64 comes along."""

    plain: DecodeTrainBatch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.plain(batch)
        mirrored = np.asarray(batch["mirrored"], dtype=np.int64)
        out["mirror"] = np.stack([image[..., ::-1] if flip else image for image, flip in zip(out["image"], mirrored,
                                                                                            strict=True)])
        return out | {"mirrored": mirrored}


@dataclass(frozen=True)
class MirrorPairs(View):
    """Each image with a mirrored copy of it (every other sample of the split, by a record column)."""

    image_keys = ("image", "mirror")

    def record_columns(self, source, samples):
        index = {sample.image: position for position, sample in enumerate(samples)}
        return lambda sample: {"mirrored": index[sample.image] % 2}

    def decoder(self, format_name: str, root: str, augment: TrainAugment) -> DecodeMirrorPairs:
        return DecodeMirrorPairs(DecodeTrainBatch(format_name, root, augment))

    def fake_batch(self, n, size, num_classes, labeled, generator) -> dict[str, torch.Tensor]:
        image = torch.randn(n, 3, *size, generator=generator)
        mirrored = torch.arange(n) % 2
        mirror = torch.where(mirrored.view(-1, 1, 1, 1).bool(), image.flip(-1), image)
        return {"image": image, "mirror": mirror, "mirrored": mirrored} | fake_labels(n, size, num_classes, labeled,
                                                                                      generator)


class MirrorConsistency(Method):
    """CE on the labeled crops + the squared difference between the prediction on each mirror and the
    (accordingly flipped) prediction on its image."""

    name = "mirror_consistency"

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        return {"segmenter": build_segmenter(self.cfg.model, num_classes)}

    def streams(self) -> dict[str, StreamSpec]:
        return {"labeled": StreamSpec("labeled", self.cfg.train.batch_size),
                "unlabeled": StreamSpec("unlabeled", self.cfg.train.unlabeled_batch_size, MirrorPairs())}

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        SEEN.append({key: value.detach().clone() for key, value in batch["unlabeled"].items()})
        labeled, unlabeled = batch["labeled"], batch["unlabeled"]
        segmenter = models["segmenter"]
        loss_ce = pixel_cross_entropy(segmenter(labeled["image"])["logits"], labeled["mask"])
        probs = segmenter(torch.cat([unlabeled["image"], unlabeled["mirror"]]))["logits"].softmax(1)
        direct, mirror = probs.chunk(2)
        flipped = unlabeled["mirrored"].view(-1, 1, 1, 1).bool()
        loss_mirror = (torch.where(flipped, direct.flip(-1), direct) - mirror).pow(2).mean()
        return {"loss": loss_ce + loss_mirror, "loss_mirror": loss_mirror.detach()}

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return LogitsOnly(unwrap(models["segmenter"]))


@pytest.fixture
def mirror_method():
    before = method_names()
    register(MirrorConsistency)  # the one registration line
    SEEN.clear()
    yield MirrorConsistency
    unregister(MirrorConsistency.name)
    assert method_names() == before


def test_a_method_with_its_own_view_trains_in_local_mode_and_gets_its_images_normalised(
        mirror_method, synthetic_root, tmp_path):
    cfg = fast_config(synthetic_root, tmp_path / "run", "method=mirror_consistency", "data.label_fraction=0.25",
                      "train.steps=3", "train.unlabeled_batch_size=4")
    summary = train_local(cfg, data_workers=0, torch_threads=1)
    assert summary["steps"] == 3 and len(SEEN) == 3
    mirrored_rows = 0
    for unlabeled in SEEN:
        assert unlabeled["image"].dtype == unlabeled["mirror"].dtype == torch.float32
        lowest = -max(IMAGENET_MEAN[c] / IMAGENET_STD[c] for c in range(3))  # a black pixel, normalised
        assert unlabeled["mirror"].min() >= lowest - 1e-6 and unlabeled["mirror"].min() < 0  # not raw uint8
        for image, mirror, flip in zip(unlabeled["image"], unlabeled["mirror"], unlabeled["mirrored"], strict=True):
            assert torch.equal(mirror, image.flip(-1) if flip else image)
            mirrored_rows += int(flip)
    assert 0 < mirrored_rows < 12  # the record column reached the decoder: some rows mirrored, some not


def test_the_view_brings_its_own_fake_batch_for_the_contract(mirror_method):
    from raysemi.config import load_config
    from raysemi.methods import build_method

    method = build_method(load_config(None, ["method=mirror_consistency", "model.backbone=tiny",
                                             "model.pretrained=false", "model.head_channels=16"]))
    batch = _batch(method)
    assert set(batch["unlabeled"]) == {"image", "mirror", "mirrored", "image_tags"}
    out = method.training_step(method.build_models(4), batch, step=0)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["loss_mirror"] > 0
