"""Helpers of the training tests: the recipe they train, a training command run in a subprocess, a run's weights."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST_RECIPE = REPO / "configs" / "train" / "test.yaml"


def run_cli(args: list[str], *, launcher: list[str] | None = None, module: str = "pathsegmentor.training",
            timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = (launcher or [sys.executable]) + ["-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def weights(d: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(d / "model" / "model.safetensors"))
