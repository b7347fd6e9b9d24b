"""Atomic Accelerate checkpoints (``save_state`` into a temporary folder, then rename) and the
checks that make ``--resume`` continue exactly the run that wrote them."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..modeling.config import ConfigError


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete ``step_*`` folder (one with ``trainer_state.json``), or None."""
    if not ckpt_root.is_dir():
        return None
    done = sorted(p for p in ckpt_root.glob("step_*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


def check_resume_compatible(ckpt: Path, cfg) -> dict[str, Any]:
    """``trainer_state.json`` of ``ckpt``; ConfigError when it was written for another model."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    if state.get("model") != cfg.model.name or state.get("model_overrides", {}) != cfg.model.overrides:
        raise ConfigError(
            f"Cannot resume from '{ckpt}': it was trained with model '{state.get('model')}' "
            f"(overrides {state.get('model_overrides')}), this run uses '{cfg.model.name}' "
            f"(overrides {cfg.model.overrides}). Use a new output_dir or the same model.")
    ema = float(cfg.train.ema_decay)
    if "ema_decay" in state and float(state["ema_decay"]) != ema:  # checkpoints before the key: not checked
        raise ConfigError(
            f"Cannot resume from '{ckpt}': it was written with train.ema_decay={state['ema_decay']}, this run sets "
            f"train.ema_decay={ema}. Resume with train.ema_decay={state['ema_decay']} (the weight average goes on from "
            f"the checkpoint) or use a new output_dir.")
    return state


def save_checkpoint(accelerator, ckpt_root: Path, step: int, cfg) -> Path:
    """``save_state`` into a temporary folder, then rename: a kill during a save leaves the previous
    checkpoint as the latest complete one. Keeps the newest ``cfg.train.keep_checkpoints``."""
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f".tmp_step_{step:07d}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps(
            {"step": step, "model": cfg.model.name, "model_overrides": cfg.model.overrides,
             "ema_decay": float(cfg.train.ema_decay)}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        done = sorted(p for p in ckpt_root.glob("step_*") if (p / "trainer_state.json").is_file())
        for old in done[:-max(1, cfg.train.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
