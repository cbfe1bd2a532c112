"""SimFormer's pair similarity head and the point sampler that feeds it."""

import torch

from raysemi.losses import balanced_pair_bce, pixel_pair_similarity_targets
from raysemi.models.similarity_head import PairSimilarityHead, sample_pair_points


def test_head_scores_every_cross_pair_and_learns_same_class():
    torch.manual_seed(0)
    centres = torch.randn(3, 8) * 3
    labels_a, labels_b = torch.randint(0, 3, (20,)), torch.randint(0, 3, (15,))
    feats_a, feats_b = centres[labels_a] + 0.3 * torch.randn(20, 8), centres[labels_b] + 0.3 * torch.randn(15, 8)
    head = PairSimilarityHead(8, hidden=32)
    assert head(feats_a, feats_b).shape == (20, 15)
    targets = pixel_pair_similarity_targets(labels_a, labels_b)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    before = balanced_pair_bce(head(feats_a, feats_b), targets).item()
    for _ in range(150):
        optimizer.zero_grad()
        balanced_pair_bce(head(feats_a, feats_b), targets).backward()
        optimizer.step()
    predicted = head(feats_a, feats_b) > 0
    assert before > 0.6 and (predicted == targets.bool()).float().mean() > 0.95


def test_head_first_layer_per_point_equals_the_layer_on_concatenated_pairs():
    torch.manual_seed(0)
    head = PairSimilarityHead(6, hidden=16, blocks=1)
    feats_a, feats_b = torch.randn(4, 6), torch.randn(3, 6)
    pairs = torch.cat([feats_a[:, None].expand(-1, 3, -1), feats_b[None].expand(4, -1, -1)], dim=-1)  # (4, 3, 12)
    expected = head.score(head.blocks(head.embed(pairs))).squeeze(-1)
    torch.testing.assert_close(head(feats_a, feats_b), expected)


def test_points_come_from_shared_base_classes_and_the_unknown_region():
    labels_a = torch.tensor([0] * 10 + [1] * 10 + [255] * 10 + [-1] * 10)  # 0 and 1 base, -1 padding
    labels_b = torch.tensor([1] * 10 + [2] * 10 + [255] * 5)  # shares only class 1 with a
    g = torch.Generator().manual_seed(0)
    idx_a, idx_b = sample_pair_points(labels_a, labels_b, num_points=10, generator=g)
    assert labels_a[idx_a].tolist().count(1) == 8 and labels_a[idx_a].tolist().count(255) == 2
    assert labels_b[idx_b].tolist().count(1) == 8 and labels_b[idx_b].tolist().count(255) == 2
    assert len(set(idx_a.tolist())) == 10  # no point twice
    # asking for more than there is: a has 10 shared + 10 unknown usable pixels, never class 0 or padding
    idx_a, _ = sample_pair_points(labels_a, labels_b, num_points=30, generator=g)
    assert len(idx_a) == 20 and set(labels_a[idx_a].tolist()) == {1, 255}
