"""Feature aggregation: the teacher's and the student's embeddings fused into one for the decoder.

Both inputs are ``float [B, C, h, w]`` on the same grid (SAM's image-embedding shape); the output
has the same shape, so the shared mask decoder reads it like any embedding.

* :class:`ConcatAggregation` (``"concat"``): ``LN(conv1x1([t; s]))`` plus a 3x3 mixing conv,
  initialised so that the output starts as ``LN(t + s)``.
* :class:`GatedAggregation` (``"gated"``): a per-position, per-channel gate
  ``g = sigmoid(conv1x1([t; s]))``, output ``g * t + (1 - g) * s`` (starts at the plain mean).
"""
from __future__ import annotations

import torch
from torch import nn

from ..modeling.image_encoder import LayerNorm2d

AGGREGATIONS = ("concat", "gated")


class ConcatAggregation(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(2 * dim, dim, 1)
        self.mix = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.norm = LayerNorm2d(dim)
        with torch.no_grad():  # start as LN(t + s): both encoders' features pass through unchanged
            eye = torch.eye(dim)[:, :, None, None]
            self.reduce.weight.copy_(torch.cat([eye, eye], dim=1))
            self.reduce.bias.zero_()
            nn.init.normal_(self.mix.weight, std=1e-3)

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        x = self.reduce(torch.cat([teacher, student], dim=1))
        return self.norm(x + self.mix(x))


class GatedAggregation(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Conv2d(2 * dim, dim, 1)
        with torch.no_grad():
            nn.init.normal_(self.gate.weight, std=1e-3)
            self.gate.bias.zero_()

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([teacher, student], dim=1)))
        return g * teacher + (1 - g) * student


def build_aggregation(kind: str, dim: int) -> nn.Module:
    if kind == "concat":
        return ConcatAggregation(dim)
    if kind == "gated":
        return GatedAggregation(dim)
    raise ValueError(f"Unknown image_encoder.aggregation '{kind}'. Available: {list(AGGREGATIONS)}")
