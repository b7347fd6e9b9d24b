"""Training augmentations for H&E tiles: physical scale, geometry and stain.

All functions take an explicit ``numpy.random.Generator`` so that every sample's augmentation is a
pure function of (seed, sample position): exact resume and identical multi-process runs follow.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

# Ruifrok & Johnston H&E-DAB stain vectors (rows: haematoxylin, eosin, DAB), as in skimage.color
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32)
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)


def stain_concentrations(image: np.ndarray) -> np.ndarray:
    """Colour deconvolution (Ruifrok & Johnston): ``uint8 [H, W, 3]`` RGB -> ``float32 [H, W, 3]`` optical densities of
    haematoxylin, eosin and DAB (0 on white glass; nuclei in H&E about 0.3-1.5 in H)."""
    od = -np.log((image.astype(np.float32) + 1.0) / 256.0)
    return (od.reshape(-1, 3) @ _HED_FROM_RGB).reshape(image.shape)


def hed_jitter(image: np.ndarray, rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.02) -> np.ndarray:
    """Perturb stain concentrations in optical-density space (Tellez et al. 2018).

    ``uint8 [H, W, 3]`` -> ``uint8 [H, W, 3]``; each of H, E, D is scaled by ``1 + U(-sigma, sigma)``
    and shifted by ``U(-bias, bias)``.
    """
    if sigma <= 0 and bias <= 0:
        return image
    hed = stain_concentrations(image).reshape(-1, 3)
    alpha = 1.0 + rng.uniform(-sigma, sigma, 3).astype(np.float32)
    beta = rng.uniform(-bias, bias, 3).astype(np.float32)
    hed = hed * alpha + beta
    return stain_image(hed.reshape(image.shape))


def stain_image(hed: np.ndarray) -> np.ndarray:
    """The inverse of :func:`stain_concentrations`: ``float32 [H, W, 3]`` H, E, DAB optical densities -> ``uint8
    [H, W, 3]`` RGB (clipped to 0-255)."""
    od = (hed.reshape(-1, 3) @ _RGB_FROM_HED).reshape(hed.shape)
    rgb = 256.0 * np.exp(-od) - 1.0
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


def scale_haematoxylin(image: np.ndarray, gain: float) -> np.ndarray:
    """``uint8 [H, W, 3]``: ``image`` with its haematoxylin density multiplied by ``gain`` (eosin and DAB unchanged)."""
    hed = stain_concentrations(image)
    hed[..., 0] *= np.float32(gain)
    return stain_image(hed)


def range_pair(key: str, value, example: str) -> tuple[float, float]:
    """A recipe's ``data.<key>`` read as ``(low, high)``; ``ValueError`` naming it and ``example`` if it is not two
    numbers (the order of the two is the caller's to check)."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"data.{key}={value!r}: give two numbers [low, high], e.g. {example}") from None
    return lo, hi


def check_chance(key: str, prob: float, example: str) -> None:
    """``ValueError`` naming a recipe's ``data.<key>`` unless it is a chance per crop in [0, 1]."""
    if not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"data.{key}={prob}: a chance per crop must lie in [0, 1] (e.g. {example}; 0 turns the "
                         "augmentation off)")


def check_haematoxylin_gain(prob: float, gain) -> tuple[float, float]:
    """Validate a recipe's ``data.h_gain_prob`` (chance per crop, [0, 1]) and ``data.h_gain`` (``[low, high]``, the
    range of the haematoxylin gain, 0 < low <= high); returns the gain range."""
    lo, hi = range_pair("h_gain", gain, "[0.4, 1.6]")
    check_chance("h_gain_prob", prob, "0.5")
    if not 0.0 < lo <= hi:
        raise ValueError(f"data.h_gain={[lo, hi]}: the haematoxylin gain must be a range 0 < low <= high "
                         "(e.g. [0.4, 1.6]; [1, 1] leaves the stain as it is)")
    return lo, hi


def haematoxylin_gain(image: np.ndarray, rng: np.random.Generator, prob: float,
                      gain: tuple[float, float]) -> np.ndarray:
    """With chance ``prob``, the haematoxylin density of ``uint8 [H, W, 3]`` multiplied by one gain drawn
    log-uniformly from ``gain`` (eosin and DAB unchanged): nuclei paler or darker than the training tiles show, a
    wider haematoxylin range than :func:`hed_jitter`'s (Tellez et al. 2019: stain augmentation as the lever across
    centres). Returns ``uint8 [H, W, 3]``; the image itself when nothing is drawn."""
    if prob <= 0 or rng.random() >= prob:
        return image
    return scale_haematoxylin(image, math.exp(rng.uniform(math.log(gain[0]), math.log(gain[1]))))


def brightness_contrast(image: np.ndarray, rng: np.random.Generator, amount: float = 0.1) -> np.ndarray:
    if amount <= 0:
        return image
    x = image.astype(np.float32)
    c = 1.0 + rng.uniform(-amount, amount)
    b = 255.0 * rng.uniform(-amount, amount) * 0.5
    mean = x.mean()
    return np.clip((x - mean) * c + mean + b, 0, 255).round().astype(np.uint8)


def random_scaled_crop(image: np.ndarray, masks: list[np.ndarray], *, crop: int, scale: float,
                       rng: np.random.Generator, fill: int = 255) -> tuple[np.ndarray, list[np.ndarray]]:
    """Cut a window that becomes ``crop x crop`` after resizing by ``scale`` (model px per source px).

    Images smaller than the window are padded with ``fill`` (white, like glass) and masks with 0.
    Returns the ``uint8 [crop, crop, 3]`` image and each mask as ``uint8 [crop, crop]`` (nearest); int32
    masks (instance label maps) stay int32.
    """
    h, w = image.shape[:2]
    win = max(1, int(round(crop / scale)))
    y0 = int(rng.integers(0, max(h - win, 0) + 1))
    x0 = int(rng.integers(0, max(w - win, 0) + 1))
    img = image[y0:y0 + win, x0:x0 + win]
    ms = [m[y0:y0 + win, x0:x0 + win] for m in masks]
    ph, pw = win - img.shape[0], win - img.shape[1]
    if ph > 0 or pw > 0:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), constant_values=fill)
        ms = [np.pad(m, ((0, ph), (0, pw))) for m in ms]
    if win != crop:
        resample = Image.Resampling.BOX if win > crop else Image.Resampling.BILINEAR
        img = np.asarray(Image.fromarray(img).resize((crop, crop), resample=resample))
        ms = [np.asarray(Image.fromarray(m.astype(np.int32 if m.dtype == np.int32 else np.uint8))
                         .resize((crop, crop), Image.Resampling.NEAREST)) for m in ms]
    return img, [m.astype(np.int32 if m.dtype == np.int32 else np.uint8) for m in ms]


def flip_rotate(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip + 90° rotation (dihedral group) for every array (HxW or HxWxC)."""
    k = int(rng.integers(0, 4))
    flip = bool(rng.integers(0, 2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(0, 1))
        if flip:
            a = a[:, ::-1]
        out.append(np.ascontiguousarray(a))
    return out


def log_uniform_jitter(rng: np.random.Generator, amount: float) -> float:
    """A multiplicative factor ``exp(U(-log(1+amount), log(1+amount)))``."""
    if amount <= 0:
        return 1.0
    r = math.log1p(amount)
    return float(math.exp(rng.uniform(-r, r)))
