"""Turn whatever the user passes into ``uint8 [H, W, 3]`` RGB, with clear errors."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

ImageInput = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]


class ImageReadError(ValueError):
    """An input image is missing, unreadable or of an unsupported layout; the message says the fix."""


def _to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return (arr.astype(np.float32) / 257.0).round().astype(np.uint8)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(arr)) if arr.size else 0.0, float(np.nanmax(arr)) if arr.size else 0.0
        if lo >= 0.0 and hi <= 1.0:
            return (np.nan_to_num(arr) * 255.0).round().astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0:
            return np.nan_to_num(arr).round().astype(np.uint8)
        raise ImageReadError(f"{what}: float image with values in [{lo:g}, {hi:g}]; expected [0, 1] or "
                             f"[0, 255]. Rescale it or pass uint8/uint16.")
    raise ImageReadError(f"{what}: unsupported dtype {arr.dtype}; pass uint8, uint16, float or bool.")


def _to_rgb(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif not (arr.ndim == 3 and arr.shape[2] == 3):
        raise ImageReadError(f"{what}: array of shape {arr.shape}; expected HxW, HxWx1, HxWx3 or HxWx4 "
                             f"(channels last) — a CxHxW array should be passed as a torch tensor.")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError(f"{what}: empty image of shape {arr.shape}")
    arr = np.ascontiguousarray(arr)
    return arr if arr.flags.writeable else arr.copy()  # torch.from_numpy warns on read-only arrays


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file (PNG, JPEG, TIFF, BMP, ...) as ``uint8 [H, W, 3]`` RGB."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"Image file not found: '{path}'. Check the path.")
    if path.is_dir():
        raise ImageReadError(f"'{path}' is a directory; pass an image file.")
    try:
        with Image.open(path) as im:
            im.load()
            arr = _pil_to_array(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if path.suffix.lower() in (".tif", ".tiff", ".svs"):
            try:
                arr, said = _tifffile_read(path)
                if arr.size == 0:  # tifffile logs a warning and returns nothing for a cut-off file
                    raise ValueError(f"no image data ({'; '.join(said) or 'no pixel data'})")
                if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
                    arr = np.moveaxis(arr, 0, -1)
            except Exception as e2:  # noqa: BLE001 - report both readers' reasons
                raise ImageReadError(f"Cannot read image '{path}': {e}; tifffile: {e2}. The file is "
                                     f"corrupt or truncated, or not an image.") from e2
        else:
            raise ImageReadError(f"Cannot read image '{path}': {e}. The file is corrupt or truncated, "
                                 f"or not an image.") from e
    return _to_rgb(_to_uint8(arr, str(path)), str(path))


def _tifffile_read(path: Path) -> tuple[np.ndarray, list[str]]:
    """``tifffile.imread`` with its logged warnings collected (returned) instead of printed."""
    import logging

    import tifffile

    said: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    log = logging.getLogger("tifffile")
    handler, propagate = _Collect(), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        return tifffile.imread(str(path)), said
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _pil_to_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im)
        return arr.astype(np.uint16) if arr.max() <= 65535 else (arr / arr.max() * 255).astype(np.uint8)
    if im.mode == "RGBA":
        return np.asarray(im)[:, :, :3]
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    return np.asarray(im)


def to_rgb_uint8(image: ImageInput, what: str = "image") -> np.ndarray:
    """Accept a path, PIL image, numpy ``HxW``/``HxWxC`` (uint8/uint16/float/bool) or torch ``CxHxW``
    / ``HxW`` tensor; return ``uint8 [H, W, 3]`` RGB (RGBA drops alpha, grey is repeated,
    16-bit is scaled to 8-bit)."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return _to_rgb(_to_uint8(_pil_to_array(image), what), what)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        elif t.ndim != 2:
            raise ImageReadError(f"{what}: tensor of shape {tuple(image.shape)}; expected CxHxW (C in 1, 3, 4) or HxW")
        arr = t.numpy()
        if arr.dtype == np.int32 or arr.dtype == np.int64:
            arr = arr.clip(0, 255).astype(np.uint8)
        return _to_rgb(_to_uint8(arr, what), what)
    if isinstance(image, np.ndarray):
        return _to_rgb(_to_uint8(image, what), what)
    raise ImageReadError(f"{what}: unsupported input type {type(image).__name__}; pass a path, PIL image, "
                         f"numpy array or torch tensor.")


def resize_rgb(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize ``uint8 [H, W, 3]`` to ``size_hw`` (area-like when shrinking, bilinear when growing)."""
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return image
    shrinking = h < image.shape[0]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.array(Image.fromarray(image).resize((w, h), resample=resample))  # writable copy


def scale_rgb(image: np.ndarray, factor: float) -> np.ndarray:
    """``uint8 [H, W, 3]`` resampled by ``factor`` (:func:`resize_rgb`; sides rounded, at least 1 px)."""
    h, w = image.shape[:2]
    return resize_rgb(image, (max(1, round(h * factor)), max(1, round(w * factor))))
