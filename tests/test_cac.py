"""CAC: the directional contrastive loss, the overlapping crops, and the method's geometry and schedule."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raysemi.config import load_config
from raysemi.data.overlapping_crops import OverlappingCrops, overlap_boxes
from raysemi.losses import directional_alignment_loss, directional_contrastive_loss
from raysemi.losses.directional_contrastive import auto_chunk_size
from raysemi.methods.cac import ContextAwareConsistency, _overlap, crop_pair_stats


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def _random_case(n=40, m=300, d=16, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    anchor = (F.normalize(torch.randn(n, d, generator=g), dim=1) * scale).requires_grad_()
    positive = (F.normalize(torch.randn(n, d, generator=g), dim=1) * scale).requires_grad_()
    negatives = (F.normalize(torch.randn(m, d, generator=g), dim=1) * scale).requires_grad_()
    conf_1, conf_2 = torch.rand(n, generator=g), 0.5 + 0.5 * torch.rand(n, generator=g)
    labels, neg_labels = torch.randint(0, 4, (n,), generator=g), torch.randint(0, 4, (m,), generator=g)
    return anchor, positive, conf_1, conf_2, labels, negatives, neg_labels


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_loss_on_a_hand_made_case(chunk_size):
    # anchor (1,0), positive (0,1): pos logit 0; negative (1,0) of another class: logit 1; negative (-1,0) of
    # the anchor's class is dropped by negative sampling. τ = 1: l = -log(e^0 / (e^0 + e^1)) = log(1 + e).
    anchor = _unit([1.0, 0.0]).requires_grad_()
    loss = directional_contrastive_loss(
        anchor, _unit([0.0, 1.0]), torch.tensor([0.5]), torch.tensor([0.9]), torch.tensor([0]),
        _unit([1.0, 0.0], [-1.0, 0.0]), torch.tensor([1, 0]), temperature=1.0, chunk_size=chunk_size,
    )
    assert loss.item() == pytest.approx(math.log(1 + math.e), abs=1e-6)


def test_without_negative_sampling_every_negative_counts():
    # the same case, the same-class negative (-1,0) now counts too: logit -1
    loss = directional_contrastive_loss(
        _unit([1.0, 0.0]), _unit([0.0, 1.0]), torch.tensor([0.5]), torch.tensor([0.9]), torch.tensor([0]),
        _unit([1.0, 0.0], [-1.0, 0.0]), torch.tensor([1, 0]), temperature=1.0, negative_sampling=False,
    )
    assert loss.item() == pytest.approx(math.log(1 + math.e + math.exp(-1)), abs=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_gradient_reaches_the_anchor_only(chunk_size):
    anchor, positive, c1, c2, labels, negatives, neg_labels = _random_case()
    loss = directional_contrastive_loss(anchor, positive, c1, c2, labels, negatives, neg_labels, chunk_size=chunk_size)
    loss.backward()
    assert anchor.grad.abs().sum() > 0
    assert positive.grad is None and negatives.grad is None


def test_masked_anchors_contribute_nothing():
    anchor, positive, c1, c2, labels, negatives, neg_labels = _random_case()
    c1[:10], c2[10:20] = 0.99, 0.5  # 0..9 fail the directional mask, 10..19 positive filtering (γ = 0.75)
    base = directional_contrastive_loss(anchor, positive, c1, c2, labels, negatives, neg_labels, chunk_size=64)
    base.backward()
    assert anchor.grad[:20].abs().sum() == 0 and anchor.grad[20:].abs().sum() > 0
    moved = anchor.detach().clone()
    moved[:20] = F.normalize(torch.randn(20, 16), dim=1)
    again = directional_contrastive_loss(moved, positive, c1, c2, labels, negatives, neg_labels, chunk_size=64)
    assert again.item() == pytest.approx(base.item(), rel=1e-6)


def test_no_kept_anchor_gives_zero_with_a_graph():
    anchor, positive, c1, c2, labels, negatives, neg_labels = _random_case()
    never_confident = torch.full_like(c2, 0.7)  # below γ = 0.75 everywhere
    loss = directional_contrastive_loss(anchor, positive, c1 * 0, never_confident, labels, negatives, neg_labels)
    loss.backward()
    assert loss.item() == 0.0 and anchor.grad.abs().sum() == 0


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 299, 300, 10_000])
def test_chunked_equals_unchunked_in_value_and_gradient(chunk_size):
    anchor, positive, c1, c2, labels, negatives, neg_labels = _random_case()
    dense = directional_contrastive_loss(anchor, positive, c1, c2, labels, negatives, neg_labels)
    (dense_grad,) = torch.autograd.grad(dense, anchor)
    chunked = directional_contrastive_loss(
        anchor, positive, c1, c2, labels, negatives, neg_labels, chunk_size=chunk_size
    )
    (chunked_grad,) = torch.autograd.grad(chunked, anchor)
    assert chunked.item() == pytest.approx(dense.item(), rel=1e-5)
    torch.testing.assert_close(chunked_grad, dense_grad, rtol=1e-4, atol=1e-7)


def test_auto_chunk_size_sizes_the_buffer_per_device_and_equals_unchunked():
    # 96 MiB / (4 bytes × 6,400 anchors) = 3,932 negatives on CPU; 256 MiB / 25,600 = 10,485 on CUDA
    assert auto_chunk_size(6400, 19200, torch.device("cpu")) == 3932
    assert auto_chunk_size(6400, 19200, torch.device("cuda")) == 10485
    assert auto_chunk_size(6400, 500, torch.device("cpu")) == 500  # never more than the negatives
    anchor, positive, c1, c2, labels, negatives, neg_labels = _random_case()
    dense = directional_contrastive_loss(anchor, positive, c1, c2, labels, negatives, neg_labels)
    auto = directional_contrastive_loss(anchor, positive, c1, c2, labels, negatives, neg_labels, chunk_size="auto")
    assert auto.item() == pytest.approx(dense.item(), rel=1e-5)


def test_features_of_large_norm_take_the_online_path_and_still_equal_unchunked():
    # norm 3, τ = 0.05: the fixed shift would be 180 (> 30), so the running maximum is used
    anchor, positive, c1, c2, labels, negatives, neg_labels = _random_case(scale=3.0)
    dense = directional_contrastive_loss(anchor, positive, c1, c2, labels, negatives, neg_labels, temperature=0.05)
    (dense_grad,) = torch.autograd.grad(dense, anchor)
    chunked = directional_contrastive_loss(
        anchor, positive, c1, c2, labels, negatives, neg_labels, temperature=0.05, chunk_size=64
    )
    (chunked_grad,) = torch.autograd.grad(chunked, anchor)
    assert chunked.item() == pytest.approx(dense.item(), rel=1e-5)
    torch.testing.assert_close(chunked_grad, dense_grad, rtol=1e-4, atol=1e-6)


def test_chunked_gradient_passes_gradcheck():
    anchor, positive, c1, c2, labels, negatives, neg_labels = _random_case(n=6, m=20, d=4)
    anchor = anchor.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a: directional_contrastive_loss(
            a, positive.double(), c1, c2, labels, negatives.double(), neg_labels, chunk_size=3
        ),
        (anchor,),
    )


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_large_exponents_stay_finite(chunk_size):
    # τ = 0.05 with features of norm 30: logits up to 18,000, far past exp's float range
    anchor, positive, c1, c2, labels, negatives, neg_labels = _random_case(scale=30.0)
    loss = directional_contrastive_loss(
        anchor, positive, c1, c2, labels, negatives, neg_labels, temperature=0.05, chunk_size=chunk_size
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(anchor.grad).all()


def test_chunked_loss_saves_no_n_by_m_tensor_for_backward():
    anchor, positive, c1, c2, labels, negatives, neg_labels = _random_case(n=64, m=2000)
    c1.zero_()  # every anchor kept
    largest = {}
    for chunk_size in (None, 100):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, sizes=sizes: sizes.append(t.numel()) or t, lambda t: t):
            directional_contrastive_loss(
                anchor, positive, c1, c2, labels, negatives, neg_labels, gamma=0.0, chunk_size=chunk_size
            )
        largest[chunk_size] = max(sizes)
    assert largest[None] >= 64 * 2000  # the dense version keeps the N×M logits for backward
    assert largest[100] <= 64 * 16  # the chunked one keeps N×D tensors only (D = 16)


def test_l2_alignment_on_a_hand_made_case():
    anchor = _unit([1.0, 0.0], [0.0, 1.0]).requires_grad_()
    positive = _unit([0.0, 1.0], [0.0, 1.0])
    # anchor 0 is kept (‖(1,-1)‖² = 2), anchor 1 fails the directional mask
    loss = directional_alignment_loss(anchor, positive, torch.tensor([0.1, 0.95]), torch.tensor([0.9, 0.9]))
    loss.backward()
    assert loss.item() == pytest.approx(2.0)
    assert anchor.grad[1].abs().sum() == 0


# --- the overlapping crops ----------------------------------------------------------------------------------


def _coordinate_image(height=120, width=150):
    """uint8 image whose pixels name their position: R = y, G = x (mod 256), B = (y + 2x) mod 256."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([y % 256, x % 256, (y + 2 * x) % 256]).to(torch.uint8)


def test_overlap_boxes_point_at_the_same_image_content():
    crops = OverlappingCrops((64, 96), scale_range=(1.0, 1.0), photometric=False)
    image = _coordinate_image()
    ious = []
    for seed in range(60):
        pair = crops(image, torch.Generator().manual_seed(seed))
        unflipped = [im.flip(-1) if f else im for im, f in zip(pair.images, pair.flips, strict=True)]
        (a0, a1, a2, a3), (b0, b1, b2, b3) = pair.boxes.tolist()
        assert torch.equal(unflipped[0][:, a0:a2, a1:a3], unflipped[1][:, b0:b2, b1:b3])
        assert (pair.boxes % 8 == 0).all()
        ious.append((a2 - a0) * (a3 - a1) / (2 * 64 * 96 - (a2 - a0) * (a3 - a1)))
    assert all(0.1 <= iou <= 1.0 for iou in ious) and min(ious) < 0.9  # the crops do move apart
    assert any(pair.flips.tolist() for pair in [crops(image, torch.Generator().manual_seed(s)) for s in range(5)])


def test_crop_two_takes_the_nearest_iou_when_no_offset_fits_the_range():
    # 120x150 image, 64x96 crop: the closest non-zero offsets are one stride across, IoU 64*88/(2*64*96 - 64*88)
    crops = OverlappingCrops((64, 96), scale_range=(1.0, 1.0), iou_range=(0.99, 1.0), photometric=False)
    for seed in range(5):
        pair = crops(_coordinate_image(), torch.Generator().manual_seed(seed))
        assert pair.iou == pytest.approx(5632 / 6656)
        assert (pair.boxes[:, 2] - pair.boxes[:, 0]).tolist() == [64, 64]


def test_pairs_are_never_identical_where_the_image_leaves_room():
    # 72x104 image, 64x96 crop: only offsets of one stride fit (IoUs 56*96/6912, 64*88/6656, 56*88/7360)
    crops = OverlappingCrops((64, 96), scale_range=(1.0, 1.0), photometric=False, hflip=False)
    ious = {round(crops(_coordinate_image(72, 104), torch.Generator().manual_seed(s)).iou, 4) for s in range(100)}
    assert ious == {round(5376 / 6912, 4), round(5632 / 6656, 4), round(4928 / 7360, 4)}
    # an image exactly the crop's size leaves no room: the same crop twice
    assert crops(_coordinate_image(64, 96), torch.Generator().manual_seed(0)).iou == 1.0


def test_region_range_sets_the_long_side_relative_to_the_crop():
    # r = 2 on a 120x150 image and a 64x96 crop: long side 2*96 = 192, so the image becomes 154x192 (the
    # padded valid mask is all ones; the offsets reach (154-64)//8 and (192-96)//8 strides)
    crops = OverlappingCrops((64, 96), region_range=(2.0, 2.0), photometric=False, hflip=False)
    image_size = crops._scale_and_pad(_coordinate_image(), torch.Generator().manual_seed(0))[0].shape[-2:]
    assert tuple(image_size) == (154, 192)
    ious = [crops(_coordinate_image(), torch.Generator().manual_seed(s)).iou for s in range(200)]
    assert all(0.1 <= iou < 1.0 for iou in ious)


def test_crop_pair_stats_report_mean_iou_and_identical_share():
    stats = crop_pair_stats(torch.tensor([1.0, 0.5, 0.25, 1.0]))
    assert stats["crop_iou"].item() == pytest.approx(0.6875) and stats["crop_identical"].item() == 0.5


def test_padding_is_marked_invalid():
    crops = OverlappingCrops((64, 96), scale_range=(1.0, 1.0), hflip=False, photometric=False)
    pair = crops(_coordinate_image(40, 96), torch.Generator().manual_seed(0))
    assert pair.valid.shape == (2, 64, 96)
    assert pair.valid[:, :40].all() and not pair.valid[:, 40:].any()


def test_overlap_box_arithmetic():
    box_1, box_2, iou = overlap_boxes((0, 0), (8, 16), (32, 32))
    assert box_1 == (8, 16, 32, 32) and box_2 == (0, 0, 24, 16)
    assert iou == pytest.approx(24 * 16 / (2 * 32 * 32 - 24 * 16))


# --- the method ---------------------------------------------------------------------------------------------


class _ImageAsFeatures(nn.Module):
    """A 'segmenter' whose decoder features are the image itself: a pure per-pixel function."""

    def __init__(self):
        super().__init__()
        self.classifier = nn.Conv2d(3, 4, kernel_size=1)


def test_views_flip_back_and_cut_the_same_pixels_from_both_crops():
    method = ContextAwareConsistency(load_config(None, ["method=cac", "cac.projector=false"]))
    crops = OverlappingCrops((64, 96), scale_range=(1.0, 1.0), photometric=False)
    pairs = [crops(_coordinate_image().float(), torch.Generator().manual_seed(s)) for s in range(6)]
    models = {"segmenter": _ImageAsFeatures()}
    views = []
    for k in range(2):
        features = torch.stack([p.images[k] for p in pairs]).float()
        valid = torch.stack([p.valid[k] for p in pairs])
        flips = torch.stack([p.flips[k] for p in pairs])
        views.append(_overlap(method._view(models, features, valid, flips, (64, 96)),
                              torch.stack([p.boxes[k] for p in pairs])))
    assert len(views[0]["emb"]) > 0
    torch.testing.assert_close(views[0]["emb"], views[1]["emb"])
    torch.testing.assert_close(views[0]["conf"], views[1]["conf"])


def test_weight_is_off_before_the_start_step_then_ramps():
    method = ContextAwareConsistency(
        load_config(None, ["method=cac", "cac.weight=2.0", "cac.start_step=10", "cac.rampup_steps=20"])
    )
    assert [method.weight(s) for s in (0, 9, 10, 20, 30, 100)] == [0.0, 0.0, 0.0, 1.0, 2.0, 2.0]


class _BatchSizes(nn.Module):
    """A stand-in segmenter that records how many images each forward pass sees."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.sizes = []

    def forward(self, images):
        self.sizes.append(len(images))
        logits = self.scale * images[:, :1].repeat(1, 3, 1, 1)
        return {"logits": logits, "features": logits}


def test_the_weight_0_control_passes_the_unlabeled_crops_through_the_network_from_the_start_step():
    # 2 labeled images and 3 unlabeled pairs: 2 images before the start step, 2 + 3 + 3 = 8 from it on, so the
    # λ = 0 control's BatchNorm sees the same images as CAC's.
    method = ContextAwareConsistency(load_config(None, ["method=cac", "cac.weight=0", "cac.start_step=5",
                                                       "cac.rampup_steps=0"]))
    segmenter = _BatchSizes()
    batch = {"labeled": {"image": torch.zeros(2, 3, 4, 4), "mask": torch.zeros(2, 4, 4, dtype=torch.long)},
             "unlabeled": {"image": torch.zeros(3, 3, 4, 4), "image_2": torch.zeros(3, 3, 4, 4),
                           "crop_iou": torch.tensor([0.5, 0.5, 0.5])}}
    for step in (4, 5):
        method.training_step({"segmenter": segmenter}, batch, step=step)
    assert segmenter.sizes == [2, 8]


def _gather_on_rank(rank, port, results):
    import torch.distributed as dist

    from raysemi.methods.cac import _gather_padded

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        count = 3 if rank == 0 else 5  # rank 0's batch holds fewer pixels than the 5 asked
        feats = torch.full((count, 2), float(rank + 1))
        labels = torch.arange(count) + 10 * rank
        gathered_feats, gathered_labels = _gather_padded(feats, labels, size=5, world=2)
        results[rank] = (gathered_feats.tolist(), gathered_labels.tolist())
    finally:
        dist.destroy_process_group()


def test_negatives_are_gathered_from_every_worker_without_padding():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_gather_on_rank, args=(port, results), nprocs=2)
    expected = ([[1.0, 1.0]] * 3 + [[2.0, 2.0]] * 5, [0, 1, 2, 10, 11, 12, 13, 14])
    assert results[0] == results[1] == expected
