"""Mask fusion: the masks decoded from each branch (teacher, student, aggregated) combined into one.

* :class:`GatedMaskFusion` (``"gate"``): a learned per-pixel gate. A small conv net reads the stacked
  branch logits and the image features (the aggregated embedding projected to a few channels and
  upsampled to the mask grid) and outputs a softmax over branches at every pixel; the fused logit
  is the weighted sum of the branch logits. Presence logits are fused with learned softmax weights.
  Initialised near the uniform gate, i.e. it starts as the plain average.
* :class:`AverageMaskFusion` (``"average"``): the plain average of the branch logits (baseline).

Both take ``logits [M, K, H, W]`` (K branches in :data:`pathsegmentor.cellsam.BRANCHES` order),
``embedding [B, C, h, w]`` and ``image_index int64 [M]`` (the image of each prompt row).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import BRANCHES

FUSIONS = ("gate", "average")


class AverageMaskFusion(nn.Module):
    kind = "average"

    def forward(self, logits: torch.Tensor, embedding: torch.Tensor | None = None,
                image_index: torch.Tensor | None = None) -> torch.Tensor:
        return logits.mean(1)

    def fuse_presence(self, presence: torch.Tensor) -> torch.Tensor:
        """``[M, K]`` -> ``[M]``."""
        return presence.mean(1)


class GatedMaskFusion(nn.Module):
    """Per-pixel softmax gate over K branches from the stacked logits and image features.

    Args:
        dim: channels of the image embedding the gate reads.
        hidden: width of the gate's conv layers.
        num_branches: K.
    """

    kind = "gate"

    def __init__(self, *, dim: int, hidden: int = 16, num_branches: int = len(BRANCHES)) -> None:
        super().__init__()
        self.num_branches = num_branches
        self.embed_proj = nn.Conv2d(dim, hidden, 1)
        self.gate = nn.Sequential(
            nn.Conv2d(num_branches + hidden, hidden, 3, padding=1), nn.GELU(),
            nn.Conv2d(hidden, num_branches, 3, padding=1),
        )
        self.presence_weights = nn.Parameter(torch.zeros(num_branches))
        with torch.no_grad():  # near-uniform gate at init: starts as the plain average
            nn.init.normal_(self.gate[-1].weight, std=1e-2)
            self.gate[-1].bias.zero_()

    def weights(self, logits: torch.Tensor, embedding: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Per-pixel branch weights ``[M, K, H, W]`` (softmax over K)."""
        if logits.shape[1] != self.num_branches:
            raise ValueError(f"expected {self.num_branches} branch logits, got {logits.shape[1]}")
        feats = F.interpolate(self.embed_proj(embedding), size=logits.shape[-2:], mode="bilinear",
                              align_corners=False)
        x = torch.cat([logits, feats[image_index]], dim=1)
        return torch.softmax(self.gate(x), dim=1)

    def forward(self, logits: torch.Tensor, embedding: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        return (self.weights(logits, embedding, image_index) * logits).sum(1)

    def fuse_presence(self, presence: torch.Tensor) -> torch.Tensor:
        return (torch.softmax(self.presence_weights, 0) * presence).sum(1)


def build_mask_fusion(kind: str, *, dim: int, hidden: int = 16) -> nn.Module:
    if kind == "gate":
        return GatedMaskFusion(dim=dim, hidden=hidden)
    if kind == "average":
        return AverageMaskFusion()
    raise ValueError(f"Unknown cellsam.fusion '{kind}'. Available: {list(FUSIONS)}")
