"""SimFormer's pure pieces: focal and dice mask losses, their pairwise costs, the Hungarian matcher and the
pixel–pixel similarity losses, on hand-made inputs with values worked out by hand."""

import math

import pytest
import torch

from raysemi.losses import (
    ImageTargets,
    MatchCosts,
    balanced_pair_bce,
    complementary_loss,
    dice_loss,
    hungarian_match,
    matching_cost,
    novel_similarity,
    pairwise_dice_cost,
    pairwise_focal_cost,
    pixel_pair_similarity_targets,
    proposal_pixel_loss,
    sigmoid_focal_loss,
    similarity_distillation_loss,
)

LN2 = math.log(2)


def test_focal_loss_on_a_logit_of_zero():
    # p = 0.5 at both pixels: CE = ln 2, (1 - p_t)^2 = 1/4; α_t = 0.25 for the positive, 0.75 for the negative
    logits, targets = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx((0.25 + 0.75) * 0.25 * LN2 / 2)
    only_positive = torch.tensor([[True, False]])
    assert sigmoid_focal_loss(logits, targets, only_positive).item() == pytest.approx(0.25 * 0.25 * LN2)


def test_dice_loss_on_saturated_logits():
    # p = (1, 1, 0, 0), t = (1, 0, 1, 0): 1 - (2·1 + 1) / (2 + 2 + 1) = 0.4
    logits, targets = torch.tensor([[100.0, 100.0, -100.0, -100.0]]), torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert dice_loss(logits, targets).item() == pytest.approx(0.4)
    # dropping the third pixel: 1 - 3 / (2 + 1 + 1) = 0.25
    assert dice_loss(logits, targets, torch.tensor([True, True, False, True])).item() == pytest.approx(0.25)


def test_pairwise_costs_equal_the_losses_pair_by_pair():
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 3, 5), (torch.rand(3, 3, 5) > 0.5).float()
    focal, dice = pairwise_focal_cost(logits, targets), pairwise_dice_cost(logits, targets)
    assert focal.shape == dice.shape == (4, 3)
    for q in range(4):
        for t in range(3):
            assert focal[q, t].item() == pytest.approx(sigmoid_focal_loss(logits[q : q + 1], targets[t : t + 1]).item())
            assert dice[q, t].item() == pytest.approx(dice_loss(logits[q : q + 1], targets[t : t + 1]).item())


def test_hungarian_match_finds_the_cheapest_assignment():
    # the diagonal-ish assignment costs 1 + 1 + 1; any use of query 3 costs at least 4 + 1 + 1
    cost = torch.tensor([[1.0, 5, 5], [5, 5, 1], [5, 1, 5], [4, 4, 4]])
    queries, targets = hungarian_match(cost)
    assert queries.tolist() == [0, 1, 2] and targets.tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match="2 queries cannot each take one of 3 targets"):
        hungarian_match(cost[:2])


def test_novel_targets_are_matched_on_class_alone():
    torch.manual_seed(0)
    class_logits, mask_logits = torch.randn(5, 4), torch.randn(5, 6, 6)
    labels, masks = torch.tensor([0, 2]), (torch.rand(2, 6, 6) > 0.5).float()
    cost = matching_cost(class_logits, mask_logits, labels, masks, torch.tensor([True, False]))
    probs = class_logits.softmax(-1)
    assert torch.allclose(cost[:, 1], -probs[:, 2])  # novel: class only, whatever its mask row holds
    mask_part = 20 * pairwise_focal_cost(mask_logits, masks[:1]) + pairwise_dice_cost(mask_logits, masks[:1])
    assert torch.allclose(cost[:, 0], -probs[:, 0] + mask_part[:, 0])
    cheap = matching_cost(class_logits, mask_logits, labels, masks, torch.tensor([True, False]), MatchCosts(2, 0, 0))
    assert torch.allclose(cheap, -2 * probs[:, [0, 2]])


def test_pair_targets_and_balanced_bce():
    targets = pixel_pair_similarity_targets(torch.tensor([0, 1, 2]), torch.tensor([1, 1, 0]))
    assert targets.tolist() == [[0, 0, 1], [1, 1, 0], [0, 0, 0]]
    # one positive pair at logit 0 (BCE ln 2), three negatives at -100 (BCE ~0): balanced ½·ln 2, not ¼·ln 2
    logits = torch.tensor([[0.0, -100.0], [-100.0, -100.0]])
    pair_targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert balanced_pair_bce(logits, pair_targets).item() == pytest.approx(LN2 / 2)
    only_negatives = pair_targets == 0
    assert balanced_pair_bce(logits, pair_targets, only_negatives).item() == pytest.approx(0.0, abs=1e-6)


def test_student_similarity_and_distillation_gradient():
    scores_a = torch.tensor([[2.0, 0.0]], requires_grad=True)
    scores_b = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    student = novel_similarity(scores_a, scores_b)
    assert student.tolist() == [[1.0, 0.0, 0.0]]  # cos 1, cos 0, ReLU(cos π)
    teacher = torch.full((1, 3), 0.5, requires_grad=True)
    loss = similarity_distillation_loss(torch.full((1, 1), 0.5, requires_grad=True), teacher[:, :1])
    assert loss.item() == pytest.approx(LN2)
    similarity_distillation_loss(student, teacher).backward()
    assert teacher.grad is None and scores_a.grad is not None


def test_with_one_novel_class_the_distillation_sends_no_gradient():
    # K_n = 1: every score "vector" is a positive scalar, normalised to 1, so the student is 1 at every pair
    # whatever the scores, clamped to 1 - eps: the loss is BCE(1 - eps, teacher), and the scores get gradient 0.
    # (Why P2's Car-alone split cannot show pixel–pixel transfer: its `full` trains like its `basic`.)
    scores_a = torch.tensor([[0.9], [0.2], [0.01]], requires_grad=True)
    scores_b = torch.tensor([[0.5], [0.05]], requires_grad=True)
    student = novel_similarity(scores_a, scores_b)
    assert student.tolist() == [[1.0, 1.0]] * 3
    teacher = torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.99, 0.01]])
    loss = similarity_distillation_loss(student, teacher)
    top = torch.tensor(1 - 1e-6).item()  # 1 - eps as a float32 holds it
    expected = -(teacher * math.log(top) + (1 - teacher) * math.log(1 - top)).mean().item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert scores_a.grad.abs().max().item() == 0.0 and scores_b.grad.abs().max().item() == 0.0


def _two_class_image(h=4, w=4):
    """Class 1 (base) fills the left half; class 3 (novel) is tagged; its mask row holds junk that must not
    matter."""
    masks = torch.zeros(2, h, w)
    masks[0, :, : w // 2] = 1.0
    masks[1] = 1.0  # a novel row: never a mask target
    return ImageTargets(torch.tensor([1, 3]), masks, torch.tensor([True, False]), torch.ones(h, w, dtype=torch.bool))


def test_class_loss_weighs_no_object_by_a_tenth():
    # query 0 clearly class 1, query 1 clearly class 3, query 2 flat: matched 0→1, 1→3, query 2 is no-object
    class_logits = torch.zeros(3, 5)
    class_logits[0, 1], class_logits[1, 3] = 2.0, 2.0
    mask_logits = torch.zeros(3, 4, 4)
    losses, novel = proposal_pixel_loss(class_logits, mask_logits, _two_class_image())
    matched_ce = -math.log(math.exp(2) / (math.exp(2) + 4))
    expected = (2 * matched_ce + 0.1 * math.log(5)) / 2.1
    assert losses["loss_class"].item() == pytest.approx(expected)
    assert novel.tolist() == [1]
    # σ(0) = 0.5 everywhere against the left half: dice 1 − (2·4 + 1)/(8 + 8 + 1)
    assert losses["loss_dice"].item() == pytest.approx(1 - 9 / 17)
    total = losses["loss_class"] + 20 * losses["loss_focal"] + losses["loss_dice"]
    assert losses["loss"].item() == pytest.approx(total.item())


def test_novel_targets_never_receive_mask_loss():
    torch.manual_seed(0)
    class_logits = torch.zeros(3, 5)
    class_logits[0, 1], class_logits[1, 3] = 5.0, 5.0
    class_logits.requires_grad_()
    mask_logits = torch.randn(3, 4, 4)
    mask_logits[0, :, :2], mask_logits[0, :, 2:] = 3.0, -3.0  # query 0 matches the base class on both costs
    mask_logits.requires_grad_()
    losses, novel = proposal_pixel_loss(class_logits, mask_logits, _two_class_image())
    assert novel.tolist() == [1]
    losses["loss"].backward()
    per_query = mask_logits.grad.abs().flatten(1).sum(1)
    assert per_query[0] > 0 and per_query[1] == 0 and per_query[2] == 0  # base-matched only
    assert class_logits.grad[1].abs().sum() > 0  # the novel query still learns its class


def test_complementary_loss_covers_the_non_base_region():
    base = torch.tensor([[True, False]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    # every novel logit far below the ignore logit: the max is logit(0.05) at both pixels, no gradient
    mask_logits = torch.full((3, 1, 2), -100.0, requires_grad=True)
    loss = complementary_loss(mask_logits, torch.tensor([1, 2]), base, valid)
    focal = (0.75 * 0.05**2 * -math.log(0.95) + 0.25 * 0.95**2 * -math.log(0.05)) / 2
    dice = 1 - (2 * 0.05 + 1) / (0.1 + 1 + 1)
    assert loss.item() == pytest.approx(focal + dice)
    loss.backward()
    assert mask_logits.grad.abs().sum() == 0
    # a novel query that claims exactly the non-base pixel: the loss nearly vanishes, and query 0 (not
    # novel) gets no gradient
    claimed = torch.tensor([[[50.0, 50.0]], [[-50.0, 50.0]], [[-100.0, -100.0]]], requires_grad=True)
    loss = complementary_loss(claimed, torch.tensor([1, 2]), base, valid)
    loss.backward()
    assert loss.item() < 0.3 and claimed.grad[0].abs().sum() == 0
    assert complementary_loss(claimed, torch.tensor([], dtype=torch.long), base, valid).item() == 0.0


def test_complementary_loss_weights_its_focal_and_dice_terms():
    from raysemi.losses import complementary_loss

    logits = torch.randn(3, 6, 7, generator=torch.Generator().manual_seed(0))
    base = torch.zeros(6, 7, dtype=torch.bool)
    base[:3] = True
    valid = torch.ones(6, 7, dtype=torch.bool)
    queries = torch.tensor([0, 2])
    focal = complementary_loss(logits, queries, base, valid, 0.05, focal_weight=1.0, dice_weight=0.0)
    dice = complementary_loss(logits, queries, base, valid, 0.05, focal_weight=0.0, dice_weight=1.0)
    released = complementary_loss(logits, queries, base, valid, 0.05, focal_weight=20.0, dice_weight=1.0)
    assert focal > 0 and dice > 0
    assert released.item() == pytest.approx(20 * focal.item() + dice.item(), rel=1e-6)
    assert complementary_loss(logits, queries, base, valid, 0.05).item() == pytest.approx(focal.item() + dice.item())
