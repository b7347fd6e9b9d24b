"""The PathSegmentor model: parts passed in, one image encoding for many prompts.

Data flow (file names in order): ``image_io`` -> ``image_encoder`` -> ``text_encoder`` ->
``prompt_adapter`` (+ SAM ``PromptEncoder`` for points/boxes) -> ``mask_decoder`` (hires path,
presence head) -> ``tiling`` (large inputs) -> :class:`~pathsegmentor.inference.result.SegmentationResult`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .image_encoder import ImageFeatures

if TYPE_CHECKING:  # pragma: no cover
    from ..inference.image_io import ImageInput
    from ..inference.result import SegmentationResult


@dataclass
class PathSegOutput:
    """Training-time output. ``mask_logits [B, P, H, W]`` at the input resolution (or the decoder
    grid with ``full_resolution=False``), ``presence_logits [B, P]``; ``separation [B, P, K, H, W]`` raw
    separation maps when asked for (else None)."""

    mask_logits: torch.Tensor
    presence_logits: torch.Tensor
    separation: torch.Tensor | None = None


@dataclass
class WindowPrediction:
    """One window's prediction: ``probs float32 [N, h, w]`` in [0, 1], ``presence float32 [N]``, and
    ``separation float32 [N, K, h, w]`` activated separation maps (offsets in [-1, 1], distance in
    [0, 1]) when asked for, else None."""

    probs: np.ndarray
    presence: np.ndarray
    separation: np.ndarray | None = None


class PathSegmentor(nn.Module):
    """Text-prompted segmentation model.

    Args:
        image_encoder: module with ``forward_features(pixels [B,3,H,W]) -> ImageFeatures``.
        text_encoder: a :class:`~pathsegmentor.modeling.text_encoder.TextEncoder` (``encode(list[str]) -> [N, D]``).
        prompt_adapter: text embedding ``[N, D]`` -> sparse tokens ``[N, K, C]``.
        mask_decoder: a ``PathSegMaskDecoder`` (SAM ``MaskDecoder`` subclass).
        prompt_encoder: SAM ``PromptEncoder`` for points/boxes and the dense positional encoding.
        config: the :class:`ModelConfig` (preprocessing travels with the weights).
    """

    def __init__(self, *, image_encoder: nn.Module, text_encoder: nn.Module, prompt_adapter: nn.Module,
                 mask_decoder: nn.Module, prompt_encoder: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.prompt_adapter = prompt_adapter
        self.mask_decoder = mask_decoder
        self.prompt_encoder = prompt_encoder
        self.config = config
        pp = config.preprocess
        self.register_buffer("pixel_mean", torch.tensor(pp.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pp.pixel_std).view(-1, 1, 1), persistent=False)

    # ------------------------------------------------------------------ construction / weights
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, **kwargs) -> "PathSegmentor":
        """Load a registered name, a local dir (``config.json`` + ``model.safetensors``) or a hub id.
        See :mod:`pathsegmentor.modeling.weights` for where weights are looked for, in order. A CellSAM
        name or dir gives a :class:`~pathsegmentor.cellsam.model.CellSAM`."""
        from .weights import load_pretrained

        return load_pretrained(name_or_dir, model_cls=PathSegmentor, **kwargs)

    def save_pretrained(self, directory: str | Path) -> Path:
        from .weights import save_pretrained

        return save_pretrained(self, directory)

    def vocabulary(self) -> list[dict]:
        """What this model can be asked for: one row per trained concept (``config.vocabulary``) with its
        region, structure, object type, parent, synonyms, training sources and validation Dice per source,
        in ontology order. A model that records no vocabulary lists every ontology concept with
        ``recorded: False`` (prompt resolution then answers all of them)."""
        from .vocabulary import vocabulary_rows

        return vocabulary_rows(self.config)

    # ------------------------------------------------------------------ tensors in, tensors out
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8/float [B, 3, H, W]`` on the 0-255 scale -> normalised float."""
        return (images.float() - self.pixel_mean) / self.pixel_std

    def encode_image(self, pixels: torch.Tensor) -> ImageFeatures:
        """``pixels [B, 3, H, W]`` normalised (H, W as the encoder needs) -> :class:`ImageFeatures`."""
        return self.image_encoder.forward_features(pixels)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> ``[N, D]``; the model's prompt template is applied first; cached per string."""
        template = self.config.preprocess.prompt_template
        return self.text_encoder.encode([template.format(p) for p in prompts])

    def pixel_embedding(self, features: ImageFeatures, pixels: torch.Tensor | None) -> torch.Tensor | None:
        """Dense mode: the per-pixel embedding ``[B, C_d, H/2, W/2]`` of the images of ``features``, computed
        once (kept on ``features``) and read by every prompt; None for models without a pixel decoder."""
        if not getattr(self.mask_decoder, "dense", False):
            return None
        if features.pixel_embedding is None:
            if pixels is None:
                raise ValueError("the pixel decoder needs `pixels` (the normalised input) on the first decode")
            features.pixel_embedding = self.mask_decoder.pixel_decoder(pixels, features.embedding, features.skips)
        return features.pixel_embedding

    def _dense_pe(self, h: int, w: int) -> torch.Tensor:
        return self.prompt_encoder.pe_layer((h, w)).unsqueeze(0)

    def decode(self, features: ImageFeatures, pixels: torch.Tensor | None, *,
               text_embeddings: torch.Tensor | None = None, image_index: torch.Tensor | None = None,
               points: tuple[torch.Tensor, torch.Tensor] | None = None, boxes: torch.Tensor | None = None,
               hires: bool | None = None, separation: bool | torch.Tensor = False):
        """Decode M prompts over the B images of ``features``.

        Args:
            features: from :meth:`encode_image`.
            pixels: the normalised input ``[B, 3, H, W]`` (needed by the hires path).
            text_embeddings: ``[M, D]`` or None.
            image_index: ``int64 [M]`` image of each prompt (default: all prompts on image 0).
            points: (coords ``[M, P, 2]`` XY in input pixels, labels ``[M, P]`` 1 fg / 0 bg) or None.
            boxes: ``[M, 4]`` XYXY in input pixels, or None.
            separation: also predict the separation maps (models with a separation head): True, or
                ``bool [M]`` rows that need them.

        Returns:
            ``DecoderOutput`` (mask logits on the decoder grid, presence logits, iou predictions, and the raw
            separation maps when asked for).
        """
        emb = features.embedding
        h, w = emb.shape[-2:]
        stride = self.image_encoder.stride
        # the prompt encoder normalises coordinates by the input size: keep it in step with this input
        self.prompt_encoder.input_image_size = (h * stride, w * stride)
        self.prompt_encoder.image_embedding_size = (h, w)
        m = None
        for x in (text_embeddings, boxes, points[0] if points is not None else None):
            if x is not None:
                m = x.shape[0]
                break
        if m is None:
            raise ValueError("decode needs at least one of text_embeddings, points, boxes")
        if image_index is None:
            image_index = torch.zeros(m, dtype=torch.long, device=emb.device)
        tokens = []
        n_text = 0
        if text_embeddings is not None:
            t = self.prompt_adapter(text_embeddings)
            tokens.append(t)
            n_text = t.shape[1]
        if points is not None or boxes is not None:
            sparse, _ = self.prompt_encoder(points=points, boxes=boxes, masks=None)
            tokens.append(sparse)
        sparse = torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0]
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(m, -1, h, w)
        return self.mask_decoder.decode(
            image_embeddings=emb, image_pe=self._dense_pe(h, w), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, image_index=image_index, num_text_tokens=n_text,
            pixels=pixels, skip4=features.skips.get(4), hires=hires, separation=separation,
            pixel_embedding=self.pixel_embedding(features, pixels))

    def forward(self, pixels: torch.Tensor, prompts: Sequence[Sequence[str]] | None = None, *,
                text_embeddings: torch.Tensor | None = None, features: ImageFeatures | None = None,
                full_resolution: bool = True, boxes: torch.Tensor | None = None, points: torch.Tensor | None = None,
                separation: bool | torch.Tensor = False) -> PathSegOutput:
        """Training forward: B images, P prompts each.

        Args:
            pixels: normalised ``[B, 3, H, W]``.
            prompts: B lists of P strings (``""``: no text, a geometric prompt alone), or give
                ``text_embeddings [B, P, D]`` instead (text only).
            features: precomputed image features (embedding-cache mode); else encoded here.
            full_resolution: upsample logits to ``H, W`` (else the decoder grid).
            boxes: ``[B, P, 4]`` XYXY in input pixels, NaN on rows without a box.
            points: ``[B, P, 2]`` XY of one foreground point, NaN on rows without one.
            separation: also return the separation maps: True, or ``bool [B, P]`` rows that need them (the
                others get zeros; training asks only for rows with instance ground truth).

        Rows are decoded in groups of the same prompt kind (text; text + box; box; point), each exactly as
        :meth:`segment` decodes that kind, and put back in order.
        """
        b = pixels.shape[0]
        geometric = boxes is not None or points is not None
        if text_embeddings is None:
            if prompts is None or len(prompts) != b:
                raise ValueError(f"need {b} prompt lists (one per image), got {None if prompts is None else len(prompts)}")
            p = len(prompts[0])
            if any(len(x) != p for x in prompts):
                raise ValueError("every image needs the same number of prompts (pad with repeats)")
            flat = [s for x in prompts for s in x]
            has_text = torch.tensor([bool(s) for s in flat], device=pixels.device)
            text_embeddings = None
            if has_text.any():
                emb = self.encode_text([s for s in flat if s])
                text_embeddings = emb.new_zeros(b * p, emb.shape[-1])
                text_embeddings[has_text] = emb
        else:
            p = text_embeddings.shape[1]
            text_embeddings = text_embeddings.reshape(b * p, -1)
            has_text = torch.ones(b * p, dtype=torch.bool, device=pixels.device)
        if features is None:
            features = self.encode_image(pixels)
        index = torch.arange(b, device=pixels.device).repeat_interleave(p)
        sep_rows = separation.reshape(b * p).to(pixels.device) if isinstance(separation, torch.Tensor) else separation
        if not geometric:
            out = self.decode(features, pixels, text_embeddings=text_embeddings, image_index=index,
                              separation=sep_rows)
            logits, presence, sep = out.mask_logits, out.presence_logits, out.separation
        else:
            from .prompt_groups import decode_prompt_groups

            logits, presence, sep = decode_prompt_groups(
                self, features, pixels, text_embeddings=text_embeddings, has_text=has_text, image_index=index,
                boxes=boxes, points=points, separation=sep_rows)
        if full_resolution:
            logits = F.interpolate(logits[:, None], size=pixels.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            if sep is not None:
                sep = F.interpolate(sep, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        sep = sep.view(b, p, *sep.shape[1:]) if sep is not None else None
        return PathSegOutput(logits.view(b, p, *logits.shape[-2:]), presence.view(b, p), sep)

    # ------------------------------------------------------------------ user-facing inference
    def _window_size(self, h: int, w: int) -> tuple[int, int]:
        pp = self.config.preprocess
        if pp.fixed_input:
            return pp.input_size, pp.input_size
        d = pp.size_divisor
        return max(d, math.ceil(h / d) * d), max(d, math.ceil(w / d) * d)

    @torch.no_grad()
    def predict_window_maps(self, window: np.ndarray, text_emb: torch.Tensor | None, points, boxes,
                            hires: bool | None, separation: bool = False) -> WindowPrediction:
        """One window ``uint8 [h, w, 3]`` (h, w <= input_size) at the model's µm/px -> :class:`WindowPrediction`.
        ``text_emb [N, D]`` from :meth:`encode_text`; ``points`` (coords ``[N, P, 2]`` XY, labels ``[N, P]``)
        and ``boxes [N, 4]`` XYXY in window pixels, or None. One image encoding serves all N prompts;
        ``separation`` adds the separation maps (models with a separation head)."""
        h, w = window.shape[:2]
        ph, pw = self._window_size(h, w)
        x = torch.from_numpy(np.ascontiguousarray(window)).to(self.device).permute(2, 0, 1)[None]
        x = self.normalize(x)
        x = F.pad(x, (0, pw - w, 0, ph - h))  # bottom-right zero padding after normalisation, as SAM
        feats = self.encode_image(x)
        out = self.decode(feats, x, text_embeddings=text_emb, points=points, boxes=boxes, hires=hires,
                          separation=separation)
        logits = F.interpolate(out.mask_logits[:, None], size=(ph, pw), mode="bilinear", align_corners=False)
        probs = torch.sigmoid(logits[:, 0, :h, :w]).float().cpu().numpy()
        presence = torch.sigmoid(out.presence_logits).float().cpu().numpy()
        sep = None
        if separation:
            raw = F.interpolate(out.separation, size=(ph, pw), mode="bilinear", align_corners=False)[:, :, :h, :w]
            sep = torch.cat([torch.tanh(raw[:, :2]), torch.sigmoid(raw[:, 2:])], dim=1).float().cpu().numpy()
        return WindowPrediction(probs, presence, sep)

    @property
    def has_separation(self) -> bool:
        """Whether the decoder predicts instance separation maps."""
        dec = self.mask_decoder
        if getattr(dec, "dense", False):
            return getattr(dec, "separation_channels", 0) > 0
        return getattr(dec, "separation_head", None) is not None

    @torch.no_grad()
    def predict_window(self, window: np.ndarray, text_emb: torch.Tensor | None, points, boxes,
                       hires: bool | None) -> tuple[np.ndarray, np.ndarray]:
        """(probs ``float32 [N, h, w]`` in [0, 1], presence ``float32 [N]``) of one window: see
        :meth:`predict_window_maps`. The building block of ``segment()`` and of whole-slide inference."""
        pred = self.predict_window_maps(window, text_emb, points, boxes, hires)
        return pred.probs, pred.presence

    def segment(self, image: "ImageInput", prompts: str | Sequence[str] | None = None, *,
                mpp: float | None = None, points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                boxes: np.ndarray | None = None, mask_threshold: float | None = None,
                presence_threshold: float | None = None, hires: bool | None = None,
                tile_overlap: int | None = None, progress: bool = False,
                vocabulary: str = "model", instances: str = "auto", tta: bool = False) -> "SegmentationResult":
        """Segment whatever each prompt names.

        Args:
            image: path, PIL image, numpy ``HxW``/``HxWxC`` (uint8/uint16/float) or torch ``CxHxW``.
            prompts: a phrase or a list of N phrases (canonical names or synonyms, e.g. "tumor nuclei").
            mpp: microns per pixel of ``image``; when given the image is rescaled to each prompt's working
                mpp (``config.preprocess.structure_mpp``, e.g. nuclei at 0.25) and masks are mapped back to
                the input size. Without it nothing is rescaled.
            points: ``[N, P, 2]`` XY in input pixels with ``point_labels [N, P]`` (1 fg, 0 bg).
            boxes: ``[N, 4]`` (or ``[4]``) XYXY in input pixels. Geometric prompts combine with text
                (one set per text prompt, or one set broadcast to all) or replace it.
            mask_threshold / presence_threshold: override the model's defaults (probabilities).
            hires: switch the high-resolution mask path for this call.
            tile_overlap: overlap in model pixels between tiles of a large image.
            vocabulary: ``"model"`` (default): each phrase is grounded in the ontology and answered only
                for concepts this model was trained on (or their trained parent/sub-concept, said so);
                other phrases get an empty mask, presence 0 and the reason (``res.resolutions``).
                ``"open"``: raw text to the text tower, unchecked (research); a phrase that names a concept
                by name or synonym still gets its working µm/px, instances and size limit
                (``res.resolutions[i].segmented_as``).
            instances: instance decoder for nuclei/cell/gland prompts (``res.instances``): ``"auto"`` (the
                model's separation maps if it predicts them, else a watershed of the mask), ``"hv"``,
                ``"distance"``, ``"watershed"``, or ``"none"``.
            tta: average over horizontal and vertical flips (3x the cost).

        Returns:
            :class:`~pathsegmentor.inference.result.SegmentationResult` with ``masks [N, H, W]`` at the
            input's full resolution. The work (input decoding, mpp rescaling, tiling and blending) is done
            by :func:`pathsegmentor.inference.segment.segment_image`, which takes this model as its argument.
        """
        from ..inference.segment import segment_image

        return segment_image(self, image, prompts, mpp=mpp, points=points, point_labels=point_labels, boxes=boxes,
                             mask_threshold=mask_threshold, presence_threshold=presence_threshold, hires=hires,
                             tile_overlap=tile_overlap, progress=progress, vocabulary=vocabulary,
                             instances=instances, tta=tta)
