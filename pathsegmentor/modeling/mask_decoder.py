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

With ``hires=False`` and points/boxes only, the masks are exactly upstream's single-mask output. The extra
heads live in :mod:`.decoder_heads`, dense mode's readout in :mod:`.dense_readout`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._compat import ensure_torchvision
from .decoder_heads import HighResFeatures, SeparationHead, rows_apply
from .dense_readout import dense_readout
from .image_encoder import LayerNorm2d
from .pixel_decoder import PixelDecoder

__all__ = ["DecoderOutput", "HighResFeatures", "SeparationHead", "build_mask_decoder"]


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


class _PromptDecoding:
    """``PathSegMaskDecoder``'s decode (mixed in before segment_anything's ``MaskDecoder``, whose tokens,
    transformer, upscaling and heads it uses): the two-way transformer with presence and IoU heads, then the
    dense, stride-4 or high-resolution readout."""

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
            pixel_embedding: ``[B, D, H/2, W/2]`` the pixel decoder's embedding (dense mode only).
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
        src, mask_token_out, presence, iou_pred = self._transform(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, image_index,
            num_text_tokens)
        if self.dense:
            if pixel_embedding is None:
                raise ValueError("dense mode needs the pixel embedding (PathSegmentor.decode computes it once "
                                 "per image)")
            logits, sep = dense_readout(self.dense_hypernetwork(mask_token_out), pixel_embedding, image_index,
                                        separation=separation, sep_rows=sep_rows)
            return DecoderOutput(logits, presence, iou_pred, stride=self.pixel_decoder.stride, separation=sep)
        up4 = self.output_upscaling(src)  # [M, c/8, 4h, 4w]
        hyper = self.output_hypernetworks_mlps[0](mask_token_out)  # [M, c/8]
        if not use_hires:
            logits = torch.einsum("mc,mchw->mhw", hyper, up4)
            sep = None
            if separation:
                sel = slice(None) if sep_rows is None else sep_rows
                sep = rows_apply(self.separation_head, up4[sel], logits[sel], sep_rows, m)
            return DecoderOutput(logits, presence, iou_pred, stride=16 // 4, separation=sep)
        if pixels is None:
            raise ValueError("the high-resolution path needs `pixels`; pass them or hires=False")
        logits, sep = self._hires_readout(up4, hyper, mask_token_out, pixels, skip4, image_index,
                                          separation=separation, sep_rows=sep_rows)
        return DecoderOutput(logits, presence, iou_pred, stride=2, separation=sep)

    def _transform(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                   dense_prompt_embeddings: torch.Tensor, image_index: torch.Tensor, num_text_tokens: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The two-way transformer over each prompt row's image: ``(src, mask_token_out, presence_logits,
        iou_pred)``. ``src`` is ``[M, h*w, C]`` in dense mode (unused there), else ``[M, C, h, w]``."""
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
        if not self.dense:
            src = src.transpose(1, 2).reshape(b, c, h, w)
        return src, mask_token_out, presence, iou_pred

    def _hires_readout(self, up4: torch.Tensor, hyper: torch.Tensor, mask_token_out: torch.Tensor,
                       pixels: torch.Tensor, skip4: torch.Tensor | None, image_index: torch.Tensor, *,
                       separation: bool, sep_rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stride-2 mask logits ``[M, H/2, W/2]`` (and separation maps when asked for) from SAM's stride-4
        embedding ``up4`` fused with the image's high-resolution features."""
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
            sep = rows_apply(self.separation_head, x2, logits[sel], sep_rows, logits.shape[0])
        return logits, sep


def _mask_decoder_class():
    ensure_torchvision()
    from segment_anything.modeling.common import MLPBlock  # noqa: F401  (import check)
    from segment_anything.modeling.mask_decoder import MLP, MaskDecoder

    class PathSegMaskDecoder(_PromptDecoding, MaskDecoder):
        def __init__(self, *, transformer_dim: int, transformer: nn.Module, num_multimask_outputs: int = 3,
                     iou_head_depth: int = 3, iou_head_hidden_dim: int = 256, hires: bool = True,
                     hires_dim: int = 32, skip_channels: int = 0, separation_channels: int = 0,
                     dense: bool = False, dense_skip_channels: dict[int, int] | None = None,
                     dense_widths: tuple[int, ...] = (128, 96, 64, 48), dense_dim: int = 32,
                     dense_fullres_dim: int = 0) -> None:
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
                                                  widths=tuple(dense_widths), out_dim=dense_dim,
                                                  fullres_dim=dense_fullres_dim)
                # per prompt: (1 + separation channels) maps x (dense_dim weights + 1 bias)
                self.dense_hypernetwork = MLP(transformer_dim, transformer_dim,
                                              (1 + separation_channels) * (dense_dim + 1), 3)
            else:
                self.hires_features = HighResFeatures(dim=c, skip_channels=skip_channels)
                self.hires_fuse = nn.Sequential(nn.Conv2d(c, c, 1), nn.GELU())
                self.hires_hypernetwork = MLP(transformer_dim, transformer_dim, c, 3)
                self.separation_head = (SeparationHead(dim=c, channels=separation_channels)
                                        if separation_channels else None)

    return PathSegMaskDecoder


def build_mask_decoder(*, transformer_dim: int, depth: int, mlp_dim: int, num_heads: int,
                       num_multimask_outputs: int = 3, iou_head_depth: int = 3, iou_head_hidden_dim: int = 256,
                       hires: bool = True, hires_dim: int = 32, skip_channels: int = 0,
                       separation_channels: int = 0, dense: bool = False,
                       dense_skip_channels: dict[int, int] | None = None,
                       dense_widths: tuple[int, ...] = (128, 96, 64, 48), dense_dim: int = 32,
                       dense_fullres_dim: int = 0) -> nn.Module:
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
        dense_fullres_dim=dense_fullres_dim,
    )
