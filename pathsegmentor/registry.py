"""Model registry: variants defined by YAML configs in ``configs/models``; timm-style API."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import ModelConfig, apply_overrides

_PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"


def configs_dir() -> Path:
    """The configs shipped with the package (models, ontology, training and dataset recipes):
    ``pathsegmentor/configs``, in a checkout a link to the repository's ``configs/`` and in an installed
    wheel a copy of it; a checkout made without symlink support falls back to ``configs/`` itself."""
    if _PACKAGE_CONFIGS.is_dir():
        return _PACKAGE_CONFIGS
    return _PACKAGE_CONFIGS.parent.parent / "configs"


def _config_files() -> dict[str, Path]:
    d = configs_dir() / "models"
    files = sorted(d.glob("*.yaml")) + sorted(d.glob("*.json")) if d.is_dir() else []
    found: dict[str, Path] = {}
    for f in files:
        found.setdefault(f.stem, f)
    return found


def list_models() -> list[str]:
    """Names of the registered model variants, sorted."""
    return sorted(_config_files())


def get_model_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a registered variant; ``KeyError`` lists the available ones."""
    files = _config_files()
    if name not in files:
        raise KeyError(f"Unknown model '{name}'. Available: {sorted(files)}")
    cfg = ModelConfig.from_file(files[name])
    if cfg.name != name:
        raise ValueError(f"{files[name]}: config name '{cfg.name}' does not match its file name '{name}'")
    return cfg


def build_model(cfg: ModelConfig):
    """Instantiate a :class:`PathSegmentor` with random weights from a :class:`ModelConfig`."""
    from ._compat import ensure_torchvision

    ensure_torchvision()
    from segment_anything.modeling.prompt_encoder import PromptEncoder

    from .image_encoder import build_image_encoder
    from .mask_decoder import build_mask_decoder
    from .model import PathSegmentor
    from .prompt_adapter import TextPromptAdapter
    from .text_encoder import build_text_encoder

    pp, md = cfg.preprocess, cfg.mask_decoder
    if cfg.image_encoder.embed_dim != md.transformer_dim:
        raise ValueError(f"image_encoder.embed_dim ({cfg.image_encoder.embed_dim}) must equal "
                         f"mask_decoder.transformer_dim ({md.transformer_dim})")
    if pp.input_size % 16:
        raise ValueError(f"preprocess.input_size must be a multiple of 16, got {pp.input_size}")
    image_encoder = build_image_encoder(cfg.image_encoder, pp.input_size)
    text_encoder = build_text_encoder(cfg.text_encoder)
    grid = pp.input_size // 16
    prompt_encoder = PromptEncoder(embed_dim=md.transformer_dim, image_embedding_size=(grid, grid),
                                   input_image_size=(pp.input_size, pp.input_size), mask_in_chans=16)
    skip_c = getattr(image_encoder, "skip_channels", {}).get(4, 0)
    mask_decoder = build_mask_decoder(transformer_dim=md.transformer_dim, depth=md.depth, mlp_dim=md.mlp_dim,
                                      num_heads=md.num_heads, num_multimask_outputs=md.num_multimask_outputs,
                                      iou_head_depth=md.iou_head_depth, iou_head_hidden_dim=md.iou_head_hidden_dim,
                                      hires=md.hires, hires_dim=md.hires_dim, skip_channels=skip_c)
    adapter = TextPromptAdapter(text_dim=text_encoder.dim, embed_dim=md.transformer_dim,
                                num_tokens=cfg.prompt_adapter.num_tokens, hidden_dim=cfg.prompt_adapter.hidden_dim,
                                dropout=cfg.prompt_adapter.dropout)
    model_cls = PathSegmentor
    if cfg.image_encoder.type == "dual":  # CellSAM: the same parts plus mask fusion (pathsegmentor.cellsam)
        from .cellsam.model import CellSAM as model_cls
    model = model_cls(image_encoder=image_encoder, text_encoder=text_encoder, prompt_adapter=adapter,
                          mask_decoder=mask_decoder, prompt_encoder=prompt_encoder, config=cfg)
    freeze_unused_sam_parts(model)
    return model


# SAM parts our decoder never uses (single-mask output; no mask prompts; no IoU training): frozen so that
# every trainable parameter receives a gradient (DDP needs that) — they still load from SAM checkpoints.
UNUSED_SAM_PARTS = ("mask_decoder.output_hypernetworks_mlps.1.", "mask_decoder.output_hypernetworks_mlps.2.",
                    "mask_decoder.output_hypernetworks_mlps.3.", "mask_decoder.iou_prediction_head.",
                    "prompt_encoder.mask_downscaling.")


def freeze_unused_sam_parts(model) -> None:
    for name, p in model.named_parameters():
        if name.startswith(UNUSED_SAM_PARTS):
            p.requires_grad_(False)


def create_model(name: str, *, pretrained: bool = False, overrides: dict[str, Any] | None = None, **kwargs):
    """Build a registered variant (random weights unless ``pretrained``).

    Args:
        name: a name from :func:`list_models`.
        pretrained: load the variant's weights (see :func:`pathsegmentor.weights.from_pretrained`).
        overrides: dotted config keys to change, e.g. ``{"mask_decoder.hires": False}``.
    """
    if pretrained:
        from .weights import from_pretrained

        return from_pretrained(name, overrides=overrides, **kwargs)
    cfg = get_model_config(name)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return build_model(cfg)
