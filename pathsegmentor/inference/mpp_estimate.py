"""``mpp="auto"``: estimate the pixel size (µm/px) of an H&E image from its texture and nuclei.

Method (a regressor over scale-telling patch features, never silent):

1. Up to :data:`PATCHES` square patches (256 px, or the shortest side) are drawn over the image(s)
   with a fixed seed; each gives the features of :mod:`.mpp_features` (haematoxylin and eosin power
   spectra in log-frequency bins, stain statistics, haematoxylin object sizes in pixels).
2. A small MLP (:data:`REGRESSOR_FILE`, 20 KB) maps each patch's features to ``log mpp``. The image
   is also read resampled by the factors of :data:`TEST_SCALES` (each patch's estimate corrected back by its
   factor); the estimate is the median over all patches.
3. Its one-sigma range combines the regressor's error measured by grouped cross-validation on the
   training images (stored with the weights) with the spread of the patch estimates.

The regressor was fitted on the *training* split of MoNuSeg, GlaS and CoNSeP only, each image resampled
to many pixel sizes (0.35-2.5x), so the patch features alone, not the dataset, must tell the scale
(``python bench/mpp_auto.py --fit``); held-out figures are in ``docs/MPP_AUTO.md``. It has seen three
scanners: on an image from another scanner or stain the error can be larger than the reported range.
Refused (:class:`MppEstimateError`, with the fix) when too few haematoxylin objects are found (no
nuclei: blank, glass, not H&E), when the images are too small, or when the estimate is too uncertain.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import mpp_features as mf
from .image_io import scale_rgb

REGRESSOR_FILE = Path(__file__).with_name("mpp_regressor.safetensors")
PATCHES = 16
TEST_SCALES: tuple[float, ...] = (1 / 1.25, 1.0, 1.25)  # resampling factors read (chosen on train: bench/mpp_tta_cv.py)
MIN_NUCLEI = 50
MAX_RELATIVE_UNCERTAINTY = 0.6
METHOD = ("MLP regressor over haematoxylin/eosin power spectra and haematoxylin object sizes of 256 px "
          "patches (rgb2hed) read at 3 scales, fitted on resampled training images of MoNuSeg, GlaS and CoNSeP")
_FIX = "pass the pixel size with --mpp X (mpp=X in Python), e.g. 0.25 for a 40x scan, 0.5 for 20x"


class MppEstimateError(ValueError):
    """The pixel size cannot be estimated reliably from this image; the message says why and the fix."""


@dataclass(frozen=True)
class MppEstimate:
    """An estimated pixel size: ``mpp`` (µm/px) with the one-sigma range ``[low, high]``
    (``relative_uncertainty`` = ``high / mpp - 1``), from ``patches`` patches holding ``nuclei``
    haematoxylin objects."""

    mpp: float
    low: float
    high: float
    relative_uncertainty: float
    nuclei: int
    patches: int
    median_diameter_um: float
    method: str = METHOD

    def describe(self) -> str:
        return (f"mpp estimated from the image: {self.mpp:.3g} µm/px (one-sigma range {self.low:.3g}-"
                f"{self.high:.3g}, ±{100 * self.relative_uncertainty:.0f} %) from {self.patches} patches, "
                f"{self.nuclei} nuclei; pass --mpp X if the pixel size is known")

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class MppRegressor:
    """``float32 [N, FEATURES]`` patch features -> ``float [N]`` log mpp (an MLP in numpy; weights,
    feature standardisation and the cross-validated error from a safetensors file)."""

    def __init__(self, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
        if meta.get("features") != mf.VERSION:
            raise ValueError(f"mpp regressor was fitted on features '{meta.get('features')}', this code computes "
                             f"'{mf.VERSION}': refit it with `python bench/mpp_auto.py --fit`")
        self.t = tensors
        self.meta = meta
        self.cv_log_std = float(meta["cv_log_std"])

    @classmethod
    def load(cls, path: Path = REGRESSOR_FILE) -> "MppRegressor":
        from safetensors.numpy import load_file
        from safetensors import safe_open

        if not Path(path).is_file():
            raise FileNotFoundError(f"mpp regressor '{path}' is missing: reinstall pathsegmentor or refit it with "
                                    f"`python bench/mpp_auto.py --fit`")
        with safe_open(str(path), "np") as f:
            meta = dict(f.metadata() or {})
        return cls(load_file(str(path)), meta)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The mean over the file's members (``m0.layer0.weight``, ...: an ensemble of MLPs fitted with
        different seeds; a file without prefixes holds one MLP)."""
        t = self.t
        x = np.where(np.isnan(x), t["fill"], x)
        h0 = (x - t["mean"]) / t["std"]
        members = sorted({k.split(".")[0] for k in t if k.startswith("m") and ".layer" in k}) or [""]
        out = np.mean([self._mlp(h0, f"{m}." if m else "") for m in members], axis=0)
        return out + float(t["target_mean"][0])

    def _mlp(self, h: np.ndarray, prefix: str) -> np.ndarray:
        from scipy.special import erf

        t = self.t
        layers = sorted({int(k[len(prefix):].split(".")[0][5:]) for k in t
                         if k.startswith(prefix + "layer")})
        for i in layers:
            h = h @ t[f"{prefix}layer{i}.weight"].T + t[f"{prefix}layer{i}.bias"]
            if i != layers[-1]:
                h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))  # exact GELU, as torch's nn.GELU
        return h[:, 0]


@lru_cache(maxsize=1)
def default_regressor() -> MppRegressor:
    return MppRegressor.load()


def estimate_mpp(images: np.ndarray | Sequence[np.ndarray], *, patches: int = PATCHES, seed: int = 0,
                 regressor: MppRegressor | None = None, scales: Sequence[float] | None = None) -> MppEstimate:
    """Estimate the pixel size of ``images`` (one ``uint8 [H, W, 3]`` RGB image, or several regions of one
    slide at the same pixel size; sides of at least 128 px), in µm/px.

    ``scales`` (default :data:`TEST_SCALES`): the images are also read resampled by each factor ``f``
    (``patches`` patches per factor), each patch's estimate multiplied back by ``f``; the estimate is the
    median over all patches. The nuclei count is taken at scale 1.

    Raises:
        MppEstimateError: images too small, too few nuclei found, or the estimate too uncertain or
            outside ``(0.05, 5)`` µm/px; the message names the fix (``--mpp X`` / ``mpp=X``).
    """
    if isinstance(images, np.ndarray):
        images = [images]
    images = [np.asarray(im) for im in images]
    for im in images:
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise ValueError(f"estimate_mpp needs uint8 [H, W, 3] RGB images; got {im.dtype} {im.shape}.")
    scales = tuple(TEST_SCALES if scales is None else scales)
    if not scales or any(not 0.25 <= f <= 4.0 for f in scales) or 1.0 not in scales:
        raise ValueError(f"estimate_mpp: scales={scales!r} must include 1.0, every factor in 0.25-4")
    rng = np.random.default_rng(seed)
    crops = mf.sample_patches(images, patches, rng)
    if not crops:
        sizes = [im.shape[:2] for im in images]
        raise MppEstimateError(f"mpp auto: the image ({sizes}) is smaller than {mf.MIN_PATCH} px a side; {_FIX}.")
    feats, diam = zip(*(mf.patch_measurements(c) for c in crops))
    nuclei = int(sum(len(d) for d in diam))
    if nuclei < MIN_NUCLEI:
        raise MppEstimateError(f"mpp auto: only {nuclei} nuclei found in {len(crops)} patches (need {MIN_NUCLEI}): "
                               f"too little tissue, or not H&E, to estimate the pixel size; {_FIX}.")
    reg = regressor or default_regressor()
    logs = [reg(np.stack(feats).astype(np.float64))]
    for f in (f for f in scales if f != 1.0):
        more = mf.sample_patches([scale_rgb(im, f) for im in images], patches, rng)
        if more:
            logs.append(reg(np.stack([mf.patch_features(c) for c in more]).astype(np.float64)) + math.log(f))
    logs = np.concatenate(logs)
    log_m = float(np.median(logs))
    m = math.exp(log_m)
    spread = 1.2533 * float(np.std(logs)) / math.sqrt(len(logs))  # sampling error of the median
    log_sd = math.hypot(reg.cv_log_std, spread)
    rel = math.exp(log_sd) - 1.0
    if not 0.05 < m < 5.0:
        raise MppEstimateError(f"mpp auto: the estimate ran out of the plausible range (0.05-5 µm/px, got "
                               f"{m:.3g}); {_FIX}.")
    if rel > MAX_RELATIVE_UNCERTAINTY:
        raise MppEstimateError(f"mpp auto: the estimate {m:.3g} µm/px is too uncertain (±{100 * rel:.0f} %); {_FIX}.")
    d_px = float(np.median(np.concatenate(diam)))
    return MppEstimate(mpp=m, low=m * math.exp(-log_sd), high=m * math.exp(log_sd), relative_uncertainty=rel,
                       nuclei=nuclei, patches=len(logs), median_diameter_um=d_px * m)
