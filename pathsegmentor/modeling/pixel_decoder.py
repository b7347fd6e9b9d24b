"""A dense pixel decoder: the image encoder's features fused top-down to per-pixel embeddings, once per image.

U-Net / FPN style (HoVer-Net's and Mask2Former's pixel decoders are the references): the stride-16 embedding
is upsampled step by step and added to a projection of the encoder's feature map at the same stride
(8 and 4 where the encoder gives them), each step refined by two 3x3 convolutions; at stride 2 a small stem on
the raw pixels adds the colour detail the encoder has already pooled away (the encoder's own stride-2 map is not
read: at 1/2 of the input it costs more in training than it adds). The output ``[B, out_dim, H/2, W/2]`` is
image-level: every prompt reads it through a product with its own weights
(:class:`~pathsegmentor.modeling.mask_decoder.PathSegMaskDecoder`, ``dense`` mode), so a prompt costs a product,
not a network.

With ``fullres_dim > 0`` a residual stage at stride 1 refines that embedding at the input's resolution (a two-
convolution stem on the raw pixels beside the upsampled stride-2 features, added to the bilinearly upsampled
embedding). Its last convolution starts at zero, so a stride-2 model's weights load into it and answer exactly as
before until it is trained; the output is then ``[B, out_dim, H, W]`` (``stride`` 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _refine(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU(),
    )


class PixelDecoder(nn.Module):
    """Multi-scale encoder features -> per-pixel embeddings at stride 2 (or 1 with ``fullres_dim``).

    Args:
        in_dim: channels of the stride-16 image embedding (the mask decoder's ``transformer_dim``).
        skip_channels: stride -> channels of the encoder's skip features (``ImageFeatures.skips``); strides 8 and 4
            are used where present (ViT encoders have none: the path then runs on upsampling and the pixel stem
            alone).
        widths: channels at strides 16, 8, 4, 2.
        out_dim: channels of the output embedding (the length of each prompt's weight vector).
        stem_dim: channels of the stride-2 stem on the normalised pixels.
        fullres_dim: channels of the stride-1 refinement (0: none; the output stays at stride 2).
    """

    STRIDES = (8, 4, 2)
    SKIP_STRIDES = (8, 4)

    def __init__(self, *, in_dim: int, skip_channels: dict[int, int], widths: tuple[int, ...] = (128, 96, 64, 48),
                 out_dim: int = 32, stem_dim: int = 16, fullres_dim: int = 0) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"mask_decoder.dense_widths needs 4 widths (strides 16, 8, 4, 2), got {list(widths)}")
        self.widths = tuple(int(w) for w in widths)
        self.out_dim = out_dim
        self.skip_strides = tuple(s for s in self.SKIP_STRIDES if skip_channels.get(s))
        self.top = nn.Sequential(nn.Conv2d(in_dim, self.widths[0], 1), nn.GELU())
        self.stem = nn.Sequential(nn.Conv2d(3, stem_dim, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(stem_dim), nn.GELU())
        self.lateral = nn.ModuleDict()
        self.refine = nn.ModuleDict()
        for i, s in enumerate(self.STRIDES):
            prev, width = self.widths[i], self.widths[i + 1]
            c_skip = skip_channels.get(s, 0) if s in self.SKIP_STRIDES else stem_dim
            if c_skip:
                self.lateral[str(s)] = nn.Conv2d(c_skip, prev, 1)
            self.refine[str(s)] = _refine(prev, width)
        self.out = nn.Conv2d(self.widths[-1], out_dim, 1)
        self.stride = 1 if fullres_dim else 2
        self.fullres_stem = self.fullres = None
        if fullres_dim:
            self.fullres_stem = nn.Sequential(
                nn.Conv2d(3, stem_dim, 3, padding=1, bias=False), nn.BatchNorm2d(stem_dim), nn.GELU(),
                nn.Conv2d(stem_dim, stem_dim, 3, padding=1, bias=False), nn.BatchNorm2d(stem_dim), nn.GELU())
            self.fullres = nn.Sequential(_refine(self.widths[-1] + stem_dim, fullres_dim),
                                         nn.Conv2d(fullres_dim, out_dim, 1))
            nn.init.zeros_(self.fullres[-1].weight)  # starts as the upsampled stride-2 embedding
            nn.init.zeros_(self.fullres[-1].bias)

    def forward(self, pixels: torch.Tensor, embedding: torch.Tensor,
                skips: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """``pixels [B, 3, H, W]`` normalised, ``embedding [B, C, H/16, W/16]``, ``skips`` stride -> features
        ``[B, C_s, H/s, W/s]`` -> ``[B, out_dim, H/2, W/2]`` (``[B, out_dim, H, W]`` with the stride-1 stage)."""
        skips = skips or {}
        x = self.top(embedding)
        for s in self.STRIDES:
            h, w = pixels.shape[-2] // s, pixels.shape[-1] // s
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            lat = self.stem(pixels) if s == 2 else (skips.get(s) if s in self.skip_strides else None)
            if lat is not None:
                x = x + self.lateral[str(s)](lat.to(x.dtype))
            x = self.refine[str(s)](x)
        if self.fullres is None:
            return self.out(x)
        size = pixels.shape[-2:]
        up = F.interpolate(torch.cat([self.out(x), x], 1), size=size, mode="bilinear", align_corners=False)
        emb, x = up[:, :self.out_dim], up[:, self.out_dim:]
        return emb + self.fullres(torch.cat([x, self.fullres_stem(pixels)], 1))
