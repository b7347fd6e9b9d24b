"""CellSAM's asymmetric dual image encoder: a frozen large SAM ViT teacher and a light student.

:class:`DualEncoder` is an image encoder like any other (``forward_features(pixels) ->
ImageFeatures``, ``stride = 16``, ``skip_channels``); what ``forward_features`` computes depends on
its deployment ``mode``:

* ``"student"`` — the light encoder only (a timm backbone + neck to SAM's embedding shape,
  :class:`~pathsegmentor.modeling.image_encoder.TimmImageEncoder`); the teacher never runs;
* ``"teacher"`` — the SAM ViT only (no skip features: the hires path uses the pixel stem alone);
* ``"fused"`` — both, plus their aggregation (:mod:`.aggregation`); returns :class:`DualFeatures`,
  whose ``branches`` let the model decode each branch and fuse the masks (:mod:`.fusion`).

The teacher keeps the official ``segment_anything`` module layout under ``image_encoder.teacher.``,
so an official ``sam_vit_*.pth`` loads with :func:`load_teacher_checkpoint` (strict, mismatches named).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..modeling.config import ConfigError, ImageEncoderConfig, from_dict
from ..modeling.image_encoder import ImageFeatures
from . import BRANCHES, MODES


@dataclass
class DualFeatures(ImageFeatures):
    """Fused-mode features. ``embedding``/``skips``: the aggregated embedding with the student's skip
    features (what a single-branch decode uses); ``branches``: ``"teacher"``, ``"student"``,
    ``"aggregated"`` -> :class:`ImageFeatures` (same ``[B, C, H/16, W/16]`` grid)."""

    branches: dict[str, ImageFeatures] = field(default_factory=dict)

    def to(self, *args, **kwargs) -> "DualFeatures":
        base = ImageFeatures.to(self, *args, **kwargs)
        return DualFeatures(base.embedding, base.skips,
                            branches={k: v.to(*args, **kwargs) for k, v in self.branches.items()})

    def select(self, index: torch.Tensor | slice) -> "DualFeatures":
        base = ImageFeatures.select(self, index)
        return DualFeatures(base.embedding, base.skips, branches={k: v.select(index) for k, v in self.branches.items()})


class DualEncoder(nn.Module):
    """Frozen teacher + trainable student + aggregation.

    Args:
        teacher: a SAM ViT encoder (``SamImageEncoder``) producing ``[B, C, H/16, W/16]``.
        student: a light encoder with the same output shape (``TimmImageEncoder``), with skip features.
        aggregation: ``(teacher_emb, student_emb) -> emb`` (see :mod:`.aggregation`).
        mode: the deployment mode, one of ``student`` / ``teacher`` / ``fused``.

    Input ``float [B, 3, S, S]`` normalised; ``S`` the teacher's ``img_size`` whenever the teacher
    runs (student mode accepts any multiple of 32).
    """

    stride = 16

    def __init__(self, *, teacher: nn.Module, student: nn.Module, aggregation: nn.Module, mode: str = "fused") -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student
        self.aggregation = aggregation
        self.skip_channels = dict(getattr(student, "skip_channels", {}))
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self._mode = "fused"
        self.mode = mode

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"Unknown CellSAM mode '{value}'. Available: {list(MODES)}")
        self._mode = value

    def train(self, mode: bool = True) -> "DualEncoder":
        super().train(mode)
        self.teacher.eval()  # frozen: never in training mode
        return self

    # ------------------------------------------------------------------ branches
    def encode_teacher(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` -> teacher embedding ``[B, C, S/16, S/16]`` (no graph while frozen)."""
        size = getattr(self.teacher, "img_size", None)
        if size is not None and tuple(pixels.shape[-2:]) != (size, size):
            raise ValueError(f"The CellSAM teacher is a SAM ViT built for {size}x{size} inputs (absolute position "
                             f"embeddings); got {tuple(pixels.shape[-2:])}. Pad/crop to {size}x{size} "
                             f"(preprocess.fixed_input: true) or use mode='student'.")
        frozen = not any(p.requires_grad for p in self.teacher.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            return self.teacher.forward_features(pixels).embedding

    def encode_student(self, pixels: torch.Tensor) -> ImageFeatures:
        return self.student.forward_features(pixels)

    def forward_branches(self, pixels: torch.Tensor, teacher_embedding: torch.Tensor | None = None) -> DualFeatures:
        """All three branches. ``teacher_embedding``: a precomputed (cached) teacher output to reuse."""
        t = self.encode_teacher(pixels) if teacher_embedding is None else teacher_embedding.to(pixels.device)
        s = self.encode_student(pixels)
        a = self.aggregation(t, s.embedding)
        branches = {"teacher": ImageFeatures(t), "student": s, "aggregated": ImageFeatures(a, s.skips)}
        assert tuple(branches) == BRANCHES
        return DualFeatures(a, s.skips, branches=branches)

    def forward_features(self, pixels: torch.Tensor) -> ImageFeatures:
        if self._mode == "student":
            return self.encode_student(pixels)
        if self._mode == "teacher":
            return ImageFeatures(self.encode_teacher(pixels))
        return self.forward_branches(pixels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_features(pixels).embedding


def _sub_config(cfg: ImageEncoderConfig, which: str) -> ImageEncoderConfig:
    data = getattr(cfg, which)
    if not data:
        raise ConfigError(f"image_encoder.{which} is empty: a 'dual' encoder needs a {which} sub-config, e.g. "
                          + ("{type: sam, variant: vit_b}" if which == "teacher" else
                             "{type: timm, backbone: resnet18, out_indices: [1, 2, 3]}"))
    sub = from_dict(ImageEncoderConfig, {"embed_dim": cfg.embed_dim, **data}, where=f"image_encoder.{which}")
    if sub.type == "dual":
        raise ConfigError(f"image_encoder.{which}.type cannot be 'dual'. Use 'sam' or 'timm'.")
    if sub.embed_dim != cfg.embed_dim:
        raise ConfigError(f"image_encoder.{which}.embed_dim ({sub.embed_dim}) must equal image_encoder.embed_dim "
                          f"({cfg.embed_dim}): teacher and student produce the same embedding shape")
    return sub


def build_dual_encoder(cfg: ImageEncoderConfig, img_size: int, mode: str = "fused") -> DualEncoder:
    """Build from an ``ImageEncoderConfig`` of type ``"dual"`` (``teacher``/``student`` sub-configs)."""
    from ..modeling.image_encoder import build_image_encoder
    from .aggregation import build_aggregation

    tcfg, scfg = _sub_config(cfg, "teacher"), _sub_config(cfg, "student")
    if tcfg.type != "sam":
        raise ConfigError(f"image_encoder.teacher.type must be 'sam' (a SAM ViT), got '{tcfg.type}'")
    teacher = build_image_encoder(tcfg, img_size)
    student = build_image_encoder(scfg, img_size)
    return DualEncoder(teacher=teacher, student=student, aggregation=build_aggregation(cfg.aggregation, cfg.embed_dim),
                       mode=mode)


# ---------------------------------------------------------------------------------------------------
# official SAM checkpoints

TEACHER_PREFIX = "image_encoder.teacher."
_SAM_DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")
_OURS_ONLY = ("mask_decoder.hires_", "mask_decoder.presence_head.")


def load_teacher_checkpoint(model: nn.Module, path: str | Path) -> list[str]:
    """Load an official SAM checkpoint (``sam_vit_b_01ec64.pth`` layout) into a CellSAM ``model``.

    ``image_encoder.*`` goes to ``image_encoder.teacher.*``; ``prompt_encoder.*`` and
    ``mask_decoder.*`` to the shared decoder, as :func:`pathsegmentor.modeling.weights.load_sam_checkpoint`
    does. Strict: every checkpoint key must land on a model key of the same shape and every teacher
    and SAM decoder key must be covered; otherwise :class:`~pathsegmentor.modeling.weights.CheckpointError`
    names the keys. Returns the model keys left at their initial values (student, aggregation, mask
    fusion, text adapter, hires path, presence head).
    """
    from ..modeling.weights import CheckpointError, safe_torch_load

    state = safe_torch_load(path)
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []  # checkpoint key names (with the model key they were mapped to)
    for k, v in state.items():
        target = TEACHER_PREFIX + k[len("image_encoder."):] if k.startswith("image_encoder.") else k
        if not k.startswith(("image_encoder.",) + _SAM_DECODER_PREFIXES):
            unexpected.append(k)
        elif target not in own:
            unexpected.append(k if target == k else f"{k} (-> {target})")
        else:
            mapped[target] = v
    shape = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in mapped.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if (k.startswith(TEACHER_PREFIX) or
                                  (k.startswith(_SAM_DECODER_PREFIXES) and not k.startswith(_OURS_ONLY)))
               and k not in mapped]
    if unexpected or shape or missing:
        tcfg = getattr(model.config.image_encoder, "teacher", {})
        raise CheckpointError(
            f"SAM checkpoint '{path}' does not match the teacher of '{model.config.name}' "
            f"(teacher variant {tcfg.get('variant', '?')}; official keys image_encoder.* are loaded into "
            f"{TEACHER_PREFIX}*):\n  unexpected keys: {unexpected[:20]}\n  missing keys: {missing[:20]}\n"
            f"  shape mismatches: {shape[:10]}\n  Use the checkpoint of the teacher's variant (vit_b: "
            f"sam_vit_b_01ec64.pth, vit_l: sam_vit_l_0b3195.pth, vit_h: sam_vit_h_4b8939.pth).")
    model.load_state_dict(mapped, strict=False)
    return [k for k in own if k not in mapped]
