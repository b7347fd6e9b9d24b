"""``mpp="auto"``: estimate the pixel size (µm/px) of an H&E image from the size of its nuclei.

Method (classical haematoxylin nucleus detector at a canonical scale, solved for a fixed point):

1. For a trial pixel size ``m``, resample the image to :data:`CANONICAL_MPP` (0.5 µm/px) as if it
   were ``m`` µm/px (at most :data:`MAX_SIDE` px a side, a central crop).
2. Haematoxylin channel (``skimage.color.rgb2hed``), Gaussian σ = 1 px, Otsu threshold, opening,
   holes filled, connected components of 3-400 µm²: the nuclei; ``d(m)``: their median equivalent
   diameter in µm.
3. At the true pixel size, ``d`` is the typical nucleus diameter :data:`NUCLEUS_DIAMETER_UM`; a wrong
   ``m`` scales it by about ``(m / m_true) ** SLOPE``. Iterate ``m <- m * (D / d(m)) ** (1 / SLOPE)``
   from 0.5 µm/px until it moves by less than 1 %.

``NUCLEUS_DIAMETER_UM``, ``SLOPE`` and the calibrated spread ``CALIBRATION_LOG_STD`` were fitted on the
*training* split images only (MoNuSeg, GlaS, CoNSeP; ``python bench/mpp_auto.py --fit``); the held-out
figures are in ``docs/MPP_AUTO.md``. The estimate is scale-covariant (an image resampled by ``s`` gives
``m / s``), but nucleus size varies with tissue, so its uncertainty is large: it is reported, and a
run that depends on it says so. The model is not used: no trained-model variant was measured.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

CANONICAL_MPP = 0.5
MAX_SIDE = 768
# fitted on the training split (bench/mpp_auto.py --fit); see docs/MPP_AUTO.md
NUCLEUS_DIAMETER_UM = 4.51
SLOPE = 0.66
CALIBRATION_LOG_STD = 0.18
MIN_NUCLEI = 50
MAX_RELATIVE_UNCERTAINTY = 0.6
METHOD = ("haematoxylin nucleus sizes (rgb2hed + Otsu + labelling) at a canonical 0.5 µm/px, fixed point "
          "against a typical nucleus diameter fitted on training images")


class MppEstimateError(ValueError):
    """The pixel size cannot be estimated reliably from this image; the message says why and the fix."""


@dataclass(frozen=True)
class MppEstimate:
    """An estimated pixel size: ``mpp`` (µm/px) with the one-sigma range ``[low, high]``
    (``relative_uncertainty`` = ``high / mpp - 1``), from ``nuclei`` detected objects."""

    mpp: float
    low: float
    high: float
    relative_uncertainty: float
    nuclei: int
    median_diameter_um: float
    iterations: int
    method: str = METHOD

    def describe(self) -> str:
        return (f"mpp estimated from the image: {self.mpp:.3g} µm/px (one-sigma range {self.low:.3g}-"
                f"{self.high:.3g}, ±{100 * self.relative_uncertainty:.0f} %) from {self.nuclei} nuclei; "
                f"pass --mpp X if the pixel size is known")

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(rgb).resize(size, resample))


def nucleus_diameters(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """Equivalent diameters (µm, ``float [n]``) of the haematoxylin objects of ``uint8 [H, W, 3]`` RGB
    read as ``mpp`` µm/px (steps 1-2 of the module docstring)."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu

    scale = mpp / CANONICAL_MPP
    side = int(MAX_SIDE / scale)  # input pixels that become MAX_SIDE canonical pixels
    h, w = rgb.shape[:2]
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    im = _resize(np.ascontiguousarray(rgb[y0:y0 + side, x0:x0 + side]), scale)
    if min(im.shape[:2]) < 16:
        return np.zeros(0)
    hema = ndi.gaussian_filter(rgb2hed(im)[..., 0], 1.0)
    if float(hema.max() - hema.min()) < 1e-6:
        return np.zeros(0)
    mask = ndi.binary_fill_holes(ndi.binary_opening(hema > threshold_otsu(hema)))
    lab, _ = ndi.label(mask)
    area = np.bincount(lab.ravel())[1:] * CANONICAL_MPP ** 2
    area = area[(area >= 3.0) & (area <= 400.0)]
    return np.sqrt(4.0 * area / math.pi)


def _diameters(images: Sequence[np.ndarray], mpp: float) -> np.ndarray:
    parts = [nucleus_diameters(im, mpp) for im in images]
    return np.concatenate(parts) if parts else np.zeros(0)


def estimate_mpp(images: np.ndarray | Sequence[np.ndarray], *, start: float = 0.5,
                 max_iterations: int = 10) -> MppEstimate:
    """Estimate the pixel size of ``images`` (one ``uint8 [H, W, 3]`` RGB image, or several regions of one
    slide at the same pixel size), in µm/px.

    Raises:
        MppEstimateError: too few nuclei found, or the fixed point did not settle in ``(0.05, 5)`` µm/px;
            the message names the fix (``--mpp X`` / ``mpp=X``).
    """
    if isinstance(images, np.ndarray):
        images = [images]
    images = [np.asarray(im) for im in images]
    for im in images:
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise ValueError(f"estimate_mpp needs uint8 [H, W, 3] RGB images; got {im.dtype} {im.shape}.")
    m, d = float(start), np.zeros(0)
    it = 0
    for it in range(1, max_iterations + 1):
        d = _diameters(images, m)
        if len(d) < MIN_NUCLEI:
            break
        new = min(5.0, max(0.05, m * (NUCLEUS_DIAMETER_UM / float(np.median(d))) ** (1.0 / SLOPE)))
        moved, m = abs(math.log(new / m)), new
        if moved < 0.01:
            break
    fix = "pass the pixel size with --mpp X (mpp=X in Python), e.g. 0.25 for a 40x scan, 0.5 for 20x"
    if len(d) < MIN_NUCLEI:
        raise MppEstimateError(f"mpp auto: only {len(d)} nuclei found at a trial {m:.3g} µm/px (need "
                               f"{MIN_NUCLEI}): too little tissue, or not H&E, to estimate the pixel size; {fix}.")
    if not 0.05 < m < 5.0:
        raise MppEstimateError(f"mpp auto: the estimate ran out of the plausible range (0.05-5 µm/px, got "
                               f"{m:.3g}); {fix}.")
    d = _diameters(images, m)
    # spread of the calibration (tissue-to-tissue) plus the sampling error of the median, in log mpp
    sampling = 1.2533 * float(np.std(np.log(d))) / math.sqrt(len(d))
    log_sd = math.hypot(CALIBRATION_LOG_STD, sampling) / SLOPE
    rel = math.exp(log_sd) - 1.0
    if rel > MAX_RELATIVE_UNCERTAINTY:
        raise MppEstimateError(f"mpp auto: the estimate {m:.3g} µm/px is too uncertain (±{100 * rel:.0f} %); {fix}.")
    return MppEstimate(mpp=m, low=m * math.exp(-log_sd), high=m * math.exp(log_sd), relative_uncertainty=rel,
                       nuclei=int(len(d)), median_diameter_um=float(np.median(d)), iterations=it)
