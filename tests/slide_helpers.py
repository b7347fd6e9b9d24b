"""Shared pieces of the slide tests (``test_slide_*.py``): the synthetic fixture slide's layout (known
mpp, shapes in level-0 pixels), a geometry-only stub model and a reader for the written TIFF levels.
The ``slide`` and ``one_thread`` fixtures are in ``conftest.py``."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import tifffile
import torch

from pathsegmentor.slide.synthetic import SlideSpec

MPP0 = 0.25
# level 0 2048x1536 at 0.25 µm/px; level 1 (0.5 µm/px) is the pathsegmentor-test working level.
# Shapes in level-0 pixels. The disk at y=512 and the square spanning y 500..532 straddle the
# 256-row analysis strip boundary (working row 256 = level-0 row 512).
DISKS = [(500.0, 600.0, 24.0), (900.0, 800.0, 30.0), (700.0, 512.0, 20.0)]
SQUARES = [(1000.0, 400.0, 1040.0, 440.0), (1100.0, 500.0, 1160.0, 532.0)]
TISSUE = [(256.0, 256.0, 1280.0, 1280.0)]


def slide_spec(**kw) -> SlideSpec:
    base = dict(height=1536, width=2048, mpp=MPP0, levels=3, tissue=TISSUE, disks=DISKS, squares=SQUARES)
    base.update(kw)
    return SlideSpec(**base)


class DarkStub:
    """A 'model' whose probability is 1 on dark (drawn-object) pixels: geometry tests only."""

    name = "dark-stub"

    def __init__(self, mpp: float = 0.5, size: int = 128, overlap: int = 32) -> None:
        from pathsegmentor.modeling.inference_config import InferenceConfig

        self.config = SimpleNamespace(preprocess=SimpleNamespace(mpp=mpp, input_size=size, structure_mpp={}),
                                      inference=InferenceConfig(tile_overlap=overlap),
                                      to_dict=lambda: {"stub": [mpp, size, overlap]})
        self.calls = 0

    def state_dict(self):
        return {}

    def to(self, device):
        return self

    def encode_text(self, prompts):
        return torch.zeros(len(prompts), 1)

    def predict_window(self, window, text_emb, points, boxes, hires):
        self.calls += 1
        p = (window.astype(np.float32).mean(-1) < 150).astype(np.float32)
        n = text_emb.shape[0]
        return np.repeat(p[None], n, 0), np.ones(n, np.float32)


def tiff_levels(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as t:
        return [lv.asarray() for lv in t.series[0].levels]

