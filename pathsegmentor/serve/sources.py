"""Opened images behind one interface: a whole slide through :func:`pathsegmentor.slide.reader.open_slide`
(pyramidal TIFF/SVS/OME-TIFF, OpenSlide where installed; only the tiles a region touches are decoded)
or a tile (PNG/JPEG, or a TIFF the slide reader cannot use) decoded once and held as one level."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..inference.image_io import read_image
from ..resources import SAMPLES_DIR
from ..slide.reader import Level, SlideError, SlideReader, open_slide
from .files import ServedFile, ServeError


class ArraySlide(SlideReader):
    """A decoded image as a one-level slide (regions outside it are white)."""

    backend = "decoded image"

    def __init__(self, path: Path, rgb: np.ndarray, mpp: float | None, mpp_source: str) -> None:
        self.path, self._rgb = path, rgb
        self.mpp, self.mpp_source = mpp, mpp_source
        self.levels = [Level(0, rgb.shape[0], rgb.shape[1], 1.0, mpp)]

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        self.level(level)
        out = np.full((h, w, 3), 255, np.uint8)
        H, W = self._rgb.shape[:2]
        y0, x0, y1, x1 = max(0, y), max(0, x), min(H, y + h), min(W, x + w)
        if y1 > y0 and x1 > x0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._rgb[y0:y1, x0:x1]
        return out


def sample_mpp(path: Path) -> float | None:
    """The mpp recorded for a bundled sample tile (``pathsegmentor/samples/samples.json``), else None."""
    try:
        if path.resolve().parent != SAMPLES_DIR.resolve():
            return None
        entries = json.loads((SAMPLES_DIR / "samples.json").read_text())["samples"]
    except (OSError, KeyError, ValueError):
        return None
    return next((float(s["mpp"]) for s in entries if s.get("file") == path.name and s.get("mpp")), None)


@dataclass
class OpenedImage:
    """An open file: ``id`` (used in URLs), the :class:`ServedFile`, its reader and a lock for reads."""

    id: str
    file: ServedFile
    reader: SlideReader

    def __post_init__(self) -> None:
        self.lock = threading.RLock()

    def read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        with self.lock:
            return self.reader.read_region(level, y, x, h, w)

    def info(self) -> dict:
        r = self.reader
        h, w = r.dimensions
        return {"id": self.id, "name": self.file.name, "kind": self.file.kind, "width": w, "height": h,
                "mpp": r.mpp, "mpp_source": r.mpp_source or None, "backend": r.backend,
                "levels": [{"index": lv.index, "width": lv.width, "height": lv.height,
                            "downsample": lv.downsample, "mpp": lv.mpp} for lv in r.levels],
                "dzi": f"/api/images/{self.id}.dzi"}


def open_image(file: ServedFile, image_id: str, mpp: float | None = None) -> OpenedImage:
    """Open ``file`` (``mpp`` overrides or supplies level-0 microns per pixel); unreadable files give a
    :class:`ServeError` (422) with the reader's reason."""
    path = file.path
    if file.kind == "slide":
        try:
            return OpenedImage(image_id, file, open_slide(path, mpp=mpp))
        except SlideError as slide_error:
            reason = str(slide_error)
    else:
        reason = ""
    try:
        rgb = read_image(path)
    except (ValueError, OSError) as e:
        msg = f"Cannot open '{file.name}': {reason or e}"
        if reason and str(e) not in reason:
            msg += f" (as a plain image: {e})"
        raise ServeError(422, msg) from None
    given = mpp if mpp is not None else sample_mpp(path)
    source = "--mpp" if mpp is not None else ("samples.json" if given is not None else "")
    return OpenedImage(image_id, file, ArraySlide(path, rgb, given, source))
