"""Training recipes: the sections every objective shares, and YAML + ``key=value`` loading.

A recipe is a YAML file mapped onto a dataclass (``TrainConfig`` for segmentation, ``DistillConfig``
for CellSAM distillation); ``key.sub=value`` overrides from the command line are applied before the
mapping, so an unknown key is refused with the valid ones (:func:`pathsegmentor.modeling.config.from_dict`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import yaml

from ..modeling.config import ConfigError, from_dict
from ..resources import configs_dir

T = TypeVar("T")


@dataclass
class ModelSection:
    name: str = "pathsegmentor-test"  # registered name or a model dir
    init_from: str = ""  # weights to start from: a model dir / registered name with weights / SAM .pth
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    lr_scale: dict[str, float] = field(default_factory=dict)  # part (or "other") -> multiplier of lr
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0


@dataclass
class LoopConfig:
    steps: int = 100
    batch_size: int = 4  # per process
    grad_accum: int = 1
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16 (GPU); fp32 on CPU
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    stop_after: int = 0  # end this leg after this step's checkpoint (no final model; continue with --resume)
    threads: int = 0  # torch.set_num_threads on CPU (0: leave default)
    ema_decay: float = 0.0  # > 0: the final model is the moving average of the weights (training/ema.py)


def load_recipe(cls: Callable[..., T], path: str | Path | None, overrides: Sequence[str] = ()) -> tuple[T, Path | None]:
    """Read a YAML recipe into ``cls`` after applying ``key.sub=value`` overrides.

    Returns ``(config, recipe_dir)``; ``recipe_dir`` (None without a file) is where relative data paths
    of the recipe are taken from when they do not exist from the working directory.

    Raises:
        FileNotFoundError: the recipe is missing (the message lists the recipes shipped with the package).
        ConfigError: an override is not ``key=value`` or a key is unknown (the valid keys are listed).
    """
    data: dict[str, Any] = {}
    base = None
    if path:
        path = Path(path)
        if not path.is_file():
            shipped = sorted(str(f) for f in (configs_dir() / "train").glob("*.yaml"))
            raise FileNotFoundError(f"Training config not found: '{path}'. Recipes shipped with the package: "
                                    f"{shipped}; copy one and edit it, or pass key=value overrides.")
        data = yaml.safe_load(path.read_text()) or {}
        base = path.resolve().parent
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not key=value (e.g. train.steps=100)")
        key, val = ov.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{ov}': '{p}' is not a section")
        node[parts[-1]] = yaml.safe_load(val)
    return from_dict(cls, data, where=str(path or "overrides")), base


def resolve_data_path(value: str, recipe_dir: Path | None) -> str:
    """A relative path that does not exist from the working directory is taken relative to the recipe."""
    if value and recipe_dir is not None and not Path(value).is_absolute() and not Path(value).exists():
        return str((recipe_dir / value).resolve())
    return value


def lr_lambda(cfg: OptimConfig, total: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` (or constant): a multiplier of ``lr`` per step."""
    if cfg.schedule not in ("cosine", "constant"):
        raise ConfigError(f"optim.schedule '{cfg.schedule}' unknown. Available: ['cosine', 'constant']")

    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f
