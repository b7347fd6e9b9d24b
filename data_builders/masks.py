"""Pixel I/O shared by the adapters and the builder: decoding images and masks, instance-map helpers,
lossless PNG encoding. Every reader raises :class:`SourceFormatError` naming the file on bad input."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .base import SourceFormatError


def _decode(path: Path, what: str, convert) -> np.ndarray:
    """Decode a TIFF with tifffile or anything else with PIL (``convert(im) -> im`` picks the mode);
    every failure becomes a :class:`SourceFormatError` naming the file."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(str(path))
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            return np.asarray(convert(im))
    except SourceFormatError:
        raise
    except Exception as e:  # PIL/tifffile raise many types for truncated or corrupt files
        raise SourceFormatError(path, f"cannot decode {what} ({type(e).__name__}: {e}); the file is truncated or "
                                      f"corrupt, re-extract it from the download") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB from a PNG/BMP/JPEG/TIFF (alpha dropped, grey expanded, 16-bit scaled)."""
    path = Path(path)
    arr = _decode(path, "image", lambda im: im.convert("RGB") if im.mode not in ("RGB", "L", "RGBA") else im)
    return to_rgb(arr, path)


def to_rgb(arr: np.ndarray, path: str | Path = "") -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar TIFF
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise SourceFormatError(path, f"expected an RGB image, got an array of shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def read_mask(path: str | Path) -> np.ndarray:
    """A label image as an integer array: ``[H, W]`` for grey/palette/16-bit, ``[H, W, 3]`` for RGB."""
    path = Path(path)

    def drop_alpha(im):
        return im.convert("RGB" if im.mode == "RGBA" else "L") if im.mode in ("RGBA", "LA") else im

    arr = _decode(path, "mask", drop_alpha)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def check_size(mask: np.ndarray, image: np.ndarray, path: str | Path) -> None:
    if mask.shape[:2] != image.shape[:2]:
        raise SourceFormatError(path, f"mask size {mask.shape[1]}x{mask.shape[0]} does not match the image size "
                                      f"{image.shape[1]}x{image.shape[0]} (WxH)")


def relabel(inst: np.ndarray) -> tuple[np.ndarray, int]:
    """Instance ids renumbered 1..K (0 stays background) as ``int32``; returns (map, K)."""
    ids, inv = np.unique(inst, return_inverse=True)
    inv = inv.reshape(inst.shape).astype(np.int32)
    if ids.size and ids[0] == 0:
        return inv, int(ids.size - 1)
    return inv + 1, int(ids.size)


def colour_instances(rgb: np.ndarray) -> np.ndarray:
    """One RGB colour per instance (black background) -> ``int32`` instance ids."""
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    return relabel(code)[0]


def connected_components(binary: np.ndarray) -> np.ndarray:
    """``int32`` ids of the 4-connected components of a binary mask."""
    from scipy import ndimage

    lab, _ = ndimage.label(binary > 0)
    return lab.astype(np.int32)


def rasterize_polygons(polygons, shape: tuple[int, int]) -> np.ndarray:
    """Polygons (each ``float [N, 2]`` of x, y) -> ``int32`` instance map; later polygons overwrite earlier."""
    from skimage.draw import polygon as draw_polygon

    out = np.zeros(shape, np.int32)
    k = 0
    for pts in polygons:
        if len(pts) < 3:
            continue
        rr, cc = draw_polygon(pts[:, 1], pts[:, 0], shape=shape)
        if rr.size == 0:
            continue
        k += 1
        out[rr, cc] = k
    return out


def encode_png(arr: np.ndarray) -> bytes:
    """Lossless PNG: ``uint8 [H, W, 3]`` RGB, ``uint8 [H, W]`` grey, or ``uint16 [H, W]`` (16-bit grey)."""
    from PIL import Image

    if arr.ndim == 2 and arr.dtype != np.uint8:
        if arr.max(initial=0) > 65535:
            raise ValueError(f"{int(arr.max())} instances do not fit a 16-bit PNG")
        im = Image.fromarray(arr.astype(np.uint16))
    else:
        im = Image.fromarray(np.ascontiguousarray(arr))
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def decode_png(data: bytes | dict | object) -> np.ndarray:
    """Inverse of :func:`encode_png` (also accepts a ``datasets`` image dict or a PIL image)."""
    from PIL import Image

    if isinstance(data, dict):
        data = data["bytes"]
    if isinstance(data, (bytes, bytearray)):
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _pil_array(im)
    return _pil_array(data)


def _pil_array(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im, dtype=np.uint16)
    if im.mode == "I":
        return np.asarray(im).astype(np.int32)
    return np.asarray(im)
