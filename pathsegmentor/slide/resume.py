"""Resume state of a slide run: the staging folder name, the state file's version, the model
fingerprint stored in it, the check of ``out`` (fresh, resumable or refused) and atomic JSON writes."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .reader import SlideError


STATE_VERSION = 2  # 2: every tile gated by its presence before blending


PARTIAL = ".partial"


def _model_fingerprint(model) -> str:
    import torch

    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in model.state_dict().items():
            h.update(name.encode())
            if p.numel():
                h.update(np.float64(p.double().sum().item()).tobytes())
    return h.hexdigest()[:16]


def _check_out(out: Path, state: dict[str, Any], resume: bool) -> str:
    """Decide what to do with ``out``: 'fresh' or 'resume'; raise SlideError for anything else."""
    partial = out / PARTIAL
    if out.exists() and not out.is_dir():
        raise SlideError(f"--out '{out}' exists and is not a directory; choose a directory path.")
    if not out.exists():
        return "fresh"
    entries = [e.name for e in out.iterdir()]
    state_file = partial / "state.json"
    if state_file.exists():
        try:
            old = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if not resume:
            raise SlideError(f"'{out}' holds an interrupted slide run; pass --resume to continue it "
                             f"(segment_slide(..., resume=True)), or choose another --out / delete '{out}'.")
        if old is None or old.get("version") != STATE_VERSION:
            raise SlideError(f"'{state_file}' is unreadable or from another version; delete '{out}' and rerun.")
        diff = sorted(k for k in set(old) | set(state) if old.get(k) != state.get(k))
        if diff:
            details = "; ".join(f"{k}: was {old.get(k)!r}, now {state.get(k)!r}" for k in diff)
            raise SlideError(f"--resume: '{out}' holds a run with other settings ({details}). Rerun with the "
                             f"same settings, or choose another --out.")
        others = [e for e in entries if e != PARTIAL]
        if others:
            raise SlideError(f"'{out}' holds an interrupted run and other files ({others[:5]}); move them away.")
        return "resume"
    if not entries or entries == [PARTIAL]:  # empty, or a staging folder that never got its state
        return "fresh"
    if (out / "summary.json").exists():
        try:
            ours = json.loads((out / "summary.json").read_text()).get("pathsegmentor_slide")
        except (OSError, json.JSONDecodeError, AttributeError):
            ours = None
        if ours:
            raise SlideError(f"'{out}' already holds a finished slide run; choose another --out (or delete it).")
    raise SlideError(f"--out '{out}' is not empty and is not a pathsegmentor slide run ({sorted(entries)[:5]}); "
                     f"choose an empty or new directory.")


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)

