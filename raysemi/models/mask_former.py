"""A mask-classification segmenter (MaskFormer, Cheng et al. 2021), the model of SimFormer.

backbone → pixel decoder (FPN-style: the high-level features, projected and upsampled, added to the projected
stride-4 features, then a 3×3 conv) → per-pixel embeddings ``E`` at stride 4. A transformer decoder turns Q
learned queries, attending to the high-level features (with DETR's 2-D sine positional encoding), into per-query
class logits over K + 1 (the last: no object) and mask embeddings; a query's mask logits are its mask embedding
dotted with every pixel embedding. Deep supervision reads the same heads after every decoder layer.

Semantic output (:func:`semantic_probabilities`): ``Σ_q softmax(class_q)[k] · sigmoid(mask_q)`` per class k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raysemi.models.backbones import Backbone, conv_bn_relu


@dataclass(frozen=True)
class MaskFormerShape:
    """Sizes of the mask-classification head (small defaults that train on a CPU)."""

    queries: int = 16
    dim: int = 64  # transformer width, pixel and mask embedding width
    layers: int = 2
    heads: int = 4
    feedforward: int = 256


class PixelDecoder(nn.Module):
    """``(low (N, c_low, H/4, W/4), high (N, c_high, h, w))`` → pixel embeddings ``(N, dim, H/4, W/4)``."""

    def __init__(self, low_channels: int, high_channels: int, dim: int):
        super().__init__()
        self.lateral_low = nn.Conv2d(low_channels, dim, kernel_size=1)
        self.lateral_high = nn.Conv2d(high_channels, dim, kernel_size=1)
        self.output = conv_bn_relu(dim, dim)
        self.embed = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        top = F.interpolate(self.lateral_high(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.embed(self.output(top + self.lateral_low(low)))


class QueryDecoder(nn.Module):
    """Q learned queries attending to the high-level features; returns every layer's normalised output,
    ``(layers, N, Q, dim)``."""

    def __init__(self, high_channels: int, shape: MaskFormerShape):
        super().__init__()
        self.memory_proj = nn.Conv2d(high_channels, shape.dim, kernel_size=1)
        self.query_feat = nn.Parameter(torch.zeros(shape.queries, shape.dim))
        self.query_pos = nn.Embedding(shape.queries, shape.dim)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(shape.dim, shape.heads, shape.feedforward, dropout=0.0, batch_first=True)
            for _ in range(shape.layers)
        )
        self.norm = nn.LayerNorm(shape.dim)

    def forward(self, high: torch.Tensor) -> torch.Tensor:
        memory = self.memory_proj(high).flatten(2).transpose(1, 2)  # (N, h·w, dim)
        memory = memory + sine_positions(*high.shape[-2:], memory.shape[-1]).to(memory)
        queries = self.query_feat.expand(len(high), -1, -1)
        outputs = []
        for layer in self.layers:
            queries = layer(queries + self.query_pos.weight, memory)
            outputs.append(self.norm(queries))
        return torch.stack(outputs)


def sine_positions(height: int, width: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's 2-D sine encoding: ``(height·width, dim)``, the first half of the channels encoding y, the second
    x, each as interleaved sin/cos of the normalised coordinate at geometric frequencies. ``dim`` % 4 == 0."""
    if dim % 4:
        raise ValueError(f"the positional encoding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height * 2 * torch.pi
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width * 2 * torch.pi

    def encode(coords: torch.Tensor) -> torch.Tensor:  # (L,) → (L, dim / 2)
        angles = coords[:, None] / frequencies
        return torch.stack([angles.sin(), angles.cos()], dim=2).flatten(1)

    y_code = encode(ys)[:, None].expand(height, width, -1)
    x_code = encode(xs)[None, :].expand(height, width, -1)
    return torch.cat([y_code, x_code], dim=2).reshape(height * width, dim)


class MaskFormer(nn.Module):
    """``forward(images (N, 3, H, W))`` → ``{"class_logits": (N, Q, K+1), "mask_logits": (N, Q, H/4, W/4),
    "pixel_embeddings": (N, dim, H/4, W/4), "aux": [(class_logits, mask_logits) of each earlier layer]}``.

    Parameters under ``backbone.`` are the pretrained part.
    """

    def __init__(self, backbone: Backbone, num_classes: int, shape: MaskFormerShape = MaskFormerShape()):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.pixel_decoder = PixelDecoder(backbone.low_channels, backbone.high_channels, shape.dim)
        self.query_decoder = QueryDecoder(backbone.high_channels, shape)
        self.class_head = nn.Linear(shape.dim, num_classes + 1)
        self.mask_head = nn.Sequential(
            nn.Linear(shape.dim, shape.dim), nn.ReLU(inplace=True),
            nn.Linear(shape.dim, shape.dim), nn.ReLU(inplace=True),
            nn.Linear(shape.dim, shape.dim),
        )

    def forward(self, images: torch.Tensor) -> dict:
        low, high = self.backbone(images)
        pixels = self.pixel_decoder(low, high)
        per_layer = [self._predict(queries, pixels) for queries in self.query_decoder(high)]
        class_logits, mask_logits = per_layer[-1]
        return {"class_logits": class_logits, "mask_logits": mask_logits, "pixel_embeddings": pixels,
                "aux": per_layer[:-1]}

    def _predict(self, queries: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks = torch.einsum("nqd,ndhw->nqhw", self.mask_head(queries), pixels)
        return self.class_head(queries), masks


def semantic_probabilities(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """``(N, Q, K+1)`` class logits and ``(N, Q, h, w)`` mask logits → ``(N, K, h, w)`` class scores
    ``Σ_q softmax(class_q)[k] · sigmoid(mask_q)`` (the no-object column dropped)."""
    class_probs = class_logits.float().softmax(-1)[..., :-1]
    return torch.einsum("nqk,nqhw->nkhw", class_probs, mask_logits.float().sigmoid())


class SemanticOutput(nn.Module):
    """A MaskFormer as an eval/predict model: ``(N, 3, H, W)`` → ``(N, K, H, W)`` semantic scores at input size.

    The scores are not logits and need not sum to 1 (``outputs_scores``): analyses that want probabilities
    normalise them over the classes instead of applying a softmax.
    """

    outputs_scores = True

    def __init__(self, model: MaskFormer):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        scores = semantic_probabilities(out["class_logits"], out["mask_logits"])
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)
