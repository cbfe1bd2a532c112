"""The directional contrastive loss of CAC (Lai et al., "Semi-supervised Semantic Segmentation with Directional
Context-aware Consistency", CVPR 2021), memory-efficient over tens of thousands of negatives.

For anchors φ1 (crop 1), their positives φ2 (the same image pixel seen in crop 2) and negatives φ_n, with
``r(a, b) = exp(a·b / τ)``::

    l(φ1, φ2) = −(1 / Σ M) Σ_i M_i · log( r(φ1_i, φ2_i) / (r(φ1_i, φ2_i) + Σ_n 1[ŷ1_i ≠ ŷ_n] · r(φ1_i, φ_n)) )
    M_i = 1[c1_i < c2_i] · 1[c2_i > γ]          (directional mask · positive filtering)

Each term is ``LSE_i − pos_i``: the log-sum-exp over the positive logit ``pos_i = φ1_i·φ2_i/τ`` and the
kept negative logits, minus the positive logit. The gradient reaches ``anchor`` only.

Memory: the N×M similarity matrix is never held whole. :class:`_ChunkedContrastive` walks the negatives in
chunks of ``chunk_size`` with an online log-sum-exp (running maximum, rescaled sum; exact, not a per-chunk
approximation) and, in the same pass, accumulates what the backward pass needs: ``∂LSE_i/∂φ1_i = (1/τ)·Σ_j
softmax_ij · v_j``, the softmax-weighted mean of the positive and kept negatives. Backward is then O(N·D) and
recomputes nothing, so peak memory grows with N × chunk, and time stays at the dense version's two matrix
products per chunk (see ``experiments/benchmarks/contrastive_loss.py``).
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
    chunk_size: int | None = None,
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
        chunk_size: negatives per chunk; ``None`` computes the dense N×M matrix with plain autograd.
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


class _ChunkedContrastive(torch.autograd.Function):
    """Per-anchor ``LSE − pos`` ``(n,)`` over negatives in chunks; gradient for ``anchor`` only."""

    @staticmethod
    def forward(ctx, anchor, positive, labels, neg_feats, neg_labels, temperature, chunk_size):
        pos = (anchor * positive).sum(1) / temperature
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
        ctx.save_for_backward(weighted / sum_exp[:, None] - positive)
        ctx.temperature = temperature
        return running_max + torch.log(sum_exp) - pos

    @staticmethod
    def backward(ctx, grad_output):
        (direction,) = ctx.saved_tensors  # softmax-weighted mean of positive and negatives, minus the positive
        grad_anchor = grad_output[:, None] * direction / ctx.temperature
        return grad_anchor, None, None, None, None, None, None
