"""Weights I/O: ``save_pretrained`` / ``from_pretrained`` and official SAM checkpoints.

Resolution order of ``from_pretrained(name_or_dir)`` (:func:`load_pretrained`):
1. a local directory holding ``config.json`` + ``model.safetensors``;
2. for a registered name: the weights shipped inside the package, then the cache
   (``$PATHSEGMENTOR_HOME``, default ``~/.cache/pathsegmentor``), then — for SAM variants — an
   official SAM ``.pth`` in the cache, then the variant's hub id;
3. anything else is taken as a Hugging Face hub id.
Offline (``HF_HUB_OFFLINE=1``) the hub step is skipped and the error names every place looked at and
how to fill one. Nothing here runs at import time.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..resources import PACKAGE_WEIGHTS, cache_dir
from .config import ModelConfig, apply_overrides

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class WeightsNotFoundError(FileNotFoundError):
    """No weights for a model name were found; the message lists where we looked and the fix."""


class CheckpointError(ValueError):
    """A checkpoint is unsafe or does not match the model; the message names the keys."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or \
        os.environ.get("PATHSEGMENTOR_OFFLINE", "0").lower() in ("1", "true", "yes")


def _state_to_save(model) -> dict[str, torch.Tensor]:
    frozen_text = getattr(model.text_encoder, "frozen", True)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if not (frozen_text and k.startswith("text_encoder."))}


def save_pretrained(model, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` (atomic per file).

    A frozen text tower is not saved (it is rebuilt from ``config.text_encoder``); a fine-tuned one is.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = _state_to_save(model)
    tmp_w = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp_w), metadata={"format": "pt", "model": model.config.name})
    tmp_c = directory / (CONFIG_NAME + ".tmp")
    tmp_c.write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    os.replace(tmp_w, directory / WEIGHTS_NAME)
    os.replace(tmp_c, directory / CONFIG_NAME)
    return directory


def _load_state_strict(model, state: dict[str, torch.Tensor], source: str, *, allow_missing_prefixes=()) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(allow_missing_prefixes)]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shape:
        lines = [f"Checkpoint '{source}' does not match model '{model.config.name}':"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
        if shape:
            lines.append(f"  shape mismatches ({len(shape)}): {shape[:10]}")
        lines.append("  Check that the checkpoint was saved from this variant (pathsegmentor info MODEL).")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=False)


def load_model_dir(directory: str | Path, *, model_cls: type, overrides: dict[str, Any] | None = None,
                   device: str | None = None):
    """Load a model saved by :func:`save_pretrained`, built as ``model_cls`` (see :func:`.build.build_model`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .build import build_model

    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.is_file():
        raise WeightsNotFoundError(f"'{directory}' has no {CONFIG_NAME}; a model directory holds {CONFIG_NAME} "
                                   f"and {WEIGHTS_NAME} as written by save_pretrained().")
    if not w_path.is_file():
        pth = sorted(directory.glob("*.pth")) + sorted(directory.glob("*.pt")) + sorted(directory.glob("*.bin"))
        hint = f" Found {pth[0].name}: pickled checkpoints are not loaded from model dirs; convert it with " \
               f"save_pretrained()." if pth else ""
        raise WeightsNotFoundError(f"'{directory}' has no {WEIGHTS_NAME}.{hint}")
    try:
        cfg = ModelConfig.from_dict(json.loads(cfg_path.read_text()), where=str(cfg_path))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    model = build_model(cfg, model_cls)
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{w_path}: not a valid safetensors file ({e}); re-save or re-download it.") from e
    frozen_text = getattr(model.text_encoder, "frozen", True)
    _load_state_strict(model, state, str(w_path), allow_missing_prefixes=("text_encoder.",) if frozen_text else ())
    model.eval()
    if device:
        model.to(device)
    return model


def _unpickling_reason(error: Exception) -> str:
    """The informative line of torch's weights-only refusal (which global it met), without terminal codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(error).splitlines()]
    lines = [ln for ln in lines if ln]
    hit = next((ln for ln in lines if "Unsupported global" in ln or "WeightsUnpickler error" in ln),
               lines[0] if lines else type(error).__name__)
    return hit.split(". ")[0][:200]  # the first sentence names the global


def safe_torch_load(path: str | Path) -> dict[str, torch.Tensor]:
    """``torch.load(map_location="cpu", weights_only=True)``; a checkpoint with pickled code is refused."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"Checkpoint file not found: '{path}'")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"Refusing to load '{path}': it contains pickled Python code/objects, not only tensors "
            f"({_unpickling_reason(e)}). Loading it could execute arbitrary code. Use the "
            f"official checkpoint, or re-save its state_dict (tensors only) from a trusted environment."
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"Cannot read checkpoint '{path}': {e}. The file is truncated or not a "
                              f"PyTorch checkpoint.") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"'{path}' is not a state dict of tensors (got {type(obj).__name__}).")
    return obj


SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


def load_sam_checkpoint(model, path: str | Path) -> list[str]:
    """Load an official SAM checkpoint (``sam_vit_b_01ec64.pth`` layout) into ``model``.

    Every checkpoint key must exist in the model with the same shape, and every SAM-owned key of the
    model must be in the checkpoint; mismatches are reported by name. Returns the model keys the
    checkpoint does not cover (our additions: text adapter, hires path, presence head), which keep
    their initial values.
    """
    own_loader = getattr(model, "load_sam_checkpoint", None)
    if callable(own_loader):  # models with their own SAM key layout (CellSAM: teacher under a prefix)
        return own_loader(path)
    state = safe_torch_load(path)
    own = model.state_dict()
    ours_only = ("mask_decoder.hires_", "mask_decoder.presence_head.", "prompt_adapter.", "text_encoder.")
    unexpected = [k for k in state if k not in own]
    shape = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in state if k in own and own[k].shape != state[k].shape]
    missing = [k for k in own if k.startswith(SAM_PREFIXES) and not k.startswith(ours_only) and k not in state]
    if unexpected or shape or missing:
        raise CheckpointError(
            f"SAM checkpoint '{path}' does not match model '{model.config.name}' "
            f"(image encoder variant {model.config.image_encoder.variant}):\n"
            f"  unexpected keys: {unexpected[:20]}\n  missing keys: {missing[:20]}\n  shape mismatches: {shape[:10]}\n"
            f"  Use the checkpoint of the same variant (vit_b: sam_vit_b_01ec64.pth, vit_l: sam_vit_l_0b3195.pth, "
            f"vit_h: sam_vit_h_4b8939.pth).")
    model.load_state_dict(state, strict=False)
    return [k for k in own if k not in state]


def _hub_download(repo_id: str, tried: list[str], name: str | None = None) -> Path:
    name = name or repo_id
    if _offline():
        raise WeightsNotFoundError(_not_found_message(name, tried + [f"hub '{repo_id}' (skipped: offline)"]))
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
                                      cache_dir=str(cache_dir() / "hub")))
    except Exception as e:  # noqa: BLE001 - any hub failure becomes the same actionable message
        raise WeightsNotFoundError(_not_found_message(name, tried + [f"hub '{repo_id}' ({type(e).__name__}: "
                                                                        f"{str(e).splitlines()[0][:160]})"])) from e


def _not_found_message(name: str, tried: list[str], extra: str = "") -> str:
    lines = [f"No weights found for '{name}'. Looked in:"] + [f"  - {t}" for t in tried]
    lines.append(f"Fix: put config.json + model.safetensors in {cache_dir() / name} (or pass that directory), "
                 f"or set PATHSEGMENTOR_HOME to where they are.{extra}")
    return "\n".join(lines)


def load_pretrained(name_or_dir: str | Path, *, model_cls: type, overrides: dict[str, Any] | None = None,
                    device: str | None = None):
    """Load a model by local dir, registered name, or hub id (see module docstring), built as ``model_cls``.
    Users call :func:`pathsegmentor.from_pretrained` / ``PathSegmentor.from_pretrained``."""
    from .build import build_model
    from .registry import get_model_config, list_models

    p = Path(str(name_or_dir)).expanduser()
    if p.is_dir():
        return load_model_dir(p, model_cls=model_cls, overrides=overrides, device=device)
    name = str(name_or_dir)
    tried: list[str] = []
    if name in list_models():
        for d in (PACKAGE_WEIGHTS / name, cache_dir() / name):
            tried.append(str(d))
            if (d / CONFIG_NAME).is_file() and (d / WEIGHTS_NAME).is_file():
                return load_model_dir(d, model_cls=model_cls, overrides=overrides, device=device)
        cfg = get_model_config(name)
        sam_ckpt = cfg.pretrained.get("sam_checkpoint")
        if sam_ckpt:
            for d in (cache_dir(), cache_dir() / name):
                f = d / sam_ckpt
                tried.append(str(f))
                if f.is_file():
                    if overrides:
                        cfg = apply_overrides(cfg, overrides)
                    model = build_model(cfg, model_cls)
                    load_sam_checkpoint(model, f)
                    model.eval()
                    return model.to(device) if device else model
        hub_id = cfg.pretrained.get("hub_id")
        if hub_id:
            try:
                return load_model_dir(_hub_download(hub_id, tried, name=name), model_cls=model_cls, overrides=overrides, device=device)
            except WeightsNotFoundError as e:
                extra = ""
                if sam_ckpt:
                    extra = (f"\nFor the SAM encoder alone: download {cfg.pretrained.get('sam_url')} on a "
                             f"connected machine and copy it to {cache_dir() / sam_ckpt}.")
                raise WeightsNotFoundError(str(e) + extra) from None
        raise WeightsNotFoundError(_not_found_message(name, tried))
    if "/" in name and not p.exists():
        return load_model_dir(_hub_download(name, [str(p) + " (not a local directory)"]), model_cls=model_cls,
                              overrides=overrides, device=device)
    raise WeightsNotFoundError(
        f"'{name}' is neither a local model directory, a registered model nor a hub id (org/name). "
        f"Registered models: {list_models()}")
