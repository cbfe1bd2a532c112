"""Self-correction: the pure losses, the α schedules, the box encoder, the frozen ancillary and the stage plan."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from raysemi.config import load_config
from raysemi.data.formats import ClassInfo
from raysemi.data.weak_labels import CAMVID_CLASSES
from raysemi.errors import DataError
from raysemi.losses import linear_self_correction, soft_cross_entropy
from raysemi.methods import build_method
from raysemi.methods.self_correction import alpha_at, stage_configs
from raysemi.models import BoxEncoder, build_ancillary
from raysemi.models.box_encoder import box_constrained_log_probs


def _logits(seed, shape=(2, 4, 3, 5)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("alpha", [0.0, 0.5, 3.0, 30.0])
def test_linear_self_correction_is_the_normalised_weighted_geometric_mean(alpha):
    primary, ancillary = _logits(0).double(), _logits(1).double()  # p_anc^30 underflows float32
    q = linear_self_correction(primary, ancillary, alpha).softmax(1)
    p, p_anc = primary.softmax(1), ancillary.softmax(1)
    geometric = (p * p_anc**alpha) ** (1 / (1 + alpha))
    torch.testing.assert_close(q, geometric / geometric.sum(1, keepdim=True))


def test_alpha_limits_give_the_primary_and_the_ancillary():
    primary, ancillary = _logits(0), _logits(1)
    torch.testing.assert_close(linear_self_correction(primary, ancillary, 0.0).softmax(1), primary.softmax(1))
    torch.testing.assert_close(
        linear_self_correction(primary, ancillary, 1e7).softmax(1), ancillary.softmax(1), atol=1e-5, rtol=0
    )


def test_soft_cross_entropy_equals_cross_entropy_for_one_hot_targets():
    logits = _logits(2)
    labels = torch.randint(0, 4, (2, 3, 5), generator=torch.Generator().manual_seed(3))
    one_hot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    assert soft_cross_entropy(logits, one_hot).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_soft_cross_entropy_on_a_hand_made_pixel_and_no_gradient_into_the_target():
    # one pixel, logits (0, ln 3): log-softmax (ln 1/4, ln 3/4); target (1/2, 1/2): loss -(ln 1/4 + ln 3/4) / 2
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1).requires_grad_()
    target = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1).requires_grad_()
    loss = soft_cross_entropy(logits, target)
    assert loss.item() == pytest.approx(-(math.log(0.25) + math.log(0.75)) / 2)
    loss.backward()
    assert target.grad is None and logits.grad.abs().sum() > 0


def test_soft_cross_entropy_counts_valid_pixels_only():
    logits, target = _logits(4), _logits(5).softmax(1)
    valid = torch.zeros(2, 3, 5, dtype=torch.bool)
    valid[0, 1, 2] = True
    expected = -(target[0, :, 1, 2] * logits[0, :, 1, 2].log_softmax(0)).sum()
    assert soft_cross_entropy(logits, target, valid).item() == pytest.approx(expected.item(), rel=1e-6)
    assert soft_cross_entropy(logits, target, torch.zeros_like(valid)).item() == 0.0


@pytest.mark.parametrize("schedule", ["geometric", "linear", "cosine"])
def test_alpha_schedules_run_from_start_to_end(schedule):
    values = [alpha_at(step, 101, 30.0, 0.5, schedule) for step in range(101)]
    assert values[0] == pytest.approx(30.0) and values[-1] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # monotone
    middle = {"geometric": math.sqrt(30 * 0.5), "linear": 15.25, "cosine": 15.25}[schedule]
    assert values[50] == pytest.approx(middle)


def test_box_encoder_heatmaps_change_only_near_the_boxes():
    torch.manual_seed(0)
    encoder = BoxEncoder(raster_channels=3, widths=(4,))
    torch.nn.init.normal_(encoder.convs[0].weight)  # the zero init would hide every box
    background = torch.zeros(1, 3, 16, 16)
    background[:, 2] = 1.0  # "outside every box" everywhere
    with_box = background.clone()
    with_box[:, 1, 4:8, 6:10], with_box[:, 2, 4:8, 6:10] = 1.0, 0.0
    (plain,), (boxed,) = encoder(background, [(16, 16)]), encoder(with_box, [(16, 16)])
    changed = (plain - boxed).abs().amax(1)[0] > 1e-6
    near = torch.zeros(16, 16, dtype=torch.bool)
    near[3:9, 5:11] = True  # the box grown by the 3×3 conv's reach
    assert changed[4:8, 6:10].all() and not changed[~near].any()


def test_box_encoder_starts_at_a_uniform_half_that_batchnorm_absorbs():
    cfg = load_config(None, ["model.head_channels=16"])
    torch.manual_seed(0)
    ancillary = build_ancillary(cfg.model, num_classes=4).train()
    for module in ancillary.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # two forward passes must see the same network
    images, boxes = torch.randn(2, 3, 64, 64), torch.zeros(2, 5, 64, 64)
    boxes[:, 1, 8:40, 8:40], boxes[:, 4] = 1.0, 1.0
    heatmaps = ancillary.box_encoder(boxes, [(16, 16), (4, 4)])
    assert all(torch.all(heat == 0.5) for heat in heatmaps)  # weight 0, bias 0: sigmoid(0), whatever the boxes
    with torch.no_grad():
        with_boxes, without = ancillary(images, boxes)["logits"], ancillary.segmenter(images)["logits"]
    # the 0.5 scale is undone by the next BatchNorm (up to its eps): the pretrained path starts intact
    assert (with_boxes - without).abs().max() < 0.05 * without.abs().max()


def test_box_constraint_rules_out_classes_outside_their_boxes():
    logits = torch.tensor([0.0, 5.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 3).clone().requires_grad_()
    boxes = torch.zeros(1, 4, 1, 3)
    boxes[0, [0, 2], 0, 0] = 1.0  # pixel 0: inside boxes of classes 0 and 2 only
    boxes[0, 3, 0, 1] = 1.0  # pixel 1: outside every box (VOC: background); pixel 2: padding, all zero
    out = box_constrained_log_probs(logits, boxes)
    half = math.log(0.5)
    assert out[0, :, 0, 0].tolist() == pytest.approx([half, -20.0, half])
    everything = torch.log_softmax(torch.tensor([0.0, 5.0, 0.0]), 0).tolist()
    assert out[0, :, 0, 1].tolist() == pytest.approx(everything)  # nothing allowed: everything allowed
    assert out[0, :, 0, 2].tolist() == pytest.approx(everything)
    free = box_constrained_log_probs(logits, boxes, free_classes=(1,))
    assert free[0, :, 0, 0].tolist() == pytest.approx(everything)
    out[0, :, 0, 0].sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 1, 0, 0] == 0  # ruled out: no gradient


def test_free_classes_must_be_class_ids():
    cfg = load_config(None, ["model.head_channels=16"])
    with pytest.raises(ValueError, match=r"self_correction.free_classes=\[7\]: class ids must be in 0..3"):
        build_ancillary(cfg.model, 4, box_constraint=True, free_classes=(7,))


@pytest.mark.parametrize("overrides, refused", [(["self_correction.free_classes=[]"], True), ([], False),
                                                 (["self_correction.free_classes=[0]"], False),
                                                 (["self_correction.box_constraint=false",
                                                   "self_correction.free_classes=[]"], False)])
def test_a_class_without_boxes_must_be_free_under_the_box_constraint(overrides, refused):
    # background never has boxes: ruled out inside every box, the ancillary could only fill boxes (on the
    # synthetic shapes, its val IoU then equals each shape's share of its box: disc 0.77 ≈ π/4). By default
    # (free_classes unset) the stuff classes are the free ones.
    cfg = load_config(None, ["method=self_correction", "data.unlabeled_boxes=b.txt", *overrides])
    source = SimpleNamespace(classes=ClassInfo(("background", "disc", "square"), ((0, 0, 0),) * 3))
    if refused:
        with pytest.raises(DataError, match=r"rules out class 0 \('background'\) inside every box.*"
                                            r"set self_correction.free_classes=\[0\]"):
            build_method(cfg).check_data(source)
    else:
        build_method(cfg).check_data(source)


def test_the_free_classes_default_to_the_stuff_classes_of_the_dataset(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"classes": list(CAMVID_CLASSES)}))
    camvid = ["method=self_correction", "data.unlabeled_boxes=b.txt", "data.format=generic",
              f"data.root={tmp_path}", "model.head_channels=16"]
    models = build_method(load_config(None, camvid)).build_models(num_classes=11)
    # CamVid's things are Car, Pedestrian, Bicyclist (8, 9, 10): the other eight may lie anywhere
    assert models["ancillary"].free_classes == (0, 1, 2, 3, 4, 5, 6, 7)
    models = build_method(load_config(None, [*camvid, "data.boxes.things=[2,6,8,9,10]"])).build_models(11)
    assert models["ancillary"].free_classes == (0, 1, 3, 4, 5, 7)  # Pole and SignSymbol boxed too


def test_primary_stage_freezes_the_ancillary():
    cfg = load_config(None, ["method=self_correction", "self_correction.stage=primary", "model.head_channels=16",
                             "data.unlabeled_boxes=boxes.txt"])
    models = build_method(cfg).build_models(num_classes=4)
    assert not any(p.requires_grad for p in models["ancillary"].parameters())
    assert all(p.requires_grad for p in models["primary"].parameters())


@pytest.mark.parametrize("mode, stages", [("linear", ["ancillary", "primary"]),
                                          ("conv", ["ancillary", "corrector", "primary"])])
def test_stages_chain_through_their_checkpoints(mode, stages):
    cfg = load_config(None, ["method=self_correction", f"self_correction.mode={mode}", "run.dir=runs/sc",
                             "train.steps=300", "self_correction.ancillary_steps=100", "data.unlabeled_boxes=b.txt"])
    configs = stage_configs(cfg)
    assert [c.self_correction.stage for c in configs] == stages
    assert [c.run.dir for c in configs] == [f"runs/sc/{s}" for s in stages]
    assert [c.run.init_from for c in configs] == [None] + [f"runs/sc/{s}" for s in stages[:-1]]
    assert [c.train.steps for c in configs] == [100] + [300] * (len(stages) - 1)
