"""Synthetic dark pigment pasted into training crops: the "dark but not a nucleus" negative.

Pigment deposits (anthracotic carbon, melanin, haemosiderin, tissue-marking ink) are darker than any nucleus and
often cover a fifth of a tile; a model that learned "dark = nucleus" marks them all. The training corpus has none,
so :func:`paste_pigment` draws irregular, clumped deposits (two octaves of smoothed noise, thresholded) in a dark
brown-black colour with grain and a soft edge, and clears every target and instance under them: on pigment, every
prompt's answer is "not here". A pure function of the generator it is given (exact resume).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["check_pigment", "paste_pigment", "pigment_alpha"]


def check_pigment(prob: float, coverage) -> tuple[float, float]:
    """Validate a recipe's ``data.pigment_prob`` (chance, [0, 1]) and ``data.pigment_coverage`` (``[low, high]``,
    0 < low <= high < 1); returns the coverage as a tuple. Raises ``ValueError`` naming both values and the fix."""
    lo, hi = (float(v) for v in coverage)
    if not (0.0 <= prob <= 1.0 and 0.0 < lo <= hi < 1.0):
        raise ValueError(f"data.pigment_prob={prob} / data.pigment_coverage={list(coverage)}: the chance must lie in "
                         "[0, 1] and the coverage be [low, high] with 0 < low <= high < 1 "
                         "(e.g. data.pigment_coverage=[0.05, 0.35])")
    return lo, hi


def _smooth_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """``float32 [size, size]``: uniform noise on a ``cells x cells`` grid, upsampled bicubically."""
    grid = rng.random((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC), dtype=np.float32)


def pigment_alpha(size: int, coverage: float, rng: np.random.Generator) -> np.ndarray:
    """Opacity ``float32 [size, size]`` in [0, 1] of clumped deposits covering about ``coverage`` (0-1) of the crop.

    Coarse noise sets where the clumps are, fine noise makes their borders ragged; the field is cut at its
    ``1 - coverage`` quantile and the edge softened by about one pixel.
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"pigment coverage must lie in (0, 1), got {coverage}")
    coarse = int(rng.integers(3, 7))
    field = _smooth_noise(size, coarse, rng) + 0.35 * _smooth_noise(size, coarse * 6, rng)
    hard = (field >= np.quantile(field, 1.0 - coverage)).astype(np.float32)
    soft = Image.fromarray(hard * 255.0, mode="F").convert("L").filter(ImageFilter.GaussianBlur(1.0))
    return np.asarray(soft, dtype=np.float32) / 255.0


def paste_pigment(image: np.ndarray, targets: dict[str, np.ndarray], instances: dict[str, np.ndarray],
                  rng: np.random.Generator, coverage: tuple[float, float] = (0.05, 0.35)
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Paste one pigment field into a crop.

    ``image uint8 [H, W, 3]`` (square), ``targets`` label -> ``uint8 [H, W]`` 0/1, ``instances`` label -> ``int32
    [H, W]`` ids; ``coverage``: the range the covered fraction is drawn from. Returns new arrays (inputs untouched):
    the composited image, and targets and instances cleared wherever the pigment is more than half opaque.
    """
    size = image.shape[0]
    alpha = pigment_alpha(size, float(rng.uniform(*coverage)), rng)
    value = rng.uniform(25.0, 80.0)
    colour = np.array([value * rng.uniform(1.05, 1.5), value, value * rng.uniform(0.9, 1.3)], dtype=np.float32)
    grain = 1.0 + 0.12 * rng.standard_normal((size, size, 1)).astype(np.float32)
    pigment = np.clip(colour[None, None, :] * grain, 0.0, 255.0)
    a = alpha[..., None]
    out = np.clip(image.astype(np.float32) * (1.0 - a) + pigment * a, 0, 255).round().astype(np.uint8)
    covered = alpha > 0.5
    targets = {lb: np.where(covered, 0, m).astype(m.dtype) for lb, m in targets.items()}
    instances = {lb: np.where(covered, 0, m).astype(m.dtype) for lb, m in instances.items()}
    return out, targets, instances
