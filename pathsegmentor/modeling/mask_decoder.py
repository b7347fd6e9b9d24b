"""SAM's mask decoder with a high-resolution path and a presence head.

:class:`PathSegMaskDecoder` subclasses segment_anything's ``MaskDecoder`` (same submodules and
state-dict keys, so official weights load) and changes how one decode runs:

* many prompts over a batch of images: each prompt row names its image (``image_index``), so one
  image encoding serves every prompt and all prompts decode as one batch;
* **high-resolution path** (switchable, ``hires``): image-level features at stride 2 and 4
  (:class:`HighResFeatures`, a small conv stem on the pixels plus the encoder's stride-4 skip)
  are fused into SAM's stride-4 upscaled embedding, and a second hypernetwork reads the stride-2
  features, so masks come out at 1/2 of the input instead of 1/4 (nuclei are 8-20 px);
* **presence head**: from the decoder's outputs for the prompt tokens and the mask token, one
  logit per prompt: "is the target in this image at all?";
* **separation head** (optional, ``separation_channels > 0``): per prompt, a small conv net on the
  stride-2 mask features predicts maps that separate touching objects (channels 0-1: horizontal and
  vertical distance to the object's centre, HoVer-Net style; channel 2: distance to the object's
  border; channel 3 where present: the thick-border class; see :mod:`pathsegmentor.inference.separation`);
* **dense mode** (``dense=True``, replaces the two above): a :class:`~.pixel_decoder.PixelDecoder` turns the
  encoder's multi-scale features into per-pixel embeddings at stride 2 once per image, and each prompt's
  mask and separation maps are products of that embedding with weights its mask token predicts (SAM's
  hypernetwork, Mask2Former's mask embedding): a prompt costs a product, not a conv net.

With ``hires=False`` and points/boxes only, the masks are exactly upstream's single-mask output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._compat import ensure_torchvision
from .image_encoder import LayerNorm2d
from .pixel_decoder import PixelDecoder


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


@dataclass
class DecoderOutput:
    """``mask_logits [M, H_out, W_out]`` (stride 2 with hires, else stride 4), ``presence_logits [M]``,
    ``iou_pred [M]`` (SAM's quality estimate), ``stride`` of the mask grid relative to the input;
    ``separation [M, K, H_out, W_out]`` raw separation maps when asked for (else None)."""

    mask_logits: torch.Tensor
    presence_logits: torch.Tensor
    iou_pred: torch.Tensor
    stride: int
    separation: torch.Tensor | None = None


def _mask_decoder_class():
    ensure_torchvision()
    from segment_anything.modeling.common import MLPBlock  # noqa: F401  (import check)
    from segment_anything.modeling.mask_decoder import MLP, MaskDecoder

    class PathSegMaskDecoder(MaskDecoder):
        def __init__(self, *, transformer_dim: int, transformer: nn.Module, num_multimask_outputs: int = 3,
                     iou_head_depth: int = 3, iou_head_hidden_dim: int = 256, hires: bool = True,
                     hires_dim: int = 32, skip_channels: int = 0, separation_channels: int = 0,
                     dense: bool = False, dense_skip_channels: dict[int, int] | None = None,
                     dense_widths: tuple[int, ...] = (128, 96, 64, 48), dense_dim: int = 32) -> None:
            super().__init__(transformer_dim=transformer_dim, transformer=transformer,
                             num_multimask_outputs=num_multimask_outputs, iou_head_depth=iou_head_depth,
                             iou_head_hidden_dim=iou_head_hidden_dim)
            # upstream's channel LayerNorm in the upscaling, as the fused one (same keys and maths, one pass)
            self.output_upscaling[1] = LayerNorm2d(transformer_dim // 4)
            c = transformer_dim // 8
            self.hires = hires and not dense
            self.presence_head = MLP(2 * transformer_dim, transformer_dim, 1, 3)
            self.separation_channels = separation_channels
            self.dense = dense
            if dense:  # per-pixel embeddings once per image; every output map is a product with them
                self.hires_features = self.hires_fuse = self.hires_hypernetwork = self.separation_head = None
                self.pixel_decoder = PixelDecoder(in_dim=transformer_dim, skip_channels=dense_skip_channels or {},
                                                  widths=tuple(dense_widths), out_dim=dense_dim)
                # per prompt: (1 + separation channels) maps x (dense_dim weights + 1 bias)
                self.dense_hypernetwork = MLP(transformer_dim, transformer_dim,
                                              (1 + separation_channels) * (dense_dim + 1), 3)
            else:
                self.hires_features = HighResFeatures(dim=c, skip_channels=skip_channels)
                self.hires_fuse = nn.Sequential(nn.Conv2d(c, c, 1), nn.GELU())
                self.hires_hypernetwork = MLP(transformer_dim, transformer_dim, c, 3)
                self.separation_head = (SeparationHead(dim=c, channels=separation_channels)
                                        if separation_channels else None)

        def decode(self, *, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                   sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor,
                   image_index: torch.Tensor, num_text_tokens: int = 0,
                   pixels: torch.Tensor | None = None, skip4: torch.Tensor | None = None,
                   hires: bool | None = None, separation: bool | torch.Tensor = False,
                   pixel_embedding: torch.Tensor | None = None) -> DecoderOutput:
            """Decode M prompts over B images.

            Args:
                image_embeddings: ``[B, C, h, w]``.
                image_pe: ``[1, C, h, w]`` dense positional encoding.
                sparse_prompt_embeddings: ``[M, T, C]`` (text tokens first, then point/box tokens).
                dense_prompt_embeddings: ``[M, C, h, w]`` or ``[1, C, h, w]`` (broadcast).
                image_index: ``int64 [M]``, the image of each prompt row.
                num_text_tokens: how many of the T tokens are text tokens (presence reads them).
                pixels: ``[B, 3, H, W]`` normalised input, needed by the hires path.
                skip4: ``[B, C_s, H/4, W/4]`` encoder skip features (optional).
                hires: override the module's ``hires`` switch for this call.
                separation: also predict the separation maps (needs a separation head): True for every row,
                or ``bool [M]`` for some rows (the others' maps are zeros; saves the head's cost in training).
            """
            sep_rows = None
            if isinstance(separation, torch.Tensor):
                sep_rows = separation.nonzero(as_tuple=True)[0]
                separation = bool(sep_rows.numel())
            if separation and self.separation_head is None and not (self.dense and self.separation_channels):
                raise ValueError("this model has no separation head (mask_decoder.separation_channels is 0); "
                                 "use the watershed instance decoder instead")
            use_hires = self.hires if hires is None else hires
            m = sparse_prompt_embeddings.shape[0]
            output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
            output_tokens = output_tokens.unsqueeze(0).expand(m, -1, -1)
            tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
            src = image_embeddings[image_index] + dense_prompt_embeddings
            pos_src = image_pe.expand(m, -1, -1, -1)
            b, c, h, w = src.shape
            hs, src = self.transformer(src, pos_src, tokens)
            iou_token_out = hs[:, 0, :]
            mask_token_out = hs[:, 1, :]  # single-mask output token, as SAM with multimask_output=False
            n_out = 1 + self.num_mask_tokens
            if num_text_tokens > 0:
                prompt_out = hs[:, n_out:n_out + num_text_tokens, :].mean(1)
            else:
                prompt_out = hs[:, n_out:, :].mean(1)
            presence = self.presence_head(torch.cat([prompt_out, mask_token_out], dim=-1)).squeeze(-1)
            iou_pred = self.iou_prediction_head(iou_token_out)[:, 0]
            if self.dense:
                if pixel_embedding is None:
                    raise ValueError("dense mode needs the pixel embedding (PathSegmentor.decode computes it once "
                                     "per image)")
                maps = _dense_maps(self.dense_hypernetwork(mask_token_out), pixel_embedding, image_index)
                sep = maps[:, 1:] if separation else None
                if sep is not None and sep_rows is not None:
                    keep = torch.zeros(m, dtype=torch.bool, device=maps.device).index_fill(0, sep_rows, True)
                    sep = sep * keep[:, None, None, None].to(sep.dtype)
                return DecoderOutput(maps[:, 0], presence, iou_pred, stride=2, separation=sep)
            src = src.transpose(1, 2).reshape(b, c, h, w)
            up4 = self.output_upscaling(src)  # [M, c/8, 4h, 4w]
            hyper = self.output_hypernetworks_mlps[0](mask_token_out)  # [M, c/8]
            if not use_hires:
                logits = torch.einsum("mc,mchw->mhw", hyper, up4)
                sep = None
                if separation:
                    sel = slice(None) if sep_rows is None else sep_rows
                    sep = _rows_apply(self.separation_head, up4[sel], logits[sel], sep_rows, m)
                return DecoderOutput(logits, presence, iou_pred, stride=16 // 4, separation=sep)
            if pixels is None:
                raise ValueError("the high-resolution path needs `pixels`; pass them or hires=False")
            f2, f4 = self.hires_features(pixels, skip4)
            x4 = self.hires_fuse(up4 + f4[image_index])
            logits4 = torch.einsum("mc,mchw->mhw", hyper, x4)
            hyper2 = self.hires_hypernetwork(mask_token_out)  # [M, c/8]
            logits2 = F.interpolate(logits4[:, None], scale_factor=2, mode="bilinear", align_corners=False)[:, 0]
            # per image, so the stride-2 features are never copied per prompt
            detail = torch.empty_like(logits2)
            for i in torch.unique(image_index).tolist():
                rows = (image_index == i).nonzero(as_tuple=True)[0]
                detail[rows] = torch.einsum("mc,chw->mhw", hyper2[rows], f2[i])
            logits = logits2 + detail
            sep = None
            if separation:
                sel = slice(None) if sep_rows is None else sep_rows
                x2 = F.interpolate(x4[sel], scale_factor=2, mode="bilinear", align_corners=False) + f2[image_index[sel]]
                sep = _rows_apply(self.separation_head, x2, logits[sel], sep_rows, m)
            return DecoderOutput(logits, presence, iou_pred, stride=2, separation=sep)

    return PathSegMaskDecoder


def _dense_maps(weights: torch.Tensor, embedding: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """Each prompt's maps as a product with its image's pixel embedding.

    ``weights [M, K * (C + 1)]`` (per map: C weights and a bias), ``embedding [B, C, h, w]``, ``image_index
    int64 [M]`` -> ``[M, K, h, w]``. Grouped by image, so the embedding is never copied per prompt; the groups
    are put back in row order with one gather (no zero-filled scatter per image, forward or backward).
    """
    m = weights.shape[0]
    c = embedding.shape[1]
    w = weights.view(m, -1, c + 1)
    b = embedding.shape[0]
    if m % b == 0 and bool((image_index == torch.arange(b, device=image_index.device).repeat_interleave(m // b)).all()):
        # training's layout (the same number of prompts per image, in image order): one batched product
        wb = w.view(b, -1, c + 1)
        out = torch.baddbmm(wb[..., c:], wb[..., :c], embedding.flatten(2))
        return out.view(m, w.shape[1], *embedding.shape[-2:])
    order = torch.argsort(image_index, stable=True)
    images, counts = torch.unique_consecutive(image_index[order], return_counts=True)
    chunks, start = [], 0
    for i, n in zip(images.tolist(), counts.tolist()):
        wi = w[order[start:start + n]]
        chunks.append(torch.einsum("mkc,chw->mkhw", wi[..., :c], embedding[i]) + wi[..., c, None, None])
        start += n
    out = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    if bool((order == torch.arange(m, device=order.device)).all()):
        return out
    return out.index_select(0, torch.argsort(order))


def _rows_apply(head: nn.Module, feats: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor | None,
                total: int) -> torch.Tensor:
    """The separation head on ``feats``/``logits`` (already restricted to ``rows`` when given), scattered into
    zeros of ``total`` rows."""
    out = head(feats, logits)
    if rows is None:
        return out
    return out.new_zeros((total, *out.shape[1:])).index_copy(0, rows, out)


def build_mask_decoder(*, transformer_dim: int, depth: int, mlp_dim: int, num_heads: int,
                       num_multimask_outputs: int = 3, iou_head_depth: int = 3, iou_head_hidden_dim: int = 256,
                       hires: bool = True, hires_dim: int = 32, skip_channels: int = 0,
                       separation_channels: int = 0, dense: bool = False,
                       dense_skip_channels: dict[int, int] | None = None,
                       dense_widths: tuple[int, ...] = (128, 96, 64, 48), dense_dim: int = 32) -> nn.Module:
    ensure_torchvision()
    from segment_anything.modeling.transformer import TwoWayTransformer

    cls = _mask_decoder_class()
    if hires_dim != transformer_dim // 8:
        raise ValueError(f"mask_decoder.hires_dim must be transformer_dim // 8 = {transformer_dim // 8} "
                         f"(SAM's upscaled embedding width), got {hires_dim}")
    return cls(
        transformer_dim=transformer_dim,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=transformer_dim, mlp_dim=mlp_dim,
                                      num_heads=num_heads),
        num_multimask_outputs=num_multimask_outputs,
        iou_head_depth=iou_head_depth,
        iou_head_hidden_dim=iou_head_hidden_dim,
        hires=hires,
        hires_dim=hires_dim,
        skip_channels=skip_channels,
        separation_channels=separation_channels,
        dense=dense,
        dense_skip_channels=dense_skip_channels,
        dense_widths=dense_widths,
        dense_dim=dense_dim,
    )
