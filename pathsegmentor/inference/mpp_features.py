"""Scale-telling features of an H&E patch, for the pixel-size regressor of :mod:`.mpp_estimate`.

One ``float32 [FEATURES]`` vector per ``uint8 [S, S, 3]`` RGB patch (``S`` ≤ :data:`PATCH`, at least
:data:`MIN_PATCH`), read at the patch's own pixels (no pixel size is assumed):

* ``spectrum_h`` (:data:`BINS`): the radially averaged log power spectrum of the haematoxylin channel
  (``skimage.color.rgb2hed``, Hann window), in log-spaced frequency bins from 1/256 to 1/2 cycles per
  pixel, mean removed. Resampling the patch by ``s`` shifts it by ``log s`` along the bins.
* ``stain`` (5): mean and standard deviation of haematoxylin and eosin, mean brightness.
* ``spectrum_e`` (:data:`BINS`): the same spectrum of the eosin channel.
* ``nuclei`` (6): log 10/25/50/75/90th percentiles of the equivalent diameters (pixels) of the
  haematoxylin objects (:func:`object_diameters`), and the log object density; NaN percentiles when
  fewer than 5 objects.
"""
from __future__ import annotations

import numpy as np

PATCH = 256
MIN_PATCH = 128
BINS = 28
FEATURES = 2 * BINS + 5 + 6
VERSION = "hed-spectrum-v1"
_EDGES = np.exp(np.linspace(np.log(1 / 256), np.log(0.5), BINS + 1))


def log_spectrum(channel: np.ndarray) -> np.ndarray:
    """``float [S, S]`` -> ``float [BINS]`` radially averaged log power, mean removed."""
    n = channel.shape[0]
    x = (channel - channel.mean()) * np.outer(np.hanning(n), np.hanning(n))
    power = np.abs(np.fft.fftshift(np.fft.fft2(x))) ** 2
    f = np.fft.fftshift(np.fft.fftfreq(n))
    radius = np.hypot(*np.meshgrid(f, f)).ravel()
    idx = np.digitize(radius, _EDGES) - 1
    ok = (idx >= 0) & (idx < BINS)
    total = np.bincount(idx[ok], power.ravel()[ok], BINS)
    count = np.maximum(np.bincount(idx[ok], minlength=BINS), 1)
    lp = np.log(total / count + 1e-12)
    return lp - lp.mean()


def object_diameters(hema: np.ndarray, min_area: int = 12, max_area: int = 6000) -> np.ndarray:
    """Equivalent diameters (pixels, ``float [n]``) of the objects of a haematoxylin channel: Gaussian
    σ = 1 px, Otsu threshold, opening, holes filled, connected components of ``min_area``-``max_area`` px."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    hema = ndi.gaussian_filter(hema, 1.0)
    if float(hema.max() - hema.min()) < 1e-6:
        return np.zeros(0)
    mask = ndi.binary_fill_holes(ndi.binary_opening(hema > threshold_otsu(hema)))
    lab, _ = ndi.label(mask)
    area = np.bincount(lab.ravel())[1:]
    area = area[(area >= min_area) & (area <= max_area)]
    return np.sqrt(4.0 * area / np.pi)


def patch_features(rgb: np.ndarray) -> np.ndarray:
    """``uint8 [S, S, 3]`` RGB patch (``MIN_PATCH <= S <= PATCH``) -> ``float32 [FEATURES]``."""
    return patch_measurements(rgb)[0]


def patch_measurements(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`patch_features` and the haematoxylin object diameters (px) they were computed from."""
    from skimage.color import rgb2hed

    if rgb.ndim != 3 or rgb.shape[0] != rgb.shape[1] or not MIN_PATCH <= rgb.shape[0] <= PATCH:
        raise ValueError(f"patch_features needs a square RGB patch of {MIN_PATCH}-{PATCH} px; got {rgb.shape}")
    hed = rgb2hed(rgb)
    h, e = hed[..., 0], hed[..., 1]
    stain = [h.mean(), e.mean(), rgb.mean() / 255.0, h.std(), e.std()]
    d = object_diameters(h)
    q = np.log(np.percentile(d, [10, 25, 50, 75, 90])) if len(d) >= 5 else np.full(5, np.nan)
    density = np.log1p(len(d) / rgb.shape[0] ** 2 * 1e4)
    return np.concatenate([log_spectrum(h), stain, log_spectrum(e), q, [density]]).astype(np.float32), d


def sample_patches(images: list[np.ndarray], count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """About ``count`` square patches (side ``min(PATCH, shortest image side)``) spread over ``images``,
    at random positions (``rng``: deterministic for a seeded generator); images smaller than
    :data:`MIN_PATCH` are skipped."""
    usable = [im for im in images if min(im.shape[:2]) >= MIN_PATCH]
    out: list[np.ndarray] = []
    for k, im in enumerate(usable):
        n = count // len(usable) + (1 if k < count % len(usable) else 0)
        h, w = im.shape[:2]
        s = min(PATCH, h, w)
        for _ in range(max(n, 1)):
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            out.append(np.ascontiguousarray(im[y:y + s, x:x + s]))
    return out
