"""The directional contrastive loss of CAC (Lai et al., "Semi-supervised Semantic Segmentation with Directional
Context-aware Consistency", CVPR 2021), memory-efficient over tens of thousands of negatives.

For anchors φ1 (crop 1), their positives φ2 (the same image pixel seen in crop 2) and negatives φ_n, with
``r(a, b) = exp(a·b / τ)``::

    l(φ1, φ2) = −(1 / Σ M) Σ_i M_i · log( r(φ1_i, φ2_i) / (r(φ1_i, φ2_i) + Σ_n 1[ŷ1_i ≠ ŷ_n] · r(φ1_i, φ_n)) )
    M_i = 1[c1_i < c2_i] · 1[c2_i > γ]          (directional mask · positive filtering)

Each term is ``LSE_i − pos_i``: the log-sum-exp over the positive logit ``pos_i = φ1_i·φ2_i/τ`` and the
kept negative logits, minus the positive logit. The gradient reaches ``anchor`` only.

Memory: the N×M similarity matrix is never held whole. :class:`_ChunkedContrastive` walks the negatives in
chunks of ``chunk_size`` with an exact log-sum-exp (a fixed per-anchor shift that bounds every logit, or a
running maximum for features of unbounded norm; not a per-chunk approximation) and, in the same pass,
accumulates what the backward pass needs: ``∂LSE_i/∂φ1_i = (1/τ)·Σ_j softmax_ij · v_j``, the softmax-weighted
mean of the positive and kept negatives. Backward is then O(N·D) and recomputes nothing, so peak memory grows
with N × chunk, and the time is close to its floor of two N×M×D matrix products, plus one ``exp`` per logit
(see ``experiments/benchmarks/contrastive_loss.py``).
"""

from __future__ import annotations

import torch


def directional_contrastive_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    anchor_conf: torch.Tensor,
    positive_conf: torch.Tensor,
    anchor_label: torch.Tensor,
    neg_feats: torch.Tensor,
    neg_labels: torch.Tensor,
    temperature: float = 0.1,
    gamma: float = 0.75,
    chunk_size: int | str | None = None,
    *,
    directional: bool = True,
    negative_sampling: bool = True,
) -> torch.Tensor:
    """One direction of the loss, l(φ1, φ2).

    Args:
        anchor: ``(N, D)`` L2-normalised anchor features φ1 (the only input that receives gradient).
        positive: ``(N, D)`` L2-normalised positives φ2 (treated as constants).
        anchor_conf, positive_conf: ``(N,)`` classifier confidences c1, c2 (max softmax probability).
        anchor_label: ``(N,)`` int pseudo-labels ŷ1 of the anchors.
        neg_feats: ``(M, D)`` negative features (constants); ``M`` may be 0.
        neg_labels: ``(M,)`` their pseudo-labels.
        temperature: τ.
        gamma: positive filtering threshold γ (0 keeps every positive: softmax confidences are > 0).
        chunk_size: negatives per chunk; ``"auto"`` sizes chunks for the device (:func:`auto_chunk_size`);
            ``None`` computes the dense N×M matrix with plain autograd.
        directional: apply the directional mask ``1[c1 < c2]`` (False: the plain contrastive ablation).
        negative_sampling: drop negatives whose pseudo-label equals the anchor's (False: keep all).

    Returns:
        Scalar: Σ M_i·l_i / Σ M_i, or 0 (connected to ``anchor``'s graph) when no anchor is kept.
    """
    keep = anchor_mask(anchor_conf, positive_conf, gamma, directional)
    if not keep.any():
        return anchor.sum() * 0.0
    anchor, positive, labels = anchor[keep], positive[keep].detach(), anchor_label[keep]
    neg_feats = neg_feats.detach()
    if not negative_sampling:  # a label no negative carries keeps every negative
        labels = torch.full_like(labels, -1)
        neg_labels = torch.zeros_like(neg_labels)
    with torch.autocast(anchor.device.type, enabled=False):
        dtype = torch.promote_types(anchor.dtype, torch.float32)  # half precision under AMP → float32
        anchor, positive, neg_feats = anchor.to(dtype), positive.to(dtype), neg_feats.to(dtype)
        if chunk_size is None:
            per_anchor = _dense_contrastive(anchor, positive, labels, neg_feats, neg_labels, temperature)
        else:
            if chunk_size == "auto":
                chunk_size = auto_chunk_size(len(anchor), len(neg_feats), anchor.device)
            per_anchor = _ChunkedContrastive.apply(
                anchor, positive, labels, neg_feats, neg_labels, temperature, chunk_size
            )
    return per_anchor.mean()


def directional_alignment_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    anchor_conf: torch.Tensor,
    positive_conf: torch.Tensor,
    gamma: float = 0.75,
    *,
    directional: bool = True,
) -> torch.Tensor:
    """The ℓ2 ablation of CAC (Table 3, exp. I): mean ``‖φ1_i − sg(φ2_i)‖²`` over the anchors the masks keep.

    Shapes as in :func:`directional_contrastive_loss`; 0 (connected to ``anchor``) when no anchor is kept.
    """
    keep = anchor_mask(anchor_conf, positive_conf, gamma, directional)
    if not keep.any():
        return anchor.sum() * 0.0
    return (anchor[keep] - positive[keep].detach()).pow(2).sum(1).mean()


def anchor_mask(anchor_conf: torch.Tensor, positive_conf: torch.Tensor, gamma: float, directional: bool):
    """``(N,)`` bool M: ``1[c2 > γ]``, times ``1[c1 < c2]`` when ``directional``."""
    keep = positive_conf > gamma
    return keep & (anchor_conf < positive_conf) if directional else keep


def kept_anchor_shares(anchor_conf: torch.Tensor, positive_conf: torch.Tensor, gamma: float) -> dict[str, torch.Tensor]:
    """Share of anchors kept by the directional mask, by positive filtering, and by both (for logging)."""
    directional = anchor_conf < positive_conf
    filtered = positive_conf > gamma
    count = max(len(anchor_conf), 1)  # no anchors: shares of 0, not NaN
    return {
        "kept_directional": directional.float().sum() / count,
        "kept_filter": filtered.float().sum() / count,
        "kept_both": (directional & filtered).float().sum() / count,
    }


def _negative_logits(anchor, labels, neg_feats, neg_labels, temperature) -> torch.Tensor:
    """``(n, D)``, ``(n,)``, ``(m, D)``, ``(m,)`` → ``(n, m)`` logits, −inf where the labels are equal."""
    logits = anchor @ neg_feats.T / temperature
    return logits.masked_fill(labels[:, None] == neg_labels[None, :], float("-inf"))


def _dense_contrastive(anchor, positive, labels, neg_feats, neg_labels, temperature) -> torch.Tensor:
    """Per-anchor ``LSE − pos`` ``(n,)`` from the whole N×M matrix (plain autograd; the reference version)."""
    pos = (anchor * positive).sum(1) / temperature
    logits = torch.cat([pos[:, None], _negative_logits(anchor, labels, neg_feats, neg_labels, temperature)], 1)
    return torch.logsumexp(logits, 1) - pos


# Chunk of negatives per call on each device type when ``chunk_size="auto"``: the ``(N, chunk)`` float32 buffer
# is sized to about this many bytes (CPU: 4,096 negatives at N = 6,400 ran ~10 % faster than 2,048 and 2×
# faster than 512 on 2 cores; CUDA: large products).
AUTO_CHUNK_BYTES = {"cpu": 96 * 2**20, "cuda": 256 * 2**20}
# The fixed shift s_i bounds every logit, so each term exp(l − s_i) ≥ exp(−2·s_i); up to s_i = 30 that stays
# a normal float32 (≥ 1e-26); larger bounds take the online-maximum path.
FIXED_SHIFT_LIMIT = 30.0


def auto_chunk_size(anchors: int, negatives: int, device: torch.device) -> int:
    """Negatives per chunk so that the ``(anchors, chunk)`` float32 buffer is about ``AUTO_CHUNK_BYTES``."""
    budget = AUTO_CHUNK_BYTES.get(device.type, AUTO_CHUNK_BYTES["cpu"])
    return max(64, min(negatives, budget // (4 * max(anchors, 1))))


class _ChunkedContrastive(torch.autograd.Function):
    """Per-anchor ``LSE − pos`` ``(n,)`` over negatives in chunks; gradient for ``anchor`` only.

    Usual path (features of bounded norm, e.g. L2-normalised): every logit is at most ``s_i = |φ1_i|·max(|φ_n|,
    |φ2_i|) / τ`` (Cauchy–Schwarz), so ``exp(l − s_i)`` never overflows and one fixed shift replaces the running
    maximum. Per chunk that leaves one product ``[φ1/τ, −s] @ [φ_n, 1]ᵀ`` (the shift rides in an extra
    column), one in-place ``exp_``, zeroing the same-label blocks (anchors and negatives are sorted by label, so
    those are rectangles: about 1/C of the chunk), and one in-place ``addmm_`` into ``[Σ w·v, Σ w]`` (the row
    sums ride in a column of ones). Otherwise an online log-sum-exp with a running maximum.
    """

    @staticmethod
    def forward(ctx, anchor, positive, labels, neg_feats, neg_labels, temperature, chunk_size):
        pos = (anchor * positive).sum(1) / temperature
        shift = anchor.norm(dim=1) * torch.maximum(positive.norm(dim=1), _max_norm(neg_feats)) / temperature
        if len(neg_feats) and shift.max() <= FIXED_SHIFT_LIMIT:
            sum_exp, weighted = _fixed_shift_sums(anchor, positive, pos, shift, labels, neg_feats, neg_labels,
                                                  temperature, chunk_size)
        else:
            shift, sum_exp, weighted = _online_sums(anchor, positive, pos, labels, neg_feats, neg_labels,
                                                    temperature, chunk_size)
        ctx.save_for_backward(weighted.div_(sum_exp[:, None]).sub_(positive))
        ctx.temperature = temperature
        return shift + torch.log(sum_exp) - pos

    @staticmethod
    def backward(ctx, grad_output):
        (direction,) = ctx.saved_tensors  # softmax-weighted mean of positive and negatives, minus the positive
        grad_anchor = grad_output[:, None] * direction / ctx.temperature
        return grad_anchor, None, None, None, None, None, None


def _max_norm(feats: torch.Tensor) -> torch.Tensor:
    return feats.norm(dim=1).max() if len(feats) else feats.new_zeros(())


def _fixed_shift_sums(anchor, positive, pos, shift, labels, neg_feats, neg_labels, temperature, chunk_size):
    """``(Σ_j w_ij, Σ_j w_ij·v_j)`` with ``w_ij = exp(l_ij − s_i)`` over the positive and the kept negatives.

    Shapes: ``(n, D)`` anchor/positive, ``(n,)`` pos/shift/labels, ``(m, D)`` negatives, ``(m,)`` labels →
    ``(n,)``, ``(n, D)``.
    """
    n, d = anchor.shape
    order = torch.argsort(labels, stable=True)  # same-label pairs become rectangles of the N×M matrix
    neg_order = torch.argsort(neg_labels, stable=True)
    rows = torch.cat([anchor[order] / temperature, -shift[order, None]], 1)  # (n, D+1): rows·[v, 1] = l − s
    w_pos = torch.exp(pos - shift)[order, None]
    acc = torch.cat([positive[order] * w_pos, w_pos], 1)  # (n, D+1): Σ w·v, then Σ w in the last column
    chunk_buf = anchor.new_ones(min(chunk_size, len(neg_feats)), d + 1)
    logits_buf = anchor.new_empty(n * len(chunk_buf))
    blocks = _label_blocks(labels[order], neg_labels[neg_order])
    for start in range(0, len(neg_feats), chunk_size):
        index = neg_order[start : start + chunk_size]
        chunk = chunk_buf[: len(index)]
        chunk[:, :d] = neg_feats[index]
        weights = torch.mm(rows, chunk.T, out=logits_buf[: n * len(index)].view(n, len(index))).exp_()
        for row0, row1, col0, col1 in blocks:  # the negatives that share the anchors' label
            col0, col1 = max(col0 - start, 0), min(col1 - start, len(index))
            if col0 < col1:
                weights[row0:row1, col0:col1] = 0
        acc.addmm_(weights, chunk)
    unsorted = torch.empty_like(acc)
    unsorted[order] = acc
    return unsorted[:, d], unsorted[:, :d]


def _label_blocks(labels: torch.Tensor, neg_labels: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """For sorted ``(n,)`` and ``(m,)`` labels: ``(row0, row1, col0, col1)`` ranges that share a label."""
    def ranges(sorted_labels):
        values, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
        ends = counts.cumsum(0).tolist()
        return {v: (end - c, end) for v, c, end in zip(values.tolist(), counts.tolist(), ends, strict=True)}

    negative_ranges = ranges(neg_labels)
    return [(*rows, *negative_ranges[v]) for v, rows in ranges(labels).items() if v in negative_ranges]


def _online_sums(anchor, positive, pos, labels, neg_feats, neg_labels, temperature, chunk_size):
    """``(running max, Σ exp(l − max), Σ exp(l − max)·v)`` by an online log-sum-exp (features of any norm)."""
    # The positive is always in the set: start from it, so the running maximum is finite from the start.
    running_max, sum_exp, weighted = pos.clone(), torch.ones_like(pos), positive.clone()
    for start in range(0, len(neg_feats), chunk_size):
        chunk = neg_feats[start : start + chunk_size]
        logits = _negative_logits(anchor, labels, chunk, neg_labels[start : start + chunk_size], temperature)
        new_max = torch.maximum(running_max, logits.max(1).values)
        rescale = torch.exp(running_max - new_max)
        weights = torch.exp(logits - new_max[:, None])  # masked entries: exp(-inf) = 0
        sum_exp = sum_exp * rescale + weights.sum(1)
        weighted = weighted * rescale[:, None] + weights @ chunk
        running_max = new_max
    return running_max, sum_exp, weighted
