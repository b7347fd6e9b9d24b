"""The PathSegmentor model: parts passed in, one image encoding for many prompts.

Data flow (file names in order): ``image_io`` -> ``image_encoder`` -> ``text_encoder`` ->
``prompt_adapter`` (+ SAM ``PromptEncoder`` for points/boxes) -> ``mask_decoder`` (hires path,
presence head) -> ``tiling`` (large inputs) -> :class:`~pathsegmentor.result.SegmentationResult`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .image_encoder import ImageFeatures
from .image_io import ImageInput, resize_rgb, to_rgb_uint8
from .result import SegmentationResult
from .tiling import BlendAccumulator, tile_grid


@dataclass
class PathSegOutput:
    """Training-time output. ``mask_logits [B, P, H, W]`` at the input resolution (or the decoder
    grid with ``full_resolution=False``), ``presence_logits [B, P]``."""

    mask_logits: torch.Tensor
    presence_logits: torch.Tensor


class PathSegmentor(nn.Module):
    """Text-prompted segmentation model.

    Args:
        image_encoder: module with ``forward_features(pixels [B,3,H,W]) -> ImageFeatures``.
        text_encoder: a :class:`~pathsegmentor.text_encoder.TextEncoder` (``encode(list[str]) -> [N, D]``).
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
        See :func:`pathsegmentor.weights.from_pretrained`."""
        from .weights import from_pretrained

        return from_pretrained(name_or_dir, **kwargs)

    def save_pretrained(self, directory: str | Path) -> Path:
        from .weights import save_pretrained

        return save_pretrained(self, directory)

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

    def _dense_pe(self, h: int, w: int) -> torch.Tensor:
        return self.prompt_encoder.pe_layer((h, w)).unsqueeze(0)

    def decode(self, features: ImageFeatures, pixels: torch.Tensor | None, *,
               text_embeddings: torch.Tensor | None = None, image_index: torch.Tensor | None = None,
               points: tuple[torch.Tensor, torch.Tensor] | None = None, boxes: torch.Tensor | None = None,
               hires: bool | None = None):
        """Decode M prompts over the B images of ``features``.

        Args:
            features: from :meth:`encode_image`.
            pixels: the normalised input ``[B, 3, H, W]`` (needed by the hires path).
            text_embeddings: ``[M, D]`` or None.
            image_index: ``int64 [M]`` image of each prompt (default: all prompts on image 0).
            points: (coords ``[M, P, 2]`` XY in input pixels, labels ``[M, P]`` 1 fg / 0 bg) or None.
            boxes: ``[M, 4]`` XYXY in input pixels, or None.

        Returns:
            ``DecoderOutput`` (mask logits on the decoder grid, presence logits, iou predictions).
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
            pixels=pixels, skip4=features.skips.get(4), hires=hires)

    def forward(self, pixels: torch.Tensor, prompts: Sequence[Sequence[str]] | None = None, *,
                text_embeddings: torch.Tensor | None = None, features: ImageFeatures | None = None,
                full_resolution: bool = True) -> PathSegOutput:
        """Training forward: B images, P text prompts each.

        Args:
            pixels: normalised ``[B, 3, H, W]``.
            prompts: B lists of P strings, or give ``text_embeddings [B, P, D]`` instead.
            features: precomputed image features (embedding-cache mode); else encoded here.
            full_resolution: upsample logits to ``H, W`` (else the decoder grid).
        """
        b = pixels.shape[0]
        if text_embeddings is None:
            if prompts is None or len(prompts) != b:
                raise ValueError(f"need {b} prompt lists (one per image), got {None if prompts is None else len(prompts)}")
            p = len(prompts[0])
            if any(len(x) != p for x in prompts):
                raise ValueError("every image needs the same number of prompts (pad with repeats)")
            flat = [s for x in prompts for s in x]
            text_embeddings = self.encode_text(flat).view(b, p, -1)
        p = text_embeddings.shape[1]
        if features is None:
            features = self.encode_image(pixels)
        index = torch.arange(b, device=pixels.device).repeat_interleave(p)
        out = self.decode(features, pixels, text_embeddings=text_embeddings.reshape(b * p, -1), image_index=index)
        logits = out.mask_logits
        if full_resolution:
            logits = F.interpolate(logits[:, None], size=pixels.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return PathSegOutput(logits.view(b, p, *logits.shape[-2:]), out.presence_logits.view(b, p))

    # ------------------------------------------------------------------ user-facing inference
    def _window_size(self, h: int, w: int) -> tuple[int, int]:
        pp = self.config.preprocess
        if pp.fixed_input:
            return pp.input_size, pp.input_size
        d = pp.size_divisor
        return max(d, math.ceil(h / d) * d), max(d, math.ceil(w / d) * d)

    @torch.no_grad()
    def _predict_window(self, window: np.ndarray, text_emb: torch.Tensor | None, points, boxes,
                        hires: bool | None) -> tuple[np.ndarray, np.ndarray]:
        """One window ``uint8 [h, w, 3]`` (h, w <= input_size) -> (probs ``[N, h, w]``, presence ``[N]``)."""
        h, w = window.shape[:2]
        ph, pw = self._window_size(h, w)
        x = torch.from_numpy(window).to(self.device).permute(2, 0, 1)[None]
        x = self.normalize(x)
        x = F.pad(x, (0, pw - w, 0, ph - h))  # bottom-right zero padding after normalisation, as SAM
        feats = self.encode_image(x)
        out = self.decode(feats, x, text_embeddings=text_emb, points=points, boxes=boxes, hires=hires)
        logits = F.interpolate(out.mask_logits[:, None], size=(ph, pw), mode="bilinear", align_corners=False)
        logits = logits[:, 0, :h, :w]
        return torch.sigmoid(logits).float().cpu().numpy(), torch.sigmoid(out.presence_logits).float().cpu().numpy()

    def segment_slide(self, path: str | Path, prompts: str | Sequence[str], **kw):
        """Whole-slide inference, streamed to ``out=DIR``; see :mod:`pathsegmentor.slide`."""
        from .slide import segment_slide

        return segment_slide(self, path, prompts, **kw)

    @torch.no_grad()
    def segment(self, image: ImageInput, prompts: str | Sequence[str] | None = None, *,
                mpp: float | None = None, points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                boxes: np.ndarray | None = None, mask_threshold: float | None = None,
                presence_threshold: float | None = None, hires: bool | None = None,
                tile_overlap: int | None = None, progress: bool = False) -> SegmentationResult:
        """Segment whatever each prompt names.

        Args:
            image: path, PIL image, numpy ``HxW``/``HxWxC`` (uint8/uint16/float) or torch ``CxHxW``.
            prompts: a phrase or a list of N phrases (canonical names or synonyms, e.g. "tumor nuclei").
            mpp: microns per pixel of ``image``; when given the image is rescaled to the model's mpp and
                masks are mapped back to the input size.
            points: ``[N, P, 2]`` XY in input pixels with ``point_labels [N, P]`` (1 fg, 0 bg).
            boxes: ``[N, 4]`` (or ``[4]``) XYXY in input pixels. Geometric prompts combine with text
                (one set per text prompt, or one set broadcast to all) or replace it.
            mask_threshold / presence_threshold: override the model's defaults (probabilities).
            hires: switch the high-resolution mask path for this call.
            tile_overlap: overlap in model pixels between tiles of a large image.

        Returns:
            :class:`SegmentationResult` with ``masks [N, H, W]`` at the input's full resolution.
        """
        rgb = to_rgb_uint8(image)
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts) if prompts is not None else []
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"Empty prompt {p!r}: every prompt must be a non-empty phrase such as 'tumor nuclei'.")
        if not prompts and points is None and boxes is None:
            raise ValueError("No prompt given: pass at least one text prompt (e.g. 'nuclei'), or points/boxes.")
        if mpp is not None and not (isinstance(mpp, (int, float)) and 0 < mpp < 100):
            raise ValueError(f"mpp={mpp!r} is not a valid microns-per-pixel value (expected e.g. 0.25 for 40x, 0.5 for 20x)")
        inf = self.config.inference
        mthr = inf.mask_threshold if mask_threshold is None else mask_threshold
        pthr = inf.presence_threshold if presence_threshold is None else presence_threshold
        overlap = inf.tile_overlap if tile_overlap is None else tile_overlap
        H, W = rgb.shape[:2]
        scale = 1.0 if mpp is None else float(mpp) / self.config.preprocess.mpp
        work = rgb
        if abs(scale - 1.0) > 1e-3:
            work = resize_rgb(rgb, (max(1, round(H * scale)), max(1, round(W * scale))))
        sy, sx = work.shape[0] / H, work.shape[1] / W

        geo_points = geo_boxes = None
        n = len(prompts)
        if boxes is not None:
            b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
            geo_boxes = torch.from_numpy(b).to(self.device)
        if points is not None:
            if point_labels is None:
                raise ValueError("points need point_labels (1 foreground, 0 background) of shape [N, P]")
            pc = np.asarray(points, dtype=np.float32)
            pc = pc.reshape(-1, pc.shape[-2], 2) if pc.ndim == 3 else pc.reshape(1, -1, 2)
            pl = np.asarray(point_labels).reshape(pc.shape[0], pc.shape[1])
            pc = pc * np.array([sx, sy], np.float32)
            geo_points = (torch.from_numpy(pc).to(self.device), torch.from_numpy(pl).long().to(self.device))
        n_geo = max(x.shape[0] if x is not None else 0 for x in (geo_boxes, geo_points[0] if geo_points else None))
        if n == 0:
            n = n_geo
            names = [f"<geometric prompt {i}>" for i in range(n)]
        else:
            names = prompts
            if n_geo not in (0, 1, n):
                raise ValueError(f"{n_geo} point/box sets for {n} text prompts: give one per prompt or one for all")
        if geo_boxes is not None and geo_boxes.shape[0] != n:
            geo_boxes = geo_boxes.expand(n, 4)
        if geo_points is not None and geo_points[0].shape[0] != n:
            geo_points = (geo_points[0].expand(n, -1, -1), geo_points[1].expand(n, -1))
        text_emb = self.encode_text(prompts) if prompts else None

        size = self.config.preprocess.input_size
        h, w = work.shape[:2]
        if h <= size and w <= size:
            probs, presence = self._predict_window(work, text_emb, geo_points, geo_boxes, hires)
        else:
            if geo_points is not None or geo_boxes is not None:
                raise ValueError(
                    f"Point/box prompts need the image to fit in one {size}x{size} window (after mpp "
                    f"rescaling it is {h}x{w}); crop the region of interest first, or use text prompts.")
            tiles = tile_grid(h, w, size, overlap)
            acc = BlendAccumulator(n, h, w, overlap)
            presence = np.zeros(n, np.float32)
            it = tiles
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(tiles, desc="tiles", unit="tile")
            for t in it:
                p, s = self._predict_window(work[t.y0:t.y1, t.x0:t.x1], text_emb, None, None, hires)
                acc.add(t, p)
                presence = np.maximum(presence, s)
            probs = acc.result()
        if probs.shape[-2:] != (H, W):
            probs = F.interpolate(torch.from_numpy(probs)[None], size=(H, W), mode="bilinear",
                                  align_corners=False)[0].numpy()
        probs = probs.astype(np.float32, copy=False)  # our own array: clipped in place
        np.clip(probs, 0.0, 1.0, out=probs)
        if not prompts:  # geometric prompts assert the target is there; presence is a text-prompt notion
            presence = np.ones(n, np.float32)
        present = presence >= pthr
        masks = (probs > mthr) & present[:, None, None]
        return SegmentationResult(prompts=names, masks=masks, probs=probs, presence=presence.astype(np.float32),
                                  image_size=(H, W), mpp=mpp, model=self.name,
                                  thresholds={"mask": mthr, "presence": pthr})
