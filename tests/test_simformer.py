"""The SimFormer method: targets, the weak-shot data view, partners, which losses train what, base/novel mIoU."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from raysemi.config import load_config
from raysemi.data.formats import GenericFormat
from raysemi.data.pairs import partner_samples, write_pairs_file
from raysemi.data.pipeline import plan_records
from raysemi.data.streams import stream_decoder
from raysemi.data.transforms import TrainAugment
from raysemi.data.weak_labels import ClassSplit
from raysemi.engine.metrics import ConfusionMatrix
from raysemi.engine.pseudo_labels import novel_pseudo_label
from raysemi.errors import DataError
from raysemi.methods import StreamSpec, build_method
from raysemi.methods.simformer import WeakShotView
from tests.test_method_contract import _batch
from tests.test_weak_labels import write_dataset

NOVEL = [4, 5]  # synthetic classes ring and cross


def _method(*overrides):
    cfg = load_config(None, ["method=simformer", "simformer.novel=[3]", "model.backbone=tiny", "train.batch_size=2",
                             "simformer.points=200", *overrides])
    return build_method(cfg)


def test_targets_supervise_mask_classes_and_add_novel_tags_without_masks():
    method = _method()
    method.build_models(num_classes=4)
    mask = torch.tensor([[0, 0, 255], [2, 2, 255]])  # class 3 (novel) hidden at the right
    tags = torch.tensor([1.0, 0.0, 1.0, 1.0])
    targets = method.image_targets(mask, tags, torch.ones(2, 3, dtype=torch.bool))
    assert targets.labels.tolist() == [0, 2, 3] and targets.is_base.tolist() == [True, True, False]
    assert targets.masks[0].tolist() == [[1, 1, 0], [0, 0, 0]] and targets.masks[2].sum() == 0
    # a class tagged but not novel gets no target without pixels; a novel class without a tag gets none
    assert method.image_targets(mask, torch.tensor([0.0, 1.0, 1.0, 0.0]), targets.valid).labels.tolist() == [0, 2]


def test_oracle_supervises_novel_pixels_like_base_ones():
    method = _method("simformer.oracle=true")
    models = method.build_models(num_classes=4)
    targets = method.image_targets(torch.tensor([[0, 3]]), torch.tensor([1.0, 0, 0, 1]), torch.ones(1, 2).bool())
    assert targets.labels.tolist() == [0, 3] and targets.is_base.all()
    assert set(models) == {"mask_former"} and method.class_groups == {"base": [0, 1, 2], "novel": [3]}


def _gradients(method, models):
    """Gradients of ``method``'s loss for ``models`` (built by another method object, whose weights they keep)
    on the contract batch, with the same point draws every call."""
    method.build_models(num_classes=4)  # resolves the class split
    for model in models.values():
        model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = method.training_step(models, _batch(method), step=0)
    out["loss"].backward()
    grads = {f"{m}.{n}": p.grad.clone() for m, model in models.items() for n, p in model.named_parameters()
             if p.grad is not None}
    return out, grads


def test_distillation_trains_the_segmenter_but_never_the_head():
    # two novel classes: with one, the cosine of 1-d score vectors is always 1 and distillation has no gradient
    no_similarity = ("simformer.similarity_weight=0", "simformer.complementary_weight=0", "simformer.novel=[2,3]")
    method = _method(*no_similarity)
    torch.manual_seed(0)
    models = method.build_models(num_classes=4)
    out, with_distill = _gradients(method, models)
    _, without = _gradients(_method(*no_similarity, "simformer.distill_weight=0"), models)
    assert out["loss_distill"] > 0
    head = [k for k in with_distill if k.startswith("similarity.")]
    assert head and all(with_distill[k].abs().sum() == 0 for k in head)  # the teacher's input is detached
    for changed in ("mask_former.class_head.weight", "mask_former.pixel_decoder.embed.weight"):
        assert not torch.allclose(with_distill[changed], without[changed]), changed


def test_similarity_loss_trains_the_head_and_the_pixel_embeddings_but_not_the_class_head():
    no_distill = ("simformer.distill_weight=0", "simformer.complementary_weight=0")
    method = _method(*no_distill)
    torch.manual_seed(0)
    models = method.build_models(num_classes=4)
    _, with_similarity = _gradients(method, models)
    _, without = _gradients(_method(*no_distill, "simformer.similarity_weight=0"), models)
    assert with_similarity["similarity.embed.weight"].abs().sum() > 0
    key = "mask_former.pixel_decoder.embed.weight"
    assert not torch.allclose(with_similarity[key], without[key])
    key = "mask_former.class_head.weight"
    torch.testing.assert_close(with_similarity[key], without[key])


def test_basic_model_has_no_head_and_no_pixel_losses():
    method = _method("simformer.similarity_weight=0", "simformer.distill_weight=0")
    torch.manual_seed(0)
    models = method.build_models(num_classes=4)
    out = method.training_step(models, _batch(method), step=0)
    assert set(models) == {"mask_former"} and "loss_distill" not in out
    deep = out["loss_proposal_pixel"]
    shallow = _method("simformer.similarity_weight=0", "simformer.distill_weight=0", "simformer.deep_supervision=false")
    out = shallow.training_step(models, _batch(shallow), step=0)
    assert out["loss_proposal_pixel"] < deep  # two decoder layers supervised against one


def test_weak_shot_view_hides_novel_pixels_keeps_their_tags_and_pairs_each_image(synthetic_root):
    reader = GenericFormat(synthetic_root)
    samples = reader.samples("train")[:4]
    view = WeakShotView(ClassSplit(tuple(NOVEL)))
    source = SimpleNamespace(reader=reader, classes=reader.classes)
    records = plan_records(samples, 4, 1, 0, seed=0, stream="labeled", columns=view.record_columns(source, samples))
    identity = TrainAugment((48, 64), (1.0, 1.0), hflip=False, color_jitter=0.0)  # the crop is the whole image
    decode = stream_decoder(StreamSpec("labeled", 4, view), "generic", str(synthetic_root), identity)
    out = decode({key: np.array([r[key] for r in records]) for key in records[0]})
    for prefix in ("", "partner_"):
        assert out[f"{prefix}image"].shape == (4, 3, 48, 64) and out[f"{prefix}valid_pixels"].all()
        assert not np.isin(out[f"{prefix}mask"], NOVEL).any()
    masks = {str(s.image): reader.decode_mask(s.mask) for s in samples}
    for prefix, key in (("", "image_path"), ("partner_", "partner_image_path")):
        for record, mask, tags in zip(records, out[f"{prefix}mask"], out[f"{prefix}image_tags"], strict=True):
            original = masks[record[key]]
            np.testing.assert_array_equal(mask, np.where(np.isin(original, NOVEL), 255, original))
            assert set(np.flatnonzero(tags)) == set(np.unique(original)) - {255}  # novel classes included
    assert sum(np.isin(masks[r["image_path"]], NOVEL).any() for r in records) > 0  # something was hidden


def test_a_crop_without_a_class_still_carries_the_images_tag(tmp_path):
    # 8 x 16 frames: class 1 only in column 0, class 2 only in column 15, class 0 elsewhere; an 8 x 8 crop at
    # scale 1 holds at most one of the two columns, but its tags are the whole image's: 0, 1 and 2
    mask = np.zeros((8, 16), np.uint8)
    mask[:, 0], mask[:, 15] = 1, 2
    write_dataset(tmp_path, mask, ("road", "car", "person"), count=4)
    reader = GenericFormat(tmp_path)
    samples = reader.samples("train")
    view = WeakShotView(ClassSplit((2,)), hide_novel=False)  # the oracle's view: the crop's classes are visible
    source = SimpleNamespace(reader=reader, classes=reader.classes)
    records = plan_records(samples, 4, 1, 0, seed=0, stream="labeled", columns=view.record_columns(source, samples))
    crop = TrainAugment((8, 8), (1.0, 1.0), hflip=False, color_jitter=0.0)
    decode = stream_decoder(StreamSpec("labeled", 4, view), "generic", str(tmp_path), crop)
    out = decode({key: np.array([r[key] for r in records]) for key in records[0]})
    for prefix in ("", "partner_"):
        crop_classes = [set(np.unique(m).tolist()) for m in out[f"{prefix}mask"]]
        assert all(not {1, 2} <= present for present in crop_classes)  # every crop lacks class 1 or 2
        assert out[f"{prefix}image_tags"].tolist() == [[1.0, 1.0, 1.0]] * 4


def test_partners_come_from_the_pairs_file_which_must_cover_the_split(synthetic_root, tmp_path):
    reader = GenericFormat(synthetic_root)
    samples = reader.samples("train")[:3]
    images = [s.image for s in samples]
    write_pairs_file(tmp_path / "pairs.txt", images, np.array([2, 0, 1]), np.array([0, 1, 2]), synthetic_root)
    partners = partner_samples(reader, samples, NOVEL, 0, str(tmp_path / "pairs.txt"))
    assert [partners[image].image for image in images] == [images[2], images[0], images[1]]
    with pytest.raises(DataError, match=r"pairs.txt: no partner for 1 training images"):
        partner_samples(reader, reader.samples("train")[:4], NOVEL, 0, str(tmp_path / "pairs.txt"))
    with pytest.raises(DataError, match=r"pairs.txt: partner .* is not a training image of this split"):
        partner_samples(reader, samples[:2], NOVEL, 0, str(tmp_path / "pairs.txt"))
    computed = partner_samples(reader, reader.samples("train"), NOVEL, 0)
    assert all(partners_image != image for image, partners_image in
               ((image, computed[image].image) for image in computed))


def test_base_and_novel_miou_average_their_own_classes():
    confusion = ConfusionMatrix(num_classes=3)
    # class 0: 3 right; class 1: 1 right, 1 taken for 2; class 2: 2 right → IoU 1, 1/2, 2/3
    confusion.update(torch.tensor([0, 0, 0, 1, 2, 2, 2]), torch.tensor([0, 0, 0, 1, 1, 2, 2]))
    summary = confusion.summary(["a", "b", "c"], {"base": [0, 1], "novel": [2]})
    assert summary["miou_base"] == pytest.approx(0.75) and summary["miou_novel"] == pytest.approx(2 / 3)
    assert summary["miou"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)


def test_class_split_draws_a_quarter_deterministically_and_keeps_background_base():
    base, novel = ClassSplit(novel_fraction=0.25, seed=3, keep_base=(0,)).resolve(21)
    assert len(novel) == 5 and 0 not in novel and (base, novel) == ClassSplit(None, 0.25, 3, (0,)).resolve(21)
    with pytest.raises(DataError, match=r"novel classes \[7\] are not class ids 0..6"):
        ClassSplit((7,)).resolve(7)


def test_pseudo_labels_fill_unknown_pixels_with_the_best_tagged_novel_class():
    scores = torch.zeros(4, 2, 3)
    scores[1] = 0.9  # a base class scoring high never wins an unknown pixel
    scores[2, 0] = 0.6  # novel 2 wins the top row, novel 3 the bottom row
    scores[3, 1] = 0.7
    hidden = torch.tensor([[0, 255, 255], [255, 255, 1]])
    assert novel_pseudo_label(scores, hidden, [2, 3]).tolist() == [[0, 2, 2], [3, 3, 1]]
    assert novel_pseudo_label(scores, hidden, [3]).tolist() == [[0, 3, 3], [3, 3, 1]]  # only its tags
    assert novel_pseudo_label(scores, hidden, []).tolist() == hidden.tolist()  # no novel tag: unknown stays


# --- the released code's losses (issue 20) ------------------------------------------------------------------


def test_detached_pair_features_keep_the_head_bce_out_of_the_pixel_embeddings():
    no_distill = ("simformer.distill_weight=0", "simformer.complementary_weight=0")
    torch.manual_seed(0)
    models = _method(*no_distill).build_models(num_classes=4)
    _, detached = _gradients(_method(*no_distill, "simformer.detach_pair_features=true"), models)
    _, without = _gradients(_method(*no_distill, "simformer.similarity_weight=0"), models)
    assert detached["similarity.embed.weight"].abs().sum() > 0  # the head still learns
    key = "mask_former.pixel_decoder.embed.weight"
    torch.testing.assert_close(detached[key], without[key])  # the embeddings see no BCE gradient


def test_complementary_loss_on_every_layer_adds_the_auxiliary_layers_term():
    # simformer.layers=2: one auxiliary layer; the weighted difference of the totals is the difference of the
    # logged complementary losses, and the all-layer term is larger (each layer's term is positive)
    keys = ("simformer.similarity_weight=0", "simformer.distill_weight=0", "simformer.complementary_weight=0.5")
    torch.manual_seed(0)
    models = _method(*keys).build_models(num_classes=4)
    last, _ = _gradients(_method(*keys), models)
    every, _ = _gradients(_method(*keys, "simformer.complementary_layers=all"), models)
    assert every["loss_complementary"] > last["loss_complementary"] > 0
    difference = every["loss"] - last["loss"]
    assert difference.item() == pytest.approx(0.5 * (every["loss_complementary"] - last["loss_complementary"]).item(),
                                              rel=1e-5)
