"""Grad-CAM for one pixel of a segmentation model (Selvaraju et al., ICCV 2017, applied per pixel as in the
CAC paper's supplementary analysis): which features of a layer the prediction at ``(y, x)`` rests on."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def grad_cam(model: nn.Module, layer: nn.Module, image: torch.Tensor, pixel: tuple[int, int],
             target_class: int | None = None) -> tuple[torch.Tensor, int]:
    """Grad-CAM of ``layer`` for the logit at ``pixel``.

    Back-propagates the pixel's logit of ``target_class`` (default: its top class) to ``layer``'s output A,
    weights A's channels by their spatially averaged gradients, sums, applies ReLU, upsamples to the image and
    min-max normalises.

    Args:
        model: ``(1, 3, H, W)`` → ``(1, K, H, W)`` logits.
        layer: a submodule of ``model`` whose output is ``(1, C, h, w)``.
        image: ``(1, 3, H, W)`` normalised image.
        pixel: ``(y, x)`` in the image.

    Returns:
        ``((H, W)`` heat-map in [0, 1] (all zeros when nothing is positive), the class explained).
    """
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["activation"] = output

    handle = layer.register_forward_hook(keep)
    try:
        was_training = model.training
        model.eval()
        with torch.enable_grad():
            logits = model(image)
            y, x = pixel
            explained = int(logits[0, :, y, x].argmax()) if target_class is None else target_class
            logits[0, explained, y, x].backward()
        model.zero_grad(set_to_none=True)  # leave the model as it was
        model.train(was_training)
    finally:
        handle.remove()
    activation = captured["activation"]
    weights = activation.grad.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
    cam = F.relu((weights * activation).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    span = cam.max() - cam.min()
    return ((cam - cam.min()) / span if span > 0 else torch.zeros_like(cam)), explained
