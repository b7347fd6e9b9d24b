"""Where our files live: shipped configs, model weights and sample tiles, and the user cache.

In a checkout ``pathsegmentor/configs`` is a link to the repository's ``configs/``; in an installed
wheel it is a copy. Nothing here imports anything but the standard library, so every layer
(modeling, inference, data_builders) can ask for a path without importing another layer.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_WEIGHTS = PACKAGE_DIR / "weights"
SAMPLES_DIR = PACKAGE_DIR / "samples"


def configs_dir() -> Path:
    """The configs shipped with the package (models, ontology, training and dataset recipes):
    ``pathsegmentor/configs``, in a checkout a link to the repository's ``configs/`` and in an installed
    wheel a copy of it; a checkout made without symlink support falls back to ``configs/`` itself."""
    packaged = PACKAGE_DIR / "configs"
    if packaged.is_dir():
        return packaged
    return PACKAGE_DIR.parent / "configs"


def cache_dir() -> Path:
    """``$PATHSEGMENTOR_HOME`` or ``~/.cache/pathsegmentor`` (``$XDG_CACHE_HOME`` respected)."""
    env = os.environ.get("PATHSEGMENTOR_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pathsegmentor"
