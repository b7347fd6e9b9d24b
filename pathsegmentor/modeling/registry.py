"""Model registry: variants defined by YAML configs in ``configs/models`` (``list_models``,
``get_model_config``). Building is :mod:`.build`; ``create_model`` / ``from_pretrained`` are in :mod:`.factory`."""
from __future__ import annotations

from pathlib import Path

from ..resources import configs_dir
from .config import ModelConfig


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
