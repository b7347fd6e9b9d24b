"""Model loading for the CLI: the default model name, an early check of ``--model`` (registered name,
model directory or hub id) before anything heavy runs, and :func:`load_model`, which turns loading
errors into :class:`~pathsegmentor.cli.errors.RunError` and says where the weights came from."""
from __future__ import annotations

from pathlib import Path

from .errors import RunError, UsageError

DEFAULT_MODEL = "pathsegmentor-tiny"


def _check_model_spec(spec: str) -> None:
    """Reject an unknown model name before anything heavy runs (a dir or a hub id ``org/name`` pass)."""
    from ..modeling.registry import list_models

    p = Path(spec).expanduser()
    if p.is_dir() or spec in list_models():
        return
    if p.exists():
        raise UsageError(f"--model '{spec}' is a file; pass a registered model name or a directory holding "
                         f"config.json + model.safetensors (from save_pretrained).")
    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        return  # a Hugging Face hub id; from_pretrained resolves it (or says how, offline)
    raise UsageError(f"Unknown model '{spec}'. Available: {list_models()}. Or pass a model directory "
                     f"(config.json + model.safetensors) or a hub id (org/name).")


def _weights_location(spec: str) -> str:
    """Where ``from_pretrained(spec)`` takes its weights from, for messages (first hit in order)."""
    from ..modeling.registry import get_model_config, list_models
    from ..modeling.weights import CONFIG_NAME, PACKAGE_WEIGHTS, WEIGHTS_NAME, cache_dir

    p = Path(spec).expanduser()
    if p.is_dir():
        return str(p.resolve())
    if spec in list_models():
        for d in (PACKAGE_WEIGHTS / spec, cache_dir() / spec):
            if (d / CONFIG_NAME).is_file() and (d / WEIGHTS_NAME).is_file():
                return str(d)
        ckpt = get_model_config(spec).pretrained.get("sam_checkpoint")
        if ckpt:
            for d in (cache_dir(), cache_dir() / spec):
                if (d / ckpt).is_file():
                    return f"{d / ckpt} (official SAM checkpoint)"
    return f"hub '{spec}'"


def load_model(spec: str, device: str | None = None):
    """``from_pretrained(spec)`` with errors turned into :class:`RunError`; returns (model, source)."""
    from ..modeling.config import ConfigError
    from ..segmentor import from_pretrained
    from ..modeling.weights import CheckpointError, WeightsNotFoundError

    _check_model_spec(spec)
    try:
        model = from_pretrained(spec, device=device)
    except (WeightsNotFoundError, CheckpointError, ConfigError, OSError) as e:
        raise RunError(f"Cannot load model '{spec}':\n{e}\nOr choose another model with --model NAME_OR_DIR "
                       f"(see 'pathsegmentor list-models').") from None
    model.eval()
    return model, _weights_location(spec)

