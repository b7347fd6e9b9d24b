"""Model configuration: plain YAML/JSON mapped to dataclasses (open_clip style).

A :class:`ModelConfig` fully describes an architecture and its preprocessing; it is saved as
``config.json`` beside the weights so that a checkpoint carries everything inference needs.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .inference_config import InferenceConfig

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # SAM's pixel mean, uint8 scale
IMAGENET_STD = (58.395, 57.12, 57.375)


class ConfigError(ValueError):
    """A config has an unknown key or a bad value; the message names it and the valid choices."""


@dataclass
class ImageEncoderConfig:
    """``type``: ``"sam"`` (segment_anything ViT; ``variant`` vit_b / vit_l / vit_h or custom dims),
    ``"timm"`` (any timm backbone with ``features_only``, plus a neck to ``embed_dim``) or ``"dual"``
    (CellSAM, :mod:`pathsegmentor.cellsam`: a frozen ``teacher`` and a light ``student``, each a
    mapping of these same keys, fused by ``aggregation``: ``"concat"`` or ``"gated"``)."""

    type: str = "timm"
    variant: str = "vit_b"
    backbone: str = "resnet18"
    out_indices: tuple[int, ...] = (1, 2, 3)
    embed_dim: int = 256
    vit_embed_dim: int = 768
    vit_depth: int = 12
    vit_num_heads: int = 12
    vit_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    vit_window_size: int = 14
    vit_patch_size: int = 16
    fast_attention: bool = True
    teacher: dict[str, Any] = field(default_factory=dict)  # type "dual" only
    student: dict[str, Any] = field(default_factory=dict)  # type "dual" only
    aggregation: str = "concat"  # type "dual" only


@dataclass
class TextEncoderConfig:
    """``type``: ``"minilm"`` (bundled offline all-MiniLM-L6-v2), ``"transformers"`` (any AutoModel
    dir or hub id at ``name_or_path``) or ``"open_clip"`` (``name_or_path`` an open_clip model name,
    ``hf-hub:`` id or ``model_name`` + local ``pretrained`` checkpoint path)."""

    type: str = "minilm"
    name_or_path: str = ""
    pretrained: str = ""
    pooling: str = "mean"  # mean | cls
    normalize: bool = True
    max_length: int = 64
    frozen: bool = True


@dataclass
class PromptAdapterConfig:
    num_tokens: int = 4
    hidden_dim: int = 512
    dropout: float = 0.0


@dataclass
class MaskDecoderConfig:
    transformer_dim: int = 256
    depth: int = 2
    mlp_dim: int = 2048
    num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    hires: bool = True
    hires_dim: int = 32
    # instance separation maps predicted beside the mask (0: none; 3: centre offsets x/y + border distance)
    separation_channels: int = 0
    # dense mode: a pixel decoder (modeling/pixel_decoder.py) fuses the encoder's stride-16/8/4/2 features to
    # per-pixel embeddings of dense_dim channels at stride 2, once per image; each prompt's mask and separation
    # maps are products with weights its mask token predicts (replaces the hires path and separation head)
    dense: bool = False
    dense_widths: tuple[int, ...] = (128, 96, 64, 48)
    dense_dim: int = 32
    # channels of a residual stage at stride 1 on top of the stride-2 embedding (0: none); starts at zero, so a
    # stride-2 model's weights load into it unchanged
    dense_fullres_dim: int = 0


@dataclass
class PreprocessConfig:
    """Travels with the weights. ``input_size``: the square window the encoder sees (larger images
    are tiled). ``fixed_input``: pad every window to exactly ``input_size`` (required by ViT
    encoders with absolute position embeddings); otherwise pad to a multiple of ``size_divisor``.
    ``mpp``: microns per pixel the model was trained at. ``pixel_mean``/``pixel_std`` on the uint8
    scale."""

    input_size: int = 1024
    fixed_input: bool = True
    size_divisor: int = 32
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    mpp: float = 0.5
    prompt_template: str = "{}"
    # working µm/px per ontology structure where it differs from ``mpp`` (e.g. {"cell": 0.25}: nuclei at 40x,
    # tissue compartments and glands at ``mpp``); segment() and training scale each prompt group to its own
    structure_mpp: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelConfig:
    name: str = "custom"
    description: str = ""
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    prompt_adapter: PromptAdapterConfig = field(default_factory=PromptAdapterConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # where pretrained weights come from, in resolution order after a local dir and the cache
    pretrained: dict[str, str] = field(default_factory=dict)
    # CellSAM options (image_encoder.type "dual"): see pathsegmentor.cellsam.model.CellSAMConfig
    cellsam: dict[str, Any] = field(default_factory=dict)
    # the concepts the model was trained on: concept -> {sources, train_triples, validation_dice, ...};
    # empty: no record (every ontology concept is answered, e.g. random test models)
    vocabulary: dict[str, dict[str, Any]] = field(default_factory=dict)
    # where each recorded setting came from, e.g. {"inference.presence_threshold": "calibration: ..."}; written by
    # python -m pathsegmentor.evaluation.settings; a setting not listed has its default (pathsegmentor info prints it)
    provenance: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "ModelConfig":
        return from_dict(cls, data, where)

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        return cls.from_dict(data, where=str(path))


def from_dict(cls, data: dict[str, Any], where: str = "config"):
    """Build dataclass ``cls`` from ``data`` recursively; unknown keys raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} for {cls.__name__}. Valid keys: {sorted(known)}"
        )
    kwargs = {}
    hints = _type_hints(cls)
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, f"{where}.{key}")
        elif isinstance(value, list) and "tuple" in str(hint):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _type_hints(cls) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def apply_overrides(cfg, overrides: dict[str, Any]):
    """Return a copy of dataclass ``cfg`` with dotted-key overrides (``"mask_decoder.hires": False``). A section
    given as a mapping (``{"mask_decoder": {"hires": False}}``) is merged key by key, not replaced."""
    data = dataclasses.asdict(cfg)
    flat: dict[str, Any] = {}

    def flatten(prefix: str, value: Any, section: Any) -> None:
        # a mapping given for a config section (a dataclass) is merged key by key; any other value replaces
        if isinstance(value, dict) and value and dataclasses.is_dataclass(section):
            for k, v in value.items():
                flatten(f"{prefix}.{k}", v, getattr(section, k, None))
        else:
            flat[prefix] = value

    for dotted, value in overrides.items():
        section: Any = cfg
        for p in dotted.split("."):
            section = getattr(section, p, None) if dataclasses.is_dataclass(section) else None
        flatten(dotted, value, section)
    for dotted, value in flat.items():
        node = data
        parts = dotted.split(".")
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"override '{dotted}': '{p}' is not a config section. Sections: "
                                  f"{sorted(k for k, v in node.items() if isinstance(v, dict))}")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"override '{dotted}': unknown key '{parts[-1]}'. Valid keys: {sorted(node)}")
        node[parts[-1]] = value
    return from_dict(type(cfg), data, "overrides")
