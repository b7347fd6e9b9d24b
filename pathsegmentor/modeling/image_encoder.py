"""Image encoders: an image batch in, a SAM-shaped embedding (plus early skip features) out.

Two families behind one output type, :class:`ImageFeatures`:

* :class:`SamImageEncoder` — segment_anything's ``ImageEncoderViT`` (same modules, same state-dict
  keys as the official checkpoints) with an optional fused attention (:mod:`.sam_attention`).
* :class:`TimmImageEncoder` — any timm CNN backbone (``features_only``) plus a SAM-style neck to
  ``embed_dim`` channels at stride 16; its stride-4 features feed the high-resolution mask path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .._compat import ensure_torchvision
from .config import ImageEncoderConfig
from .conv_fusion import FoldedInferenceCopy
from .plugins import get_family

SAM_VARIANTS = {
    # embed_dim, depth, num_heads, global_attn_indexes (as in segment_anything.build_sam)
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


@dataclass
class ImageFeatures:
    """What an image encoder returns.

    Attributes:
        embedding: ``float [B, C, h, w]`` with ``h = H / 16`` (the mask decoder's image tokens).
        skips: stride -> ``float [B, C_s, H / s, W / s]`` early features (may be empty).
        pixel_embedding: ``float [B, C_d, H / 2, W / 2]``, the dense pixel decoder's output (models in dense mode),
            filled the first time a prompt is decoded and read by every later prompt of the same images.
    """

    embedding: torch.Tensor
    skips: dict[int, torch.Tensor] = field(default_factory=dict)
    pixel_embedding: torch.Tensor | None = None

    def to(self, *args, **kwargs) -> "ImageFeatures":
        pe = self.pixel_embedding.to(*args, **kwargs) if self.pixel_embedding is not None else None
        return ImageFeatures(self.embedding.to(*args, **kwargs),
                             {k: v.to(*args, **kwargs) for k, v in self.skips.items()}, pe)

    def select(self, index: torch.Tensor | slice) -> "ImageFeatures":
        pe = self.pixel_embedding[index] if self.pixel_embedding is not None else None
        return ImageFeatures(self.embedding[index], {k: v[index] for k, v in self.skips.items()}, pe)


class LayerNorm2d(nn.Module):
    """Channel LayerNorm for ``[B, C, H, W]`` (same maths as segment_anything's)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one fused pass over the channel-last view (no copy when x is channels-last) instead of
        # segment_anything's seven elementwise passes; the same normalisation to float rounding
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def _sam_encoder_class():
    ensure_torchvision()
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    class SamImageEncoder(ImageEncoderViT):
        """segment_anything ``ImageEncoderViT``; keys identical to the official checkpoints.

        Input ``float [B, 3, S, S]`` normalised, ``S = img_size`` (1024 for the official weights).
        """

        stride = 16
        skip_channels: dict[int, int] = {}

        def forward_features(self, x: torch.Tensor) -> ImageFeatures:
            return ImageFeatures(self.forward(x))

    return SamImageEncoder


def build_sam_encoder(cfg: ImageEncoderConfig, img_size: int) -> nn.Module:
    """A SAM ViT encoder: ``cfg.variant`` in vit_b / vit_l / vit_h, or ``custom`` (``vit_*`` dims)."""
    if cfg.variant in SAM_VARIANTS:
        dim, depth, heads, global_idx = SAM_VARIANTS[cfg.variant]
    elif cfg.variant == "custom":
        dim, depth, heads, global_idx = (cfg.vit_embed_dim, cfg.vit_depth, cfg.vit_num_heads,
                                         cfg.vit_global_attn_indexes)
    else:
        raise ValueError(f"Unknown SAM variant '{cfg.variant}'. Available: {sorted(SAM_VARIANTS) + ['custom']}")
    cls = _sam_encoder_class()
    enc = cls(
        depth=depth,
        embed_dim=dim,
        img_size=img_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=heads,
        patch_size=cfg.vit_patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=tuple(global_idx),
        window_size=cfg.vit_window_size,
        out_chans=cfg.embed_dim,
    )
    if cfg.fast_attention:
        from .sam_attention import use_fast_attention

        use_fast_attention(enc)
    return enc


class TimmImageEncoder(nn.Module):
    """A timm backbone (``features_only``) and a neck to ``embed_dim`` channels at stride 16.

    Input ``float [B, 3, H, W]`` normalised, ``H, W`` multiples of 32. Output embedding
    ``[B, embed_dim, H/16, W/16]``; skip features at stride 4 and 8 for the high-resolution path.
    Under ``torch.no_grad()`` in eval mode the backbone runs as a BatchNorm-folded channels-last copy
    (:mod:`.conv_fusion`), so those outputs are channels-last tensors.
    """

    stride = 16

    def __init__(self, *, backbone: str, out_indices: tuple[int, ...], embed_dim: int) -> None:
        super().__init__()
        ensure_torchvision()
        import timm

        self.backbone = timm.create_model(backbone, features_only=True, out_indices=out_indices,
                                          pretrained=False)
        channels = self.backbone.feature_info.channels()
        reductions = self.backbone.feature_info.reduction()
        if reductions[-1] != 16:
            raise ValueError(
                f"timm backbone '{backbone}' with out_indices={out_indices} ends at stride "
                f"{reductions[-1]}; the mask decoder needs stride 16. Choose out_indices whose last "
                f"entry has reduction 16 (this backbone's reductions: {reductions})."
            )
        self.reductions = list(reductions)
        self.skip_channels = {r: c for r, c in zip(reductions[:-1], channels[:-1])}
        c16 = channels[-1]
        c8 = self.skip_channels.get(8)
        self.lateral8 = nn.Conv2d(c8, c16, 1) if c8 else None
        self.neck = nn.Sequential(
            nn.Conv2d(c16, embed_dim, 1, bias=False),
            LayerNorm2d(embed_dim),
            nn.Conv2d(embed_dim, embed_dim, 3, padding=1, bias=False),
            LayerNorm2d(embed_dim),
        )

        self._folded = FoldedInferenceCopy()

    def forward_features(self, x: torch.Tensor) -> ImageFeatures:
        if self.training or torch.is_grad_enabled():
            feats = self.backbone(x)
        else:  # inference: BatchNorm folded into the convolutions, channels-last (same maths)
            feats = self._folded.get(self.backbone)(x.contiguous(memory_format=torch.channels_last))
        top = feats[-1]
        if self.lateral8 is not None:
            f8 = feats[self.reductions.index(8)]
            top = top + F.avg_pool2d(self.lateral8(f8), 2)
        skips = {r: f for r, f in zip(self.reductions[:-1], feats[:-1])}
        return ImageFeatures(self.neck(top), skips)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).embedding


BUILTIN_TYPES = ("sam", "timm")


def build_image_encoder(cfg: ImageEncoderConfig, img_size: int) -> nn.Module:
    """The encoder of ``cfg.type``: built-in ``sam`` / ``timm``, else a registered plug-in
    (:mod:`pathsegmentor.modeling.plugins`)."""
    if cfg.type == "sam":
        return build_sam_encoder(cfg, img_size)
    if cfg.type == "timm":
        return TimmImageEncoder(backbone=cfg.backbone, out_indices=tuple(cfg.out_indices),
                                embed_dim=cfg.embed_dim)
    return get_family(cfg.type, builtin=BUILTIN_TYPES).build(cfg, img_size)  # plug-ins, e.g. CellSAM's "dual"
