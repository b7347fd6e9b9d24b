"""The mask decoder's image-level and per-prompt heads outside SAM: :class:`HighResFeatures` (the
high-resolution path's stride-2/4 features, once per image) and :class:`SeparationHead` (maps that separate
touching objects, per prompt), with :func:`rows_apply` to run the separation head on some prompt rows only."""
from __future__ import annotations

import torch
from torch import nn

from .image_encoder import LayerNorm2d


class HighResFeatures(nn.Module):
    """Image-level features at stride 2 and 4, computed once per image.

    Args:
        dim: output channels (the decoder's ``transformer_dim // 8``).
        skip_channels: channels of the encoder's stride-4 skip, or 0 for none (ViT encoders).
    """

    def __init__(self, *, dim: int, skip_channels: int = 0) -> None:
        super().__init__()
        self.stem2 = nn.Sequential(
            nn.Conv2d(3, dim, 3, stride=2, padding=1), LayerNorm2d(dim), nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1),
        )
        self.stem4 = nn.Sequential(nn.GELU(), nn.Conv2d(dim, dim, 3, stride=2, padding=1), LayerNorm2d(dim))
        self.skip4 = nn.Conv2d(skip_channels, dim, 1) if skip_channels else None

    def forward(self, pixels: torch.Tensor, skip4: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixels [B, 3, H, W]`` normalised -> (``[B, dim, H/2, W/2]``, ``[B, dim, H/4, W/4]``)."""
        if not torch.is_grad_enabled():  # inference: channels-last convolutions and LayerNorm (same maths)
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        f2 = self.stem2(pixels)
        f4 = self.stem4(f2)
        if self.skip4 is not None and skip4 is not None:
            f4 = f4 + self.skip4(skip4)
        return f2, f4


class SeparationHead(nn.Module):
    """Per-prompt mask features ``[M, dim, h, w]`` -> separation maps ``[M, channels, h, w]``: raw outputs,
    ``tanh`` for the two centre-offset channels and ``sigmoid`` for the border distance are applied by
    the consumer (:func:`pathsegmentor.inference.separation.activate`)."""

    def __init__(self, *, dim: int, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim + 1, dim, 3, padding=1), nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(),
            nn.Conv2d(dim, channels, 1),
        )

    def forward(self, features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([features, mask_logits[:, None]], dim=1))


def rows_apply(head: nn.Module, feats: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor | None,
               total: int) -> torch.Tensor:
    """The separation head on ``feats``/``logits`` (already restricted to ``rows`` when given), scattered into
    zeros of ``total`` rows."""
    out = head(feats, logits)
    if rows is None:
        return out
    return out.new_zeros((total, *out.shape[1:])).index_copy(0, rows, out)
