"""A small generated dataset in the ``folder`` adapter's layout, for tests and benchmarks.

Pale pink "tissue" with dark purple disks ("nuclei", mask value 1) and, on every other image, a large
pale ellipse ("gland", mask value 2). Not pathology: only for exercising the pipeline quickly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_folder_dataset(root: str | Path, n: int = 8, size: int = 96, seed: int = 0) -> dict:
    """Write ``n`` image/mask PNG pairs under ``root/images`` and ``root/masks``; return the ``folder``
    source options that read them (label map, mpp, patient regex)."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        img = np.full((size, size, 3), (235, 200, 225), np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if i % 2 == 0:
            g = (yy - size // 2) ** 2 / (0.1 * size * size) + (xx - size // 2) ** 2 / (0.055 * size * size) < 1
            img[g] = (250, 170, 200)
            mask[g] = 2
        for _ in range(max(6, size * size // 1500)):
            cy, cx = rng.integers(8, size - 8, 2)
            d = (yy - cy) ** 2 + (xx - cx) ** 2 < int(rng.integers(9, 30))
            img[d] = (70, 40, 130)
            mask[d] = 1
        noise = rng.integers(-12, 13, img.shape)
        img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"case{i:03d}_img.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i:03d}_img.png")
    return {"root": str(root), "label_map": {1: "nuclei", 2: "gland"}, "mpp": 0.5, "patient_regex": r"case(\d+)"}
