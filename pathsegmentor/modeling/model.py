"""The PathSegmentor network: parts passed in, one image encoding for many prompts.

Data flow (file names in order): ``image_encoder`` -> ``text_encoder`` -> ``prompt_adapter`` (+ SAM
``PromptEncoder`` for points/boxes) -> ``pixel_decoder`` (dense mode) -> ``mask_decoder`` (hires path or dense
product, presence head, separation maps). Whole images, tiles, thresholds and instances are the inference layer's
(:class:`pathsegmentor.inference.predictor.Predictor`), which calls this network and is never called by it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .image_encoder import ImageFeatures
from .outputs import EncodedWindow, PathSegOutput, WindowPrediction
from .window import WindowMixin

__all__ = ["PathSegmentorNetwork", "PathSegOutput", "EncodedWindow", "WindowPrediction"]


class PathSegmentorNetwork(WindowMixin, nn.Module):
    """The text-prompted segmentation network: tensors (and single windows) in, logits and probabilities out.

    It never calls the inference layer. ``segment()`` lives above it: :class:`pathsegmentor.PathSegmentor` is this
    network with a :class:`~pathsegmentor.inference.predictor.Predictor` attached (as segment-anything keeps
    ``Sam`` below ``SamPredictor``).

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
    def from_pretrained(cls, name_or_dir: str | Path, **kwargs) -> "PathSegmentorNetwork":
        """Load a registered name, a local dir (``config.json`` + ``model.safetensors``) or a hub id.
        See :mod:`pathsegmentor.modeling.weights` for where weights are looked for, in order. A CellSAM
        name or dir gives a :class:`~pathsegmentor.cellsam.model.CellSAM`."""
        from .weights import load_pretrained

        return load_pretrained(name_or_dir, model_cls=cls, **kwargs)

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
