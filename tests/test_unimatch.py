"""UniMatch: its losses on hand-computed numbers and against a per-pixel reference written from the paper, its
view (weak + two strong views + CutMix boxes), the feature-perturbation branch, the mix batch's pseudo-labels,
and a short run in local mode."""

import math

import numpy as np
import pytest
import torch

from raysemi.config import load_config
from raysemi.data.formats import GenericFormat
from raysemi.data.pipeline import plan_records
from raysemi.data.streams import stream_decoder
from raysemi.data.transforms import TrainAugment
from raysemi.engine.local import train_local
from raysemi.losses.unimatch import TeacherLabels, confident_pseudo_label_loss, unimatch_losses, unimatch_total
from raysemi.methods import build_method
from raysemi.methods.unimatch import StrongViews, cutmix_box
from raysemi.sweeps import default_space
from raysemi.tracking import read_metrics
from tests.conftest import fast_config
from tests.test_method_contract import _batch

SMALL = ["method=unimatch", "model.backbone=tiny", "model.pretrained=false", "model.head_channels=16",
         "train.batch_size=2", "train.unlabeled_batch_size=2"]


def _labels(labels, confidence, valid):
    return TeacherLabels(torch.tensor(labels), torch.tensor(confidence), torch.tensor(valid))


def test_confident_loss_sums_confident_pixels_and_divides_by_every_valid_pixel():
    # pixel 0: logits (0, 0), CE = ln 2 for any label; pixel 1: logits (ln 3, 0), label 0: CE = ln(4/3)
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    both = _labels([[[1, 0]]], [[[0.96, 0.99]]], [[[True, True]]])
    assert confident_pseudo_label_loss(logits, both, 0.95).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    unsure = _labels([[[1, 0]]], [[[0.96, 0.5]]], [[[True, True]]])  # pixel 1 below τ: 0, still counted
    assert confident_pseudo_label_loss(logits, unsure, 0.95).item() == pytest.approx(math.log(2) / 2)
    padded = _labels([[[1, 0]]], [[[0.96, 0.99]]], [[[True, False]]])  # pixel 1 padding: neither
    assert confident_pseudo_label_loss(logits, padded, 0.95).item() == pytest.approx(math.log(2))
    nothing = _labels([[[1, 0]]], [[[0.96, 0.99]]], [[[False, False]]])
    assert confident_pseudo_label_loss(logits, nothing, 0.95).item() == 0.0


def test_pixels_mixed_in_take_the_other_batchs_label_confidence_and_padding():
    own = _labels([[[1, 1, 1]]], [[[0.9, 0.9, 0.9]]], [[[True, True, True]]])
    other = _labels([[[2, 2, 2]]], [[[0.1, 0.2, 0.3]]], [[[False, True, True]]])
    mixed = own.mixed(other, torch.tensor([[[1, 0, 1]]], dtype=torch.uint8))
    assert mixed.labels.tolist() == [[[2, 1, 2]]]
    assert mixed.confidence.flatten().tolist() == pytest.approx([0.1, 0.9, 0.3])
    assert mixed.valid.tolist() == [[[False, True, True]]]


def test_total_loss_has_the_released_weights():
    losses = {"strong1": torch.tensor(2.0), "strong2": torch.tensor(4.0), "perturbed": torch.tensor(8.0)}
    # (1 + 0.25·2 + 0.25·4 + 0.5·8) / 2
    assert unimatch_total(torch.tensor(1.0), losses).item() == pytest.approx(3.25)
    assert unimatch_total(torch.tensor(1.0), losses, strong_weight=1.0, perturbed_weight=0.0).item() == 2.0


def _paper_reference(weak, mix, strong, boxes, perturbed, valid, mix_valid, tau):
    """From the paper, pixel by pixel: H(p_w, p_s) = −log softmax(student)[argmax p_w] where max p_w ≥ τ, over
    the valid pixels; a pixel CutMixed from the other image takes that image's weak prediction and padding."""
    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    def term(student, box):
        total, count = 0.0, 0
        for i, y, x in np.ndindex(valid.shape):
            from_mix = box is not None and box[i, y, x]
            teacher = softmax((mix if from_mix else weak)[i, :, y, x])
            if not (mix_valid if from_mix else valid)[i, y, x]:
                continue
            count += 1
            if teacher.max() >= tau:
                total -= math.log(softmax(student[i, :, y, x])[teacher.argmax()])
        return total / count

    return {"strong1": term(strong[0], boxes[0]), "strong2": term(strong[1], boxes[1]),
            "perturbed": term(perturbed, None)}


def test_unlabeled_losses_match_the_papers_per_pixel_definition():
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 4, 5)
    weak, mix = 3 * torch.randn(shape, generator=g), 3 * torch.randn(shape, generator=g)
    strong = (torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    perturbed = torch.randn(shape, generator=g)
    boxes = (torch.randint(0, 2, (2, 4, 5), generator=g), torch.randint(0, 2, (2, 4, 5), generator=g))
    valid, mix_valid = torch.ones(2, 4, 5, dtype=torch.bool), torch.ones(2, 4, 5, dtype=torch.bool)
    valid[:, :, -1], mix_valid[0, 0] = False, False
    tau = 0.7
    ours = unimatch_losses(TeacherLabels.from_logits(weak, valid), TeacherLabels.from_logits(mix, mix_valid),
                           strong, boxes, perturbed, tau)
    reference = _paper_reference(*(t.numpy() for t in (weak, mix)), [s.numpy() for s in strong],
                                 [b.numpy() for b in boxes], perturbed.numpy(), valid.numpy(), mix_valid.numpy(), tau)
    for key, value in reference.items():
        assert value > 0 and ours[key].item() == pytest.approx(value, rel=1e-5), key
    confident = (weak.softmax(1).max(1).values >= tau) & valid
    assert ours["confident_share"].item() == pytest.approx(confident.sum().item() / valid.sum().item())


def test_cutmix_box_is_one_rectangle_of_the_drawn_area_inside_the_crop():
    assert cutmix_box(40, 56, torch.Generator().manual_seed(0), p=0.0).sum() == 0
    for seed in range(20):
        box = cutmix_box(40, 56, torch.Generator().manual_seed(seed), p=1.0)
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert box.sum() == height * width  # one filled rectangle
        assert rows[-1] - rows[0] + 1 == height and cols[-1] - cols[0] + 1 == width
        assert box.sum() <= 0.4 * 40 * 56 and 0.3 * width - 1 <= height <= width / 0.3 + 1
    assert torch.equal(cutmix_box(40, 56, torch.Generator().manual_seed(3)),
                       cutmix_box(40, 56, torch.Generator().manual_seed(3)))


def test_strong_views_decode_a_weak_crop_two_strong_versions_of_it_and_two_boxes(synthetic_root):
    from raysemi.data.streams import StreamSpec

    samples = GenericFormat(synthetic_root).samples("train")[:6]
    records = plan_records(samples, 6, 1, 0, seed=0, stream="unlabeled")
    spec = StreamSpec("unlabeled", 6, StrongViews(cutmix_p=1.0))
    decode = stream_decoder(spec, "generic", str(synthetic_root), TrainAugment((32, 48), color_jitter=0.0))
    columns = {key: np.array([r[key] for r in records]) for key in records[0]}
    out = decode(columns)
    for key in ("image", "image_s1", "image_s2"):
        assert out[key].shape == (6, 3, 32, 48) and out[key].dtype == np.uint8
    assert out["valid_pixels"].shape == (6, 32, 48) and out["valid_pixels"].all()  # 48×64 images ≥ the crop
    assert all(out[f"cutmix_box{k}"].reshape(6, -1).any(1).all() for k in (1, 2))  # p = 1: a box in each
    assert (out["cutmix_box1"] != out["cutmix_box2"]).any()  # each strong view its own box
    assert (out["image_s1"] != out["image_s2"]).any() and (out["image_s1"] != out["image"]).any()
    again = decode(columns)  # everything is drawn from the record's seed
    assert all(np.array_equal(out[key], again[key]) for key in out)


class _Zero(torch.nn.Module):
    def forward(self, features):
        return features * 0


def test_feature_perturbation_decodes_the_encoder_features_and_their_dropped_out_copy_in_one_batch():
    method = build_method(load_config(None, SMALL))
    model = method.build_models(4)["segmenter"].train()
    images = torch.randn(2, 3, 40, 56)
    out = model(images, perturb=True)
    assert out["logits"].shape == out["logits_fp"].shape == (2, 4, 40, 56)
    assert not torch.allclose(out["logits"], out["logits_fp"])
    model.eval()  # BatchNorm on running statistics: each image's logits depend on its own features only
    model.feature_dropout = _Zero()  # the perturbation made visible: every feature dropped
    out = model(images, perturb=True)
    low, high = model.backbone(images)
    assert torch.allclose(out["logits"], model(images)["logits"], atol=1e-5)
    dropped = model.decode(low * 0, high * 0, images.shape[-2:])["logits"]
    assert torch.allclose(out["logits_fp"], dropped, atol=1e-5)


def test_with_threshold_zero_every_unlabeled_term_trains_and_the_mix_batch_is_predicted_in_eval_mode():
    method = build_method(load_config(None, [*SMALL, "unimatch.threshold=0"]))
    models = method.build_models(4)
    batch = _batch(method)
    seen_modes = []
    hook = models["segmenter"].register_forward_pre_hook(lambda module, args: seen_modes.append(module.training))
    out = method.training_step(models, batch, step=0)
    hook.remove()
    assert seen_modes == [False, True, True]  # mix teacher in eval mode, then the two training forwards
    for key in ("loss_strong1", "loss_strong2", "loss_perturbed"):
        assert out[key] > 0, key
    assert out["confident_share"] == 1.0
    expected = (out["loss_sup"] + 0.25 * out["loss_strong1"] + 0.25 * out["loss_strong2"]
                + 0.5 * out["loss_perturbed"]) / 2
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_default_search_space_tunes_threshold_weights_and_dropout():
    space = default_space(load_config(None, ["method=unimatch"]))
    assert {"unimatch.threshold", "unimatch.strong_weight", "unimatch.fp_weight", "unimatch.dropout"} <= set(space)


def test_unimatch_trains_in_local_mode(synthetic_root, tmp_path):
    cfg = fast_config(synthetic_root, tmp_path / "run", "method=unimatch", "data.label_fraction=0.25",
                      "train.unlabeled_batch_size=4", "unimatch.threshold=0.3")
    summary = train_local(cfg, data_workers=0, torch_threads=1)
    records = read_metrics(tmp_path / "run")
    assert summary["steps"] == 4 and [r["step"] for r in records] == [2, 4]
    assert all(r["loss_strong1"] >= 0 and 0 <= r["confident_share"] <= 1 for r in records)
