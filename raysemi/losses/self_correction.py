"""Self-correction losses (Ibrahim et al., "Semi-Supervised Semantic Image Segmentation with Self-correcting
Networks", CVPR 2020): the linear combination of primary and ancillary predictions, and soft-target CE."""

from __future__ import annotations

import torch


def linear_self_correction(
    primary_logits: torch.Tensor, ancillary_logits: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Logits of q = argmin_q KL(q‖p) + α·KL(q‖p_anc), per pixel.

    The minimiser is the normalised weighted geometric mean ``(p · p_anc^α)^(1/(1+α))``, whose logits are
    ``(l_p + α·l_anc) / (1 + α)``: α = 0 gives the primary distribution, α → ∞ the ancillary one.

    Args:
        primary_logits, ancillary_logits: ``(N, C, H, W)``.
        alpha: α ≥ 0.

    Returns:
        ``(N, C, H, W)`` logits of q (differentiable; callers stop the gradient where q is a target).
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    return (primary_logits + alpha * ancillary_logits) / (1.0 + alpha)


def soft_cross_entropy(
    logits: torch.Tensor, target_probs: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over valid pixels of ``−Σ_k sg(q_k) · log softmax(logits)_k``.

    Args:
        logits: ``(N, C, H, W)`` predictions.
        target_probs: ``(N, C, H, W)`` target distribution q (no gradient flows into it).
        valid: ``(N, H, W)`` bool, pixels that count (e.g. not padding); None: all.

    Returns:
        Scalar; 0 (with the graph intact) when no pixel is valid.
    """
    per_pixel = -(target_probs.detach() * torch.log_softmax(logits.float(), dim=1)).sum(1)
    if valid is None:
        return per_pixel.mean()
    if not valid.any():
        return logits.sum() * 0.0
    return per_pixel[valid].mean()
