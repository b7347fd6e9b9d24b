"""The CellSAM model: PathSegmentor's parts with a dual image encoder and mask fusion.

One checkpoint serves three deployment modes, chosen at load time or switched later:

* ``"student"`` — the light encoder alone (fast, CPU); the teacher is never run, and windows are
  padded only to a multiple of ``preprocess.size_divisor`` instead of the teacher's fixed size;
* ``"teacher"`` — the frozen SAM ViT alone;
* ``"fused"`` — both encoders and their aggregation; the shared decoder decodes each branch and
  the masks are fused (learned per-pixel gate, or the plain average). Most accurate, slowest.

>>> model = CellSAM.from_pretrained("runs/cellsam/model", mode="student")
>>> model.segment("tile.png", "nuclei").masks.shape
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.config import ConfigError, ModelConfig, from_dict
from ..modeling.mask_decoder import DecoderOutput
from ..inference.predictor import SegmentMixin
from ..modeling.model import PathSegmentorNetwork, PathSegOutput
from . import BRANCHES, MODES
from .dual_encoder import DualEncoder, DualFeatures, load_teacher_checkpoint
from .fusion import FUSIONS, build_mask_fusion


@dataclass
class CellSAMConfig:
    """``ModelConfig.cellsam``. ``mode``: the default deployment mode; ``fusion``: ``"gate"`` (learned
    per-pixel gate) or ``"average"``; ``gate_hidden``: width of the gate's conv layers."""

    mode: str = "fused"
    fusion: str = "gate"
    gate_hidden: int = 16


@dataclass
class FusedDecoderOutput(DecoderOutput):
    """A fused decode; ``branches``: branch name -> that branch's :class:`DecoderOutput`."""

    branches: dict[str, DecoderOutput] = field(default_factory=dict)


@dataclass
class CellSAMOutput(PathSegOutput):
    """Training output in fused mode: the fused ``mask_logits``/``presence_logits`` plus each branch's
    (same shapes), for deep supervision (:func:`~pathsegmentor.training.losses.fused_segmentation_loss`)."""

    branches: dict[str, PathSegOutput] = field(default_factory=dict)


class CellSAM(SegmentMixin, PathSegmentorNetwork):
    """PathSegmentor with a :class:`DualEncoder` and mask fusion (``config.cellsam``).

    Built by :func:`pathsegmentor.modeling.build.build_model` for configs whose ``image_encoder.type`` is
    ``"dual"``; saved and loaded like any model.
    """

    def __init__(self, *, image_encoder: nn.Module, text_encoder: nn.Module, prompt_adapter: nn.Module,
                 mask_decoder: nn.Module, prompt_encoder: nn.Module, config: ModelConfig) -> None:
        if not isinstance(image_encoder, DualEncoder):
            raise TypeError(f"CellSAM needs a DualEncoder image encoder (image_encoder.type 'dual'), got "
                            f"{type(image_encoder).__name__}")
        super().__init__(image_encoder=image_encoder, text_encoder=text_encoder, prompt_adapter=prompt_adapter,
                         mask_decoder=mask_decoder, prompt_encoder=prompt_encoder, config=config)
        cc = from_dict(CellSAMConfig, dict(config.cellsam), where="cellsam")
        if cc.fusion not in FUSIONS:
            raise ConfigError(f"cellsam.fusion '{cc.fusion}' unknown. Available: {list(FUSIONS)}")
        config.cellsam = {"mode": cc.mode, "fusion": cc.fusion, "gate_hidden": cc.gate_hidden}
        self.mask_fusion = build_mask_fusion(cc.fusion, dim=config.image_encoder.embed_dim, hidden=cc.gate_hidden)
        self.set_mode(cc.mode)

    # ------------------------------------------------------------------ modes and weights
    @property
    def mode(self) -> str:
        return self.image_encoder.mode

    def set_mode(self, mode: str) -> "CellSAM":
        """Switch the deployment mode (``student`` / ``teacher`` / ``fused``); recorded in the config,
        so a saved model loads in this mode unless another is asked for."""
        if mode not in MODES:
            raise ValueError(f"Unknown CellSAM mode '{mode}'. Available: {list(MODES)}")
        self.image_encoder.mode = mode
        self.config.cellsam["mode"] = mode
        return self

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, *, mode: str | None = None, **kwargs) -> "CellSAM":
        """Load like :meth:`PathSegmentor.from_pretrained`; ``mode`` picks the deployment mode
        (default: the one saved in the config)."""
        if mode is not None and mode not in MODES:
            raise ValueError(f"Unknown CellSAM mode '{mode}'. Available: {list(MODES)}")
        from ..modeling.weights import load_pretrained

        model = load_pretrained(name_or_dir, model_cls=cls, **kwargs)
        if not isinstance(model, CellSAM):
            raise TypeError(f"'{name_or_dir}' is a {type(model).__name__} ({model.config.name}), not a CellSAM "
                            f"model (image_encoder.type 'dual'); load it with PathSegmentor.from_pretrained.")
        return model.set_mode(mode) if mode else model

    def load_sam_checkpoint(self, path: str | Path) -> list[str]:
        """Official SAM ``.pth`` -> teacher (``image_encoder.teacher.*``) + prompt encoder + decoder;
        used by :func:`pathsegmentor.modeling.weights.load_sam_checkpoint`."""
        return load_teacher_checkpoint(self, path)

    # ------------------------------------------------------------------ tensors in, tensors out
    def _window_size(self, h: int, w: int) -> tuple[int, int]:
        if self.mode == "student":  # the CNN student takes any multiple of the divisor: no padding to S
            d = self.config.preprocess.size_divisor
            return max(d, -(-h // d) * d), max(d, -(-w // d) * d)
        return super()._window_size(h, w)

    def encode_image(self, pixels: torch.Tensor, teacher_embedding: torch.Tensor | None = None):
        """Per mode: student or teacher :class:`ImageFeatures`, or (fused) :class:`DualFeatures`.
        ``teacher_embedding``: a cached teacher output to reuse in fused mode."""
        if self.mode == "fused":
            return self.image_encoder.forward_branches(pixels, teacher_embedding)
        return self.image_encoder.forward_features(pixels)

    def decode(self, features, pixels, **kwargs):
        """As :meth:`PathSegmentor.decode`; with :class:`DualFeatures` every branch is decoded by the
        shared decoder and the masks fused -> :class:`FusedDecoderOutput`."""
        if not isinstance(features, DualFeatures):
            return super().decode(features, pixels, **kwargs)
        outs = {k: super(CellSAM, self).decode(features.branches[k], pixels, **kwargs) for k in BRANCHES}
        logits = torch.stack([outs[k].mask_logits for k in BRANCHES], dim=1)  # [M, K, H, W]
        index = kwargs.get("image_index")
        if index is None:
            index = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        fused = self.mask_fusion(logits, features.embedding, index)
        presence = self.mask_fusion.fuse_presence(torch.stack([outs[k].presence_logits for k in BRANCHES], 1))
        iou = torch.stack([outs[k].iou_pred for k in BRANCHES], 1).mean(1)
        return FusedDecoderOutput(fused, presence, iou, outs[BRANCHES[0]].stride, branches=outs)

    def forward(self, pixels: torch.Tensor, prompts: Sequence[Sequence[str]] | None = None, *,
                text_embeddings: torch.Tensor | None = None, features=None, full_resolution: bool = True,
                teacher_embedding: torch.Tensor | None = None) -> PathSegOutput:
        """Training forward, as :meth:`PathSegmentor.forward`. In fused mode (with ``features`` absent
        or :class:`DualFeatures`) returns :class:`CellSAMOutput` carrying every branch's output."""
        if features is None and self.mode == "fused":
            features = self.encode_image(pixels, teacher_embedding)
        if not isinstance(features, DualFeatures):
            return super().forward(pixels, prompts, text_embeddings=text_embeddings, features=features,
                                   full_resolution=full_resolution)
        b = pixels.shape[0]
        if text_embeddings is None:
            if prompts is None or len(prompts) != b or len({len(x) for x in prompts}) != 1:
                raise ValueError(f"need {b} prompt lists of equal length (one per image)")
            p = len(prompts[0])
            text_embeddings = self.encode_text([s for x in prompts for s in x]).view(b, p, -1)
        p = text_embeddings.shape[1]
        index = torch.arange(b, device=pixels.device).repeat_interleave(p)
        out = self.decode(features, pixels, text_embeddings=text_embeddings.reshape(b * p, -1), image_index=index)

        def shaped(d: DecoderOutput) -> PathSegOutput:
            logits = d.mask_logits
            if full_resolution:
                logits = F.interpolate(logits[:, None], size=pixels.shape[-2:], mode="bilinear",
                                       align_corners=False)[:, 0]
            return PathSegOutput(logits.view(b, p, *logits.shape[-2:]), d.presence_logits.view(b, p))

        fused = shaped(out)
        return CellSAMOutput(fused.mask_logits, fused.presence_logits,
                             branches={k: shaped(v) for k, v in out.branches.items()})
