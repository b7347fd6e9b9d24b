"""Whole-slide image reading: pyramid levels, microns per pixel, regions, thumbnails.

Backends: ``tifffile`` (pyramidal TIFF with SubIFDs or pages, Aperio SVS, OME-TIFF, NDPI) reads only
the tiles a region touches; ``openslide-python`` is used where installed for what tifffile cannot
open. Regions are ``uint8 [h, w, 3]`` RGB; coordinates are level pixels, ``(y, x)`` of the top-left
corner, end-exclusive sizes.
"""
from __future__ import annotations

import math
import re
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class SlideError(ValueError):
    """A slide cannot be used as asked (unreadable, no mpp, bad level); the message says the fix."""


@dataclass(frozen=True)
class Level:
    """One pyramid level: ``(height, width)`` in pixels, ``downsample`` from level 0, ``mpp``."""

    index: int
    height: int
    width: int
    downsample: float
    mpp: float | None

    def describe(self) -> str:
        mpp = f"{self.mpp:.4g} µm/px" if self.mpp else "mpp unknown"
        return f"level {self.index}: {self.width}x{self.height} px (downsample {self.downsample:.3g}, {mpp})"


_UNIT_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3}


def _plausible(mpp: float | None) -> float | None:
    """Scanner mpps lie in (0.01, 50); 72/96 dpi defaults and zero resolutions are not mpps."""
    if mpp is None or not math.isfinite(mpp) or not 0.01 < mpp < 50:
        return None
    return float(mpp)


def mpp_from_tiff(tif, page) -> tuple[float | None, str]:
    """(level-0 mpp, where it came from) from Aperio/OME metadata or the resolution tags."""
    desc = page.description or ""
    if tif.is_svs or "Aperio" in desc:
        m = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", desc)
        if m and _plausible(float(m.group(1))):
            return float(m.group(1)), "Aperio ImageDescription MPP"
    if tif.is_ome and tif.ome_metadata:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        if m:
            u = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
            factor = _UNIT_UM.get(u.group(1) if u else "µm", None)
            if factor is not None and _plausible(float(m.group(1)) * factor):
                return float(m.group(1)) * factor, "OME-XML PhysicalSizeX"
    unit = int(page.resolutionunit or 1)
    xres = page.resolution[0] if page.resolution else 0.0
    if xres and unit in (2, 3):
        mpp = (25400.0 if unit == 2 else 10000.0) / float(xres)
        if _plausible(mpp):
            return mpp, "TIFF XResolution/ResolutionUnit"
    return None, ""


class _TileCache:
    """Least-recently-used decoded segments, bounded in bytes (keeps memory flat)."""

    def __init__(self, max_bytes: int = 32 << 20) -> None:
        self.max_bytes, self.bytes, self.items = max_bytes, 0, OrderedDict()

    def get(self, key):
        v = self.items.get(key)
        if v is not None:
            self.items.move_to_end(key)
        return v

    def put(self, key, value: np.ndarray) -> None:
        self.items[key] = value
        self.bytes += value.nbytes
        while self.bytes > self.max_bytes and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.nbytes


class SlideReader(ABC):
    """Common interface: ``levels``, ``mpp`` (level 0), ``read_region(level, y, x, h, w)``, ``close``."""

    path: Path
    levels: list[Level]
    mpp: float | None
    mpp_source: str
    backend: str

    @abstractmethod
    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """``uint8 [h, w, 3]`` RGB of level ``level`` at row ``y``, column ``x`` (level pixels)."""

    def close(self) -> None:  # pragma: no cover
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(height, width)``."""
        return self.levels[0].height, self.levels[0].width

    def level(self, index: int) -> Level:
        if not 0 <= index < len(self.levels):
            avail = "; ".join(lv.describe() for lv in self.levels)
            raise SlideError(f"--level {index} does not exist in '{self.path.name}', which has "
                             f"{len(self.levels)} level(s): {avail}. Pass one of "
                             f"{list(range(len(self.levels)))}, or omit --level to pick by mpp.")
        return self.levels[index]

    def set_mpp(self, mpp: float) -> None:
        """Override level-0 mpp (``--mpp``); level mpps follow from the downsamples."""
        self.mpp, self.mpp_source = float(mpp), "--mpp"
        self.levels = [Level(lv.index, lv.height, lv.width, lv.downsample, mpp * lv.downsample)
                       for lv in self.levels]

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, Level]:
        """RGB thumbnail with longer side about ``max_side``, from the coarsest level at least that
        big (read in row strips, so a slide without a pyramid is still read in bounded memory)."""
        from PIL import Image

        big = [lv for lv in self.levels if max(lv.height, lv.width) >= max_side]
        src = big[-1] if big else self.levels[0]
        scale = min(1.0, max_side / max(src.height, src.width))
        th, tw = max(1, round(src.height * scale)), max(1, round(src.width * scale))
        if scale == 1.0:
            out = np.empty((src.height, src.width, 3), np.uint8)
            for y in range(0, src.height, 1024):
                h = min(1024, src.height - y)
                out[y:y + h] = self.read_region(src.index, y, 0, h, src.width)
            return out, src
        out = np.empty((th, tw, 3), np.uint8)
        rows_per = max(1, int(1024 * scale))  # thumbnail rows per strip
        for ty in range(0, th, rows_per):
            ty1 = min(th, ty + rows_per)
            y0, y1 = ty * src.height / th, ty1 * src.height / th
            iy0, iy1 = int(math.floor(y0)), min(src.height, int(math.ceil(y1)))
            strip = self.read_region(src.index, iy0, 0, iy1 - iy0, src.width)
            im = Image.fromarray(strip).resize((tw, ty1 - ty), Image.Resampling.BOX,
                                               box=(0, y0 - iy0, src.width, y1 - iy0))
            out[ty:ty1] = np.asarray(im)
        return out, src


class TiffSlide(SlideReader):
    """tifffile backend; decodes only the tiles/strips a region touches (LRU-cached)."""

    backend = "tifffile"

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        try:
            self._tif = tifffile.TiffFile(str(path))
        except Exception as e:  # noqa: BLE001 - tifffile raises several types for non-TIFFs
            raise SlideError(f"'{path}' is not a whole-slide image that tifffile can read ({e}). Supported: "
                             f"pyramidal TIFF, Aperio SVS, OME-TIFF, NDPI; for other formats install "
                             f"openslide-python.") from None
        try:
            self._open()
        except SlideError:
            self._tif.close()
            raise
        self._cache = _TileCache()
        self._lock = threading.RLock()

    def _open(self) -> None:
        tif = self._tif
        if not tif.series:
            raise SlideError(f"'{self.path}' holds no image data: not a whole-slide image (a corrupt or "
                             f"truncated TIFF?). Check the file, or re-export it from the scanner software.")
        series = tif.series[0]
        pages = []
        for lv in series.levels:
            page = lv.keyframe
            axes = lv.axes
            if axes not in ("YXS", "YX"):
                raise SlideError(f"'{self.path}': image axes {axes!r} (shape {lv.shape}); expected an RGB or "
                                 f"greyscale 2-D slide (YXS or YX).")
            if axes == "YXS" and page.samplesperpixel not in (3, 4):
                raise SlideError(f"'{self.path}': {page.samplesperpixel} samples per pixel; expected RGB(A).")
            if page.planarconfig == 2 and page.samplesperpixel > 1:
                raise SlideError(f"'{self.path}': planar (separate-channel) TIFFs are not supported; "
                                 f"convert to interleaved RGB (e.g. with vips tiffsave).")
            if page.dtype != np.uint8 and page.dtype != np.uint16:
                raise SlideError(f"'{self.path}': pixel type {page.dtype}; expected uint8 or uint16 RGB.")
            pages.append(page)
        self._pages = pages
        h0, w0 = pages[0].imagelength, pages[0].imagewidth
        mpp, self.mpp_source = mpp_from_tiff(tif, pages[0])
        self.mpp = mpp
        self.levels = []
        for i, p in enumerate(pages):
            ds = 0.5 * (w0 / p.imagewidth + h0 / p.imagelength)
            self.levels.append(Level(i, p.imagelength, p.imagewidth, ds, mpp * ds if mpp else None))

    def close(self) -> None:
        self._tif.close()

    def _segment(self, level: int, index: int) -> np.ndarray:
        """Decoded segment ``[h, w, S]`` (tiles full size; strips their true height)."""
        key = (level, index)
        seg = self._cache.get(key)
        if seg is not None:
            return seg
        page = self._pages[level]
        fh = self._tif.filehandle
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        with self._lock:
            if offset and count:
                fh.seek(offset)
                data = fh.read(count)
            else:
                data = None
        kwargs = {"_fullsize": page.is_tiled}
        if page.compression in (6, 7, 34892, 33007):
            kwargs.update(jpegtables=page.jpegtables, jpegheader=page.jpegheader)
        arr, _, shape = page.decode(data, index, **kwargs)
        if arr is None:  # empty segment: background
            arr = np.full(shape, 255 if page.dtype == np.uint8 else 65535, page.dtype)
        seg = np.asarray(arr).reshape(shape[1], shape[2], shape[3])
        self._cache.put(key, seg)
        return seg

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        lv = self.level(level)
        page = self._pages[level]
        S = page.samplesperpixel
        out = np.full((h, w, S), 255 if page.dtype == np.uint8 else 65535, page.dtype)
        y0, x0, y1, x1 = max(0, y), max(0, x), min(lv.height, y + h), min(lv.width, x + w)
        if y1 > y0 and x1 > x0:
            if page.is_tiled:
                th, tw = page.tilelength, page.tilewidth
                ntx = (lv.width + tw - 1) // tw
                for ty in range(y0 // th, (y1 - 1) // th + 1):
                    for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                        seg = self._segment(level, ty * ntx + tx)
                        sy0, sx0 = ty * th, tx * tw
                        a0, a1 = max(y0, sy0), min(y1, sy0 + th)
                        b0, b1 = max(x0, sx0), min(x1, sx0 + tw)
                        out[a0 - y:a1 - y, b0 - x:b1 - x] = seg[a0 - sy0:a1 - sy0, b0 - sx0:b1 - sx0]
            else:
                rps = min(page.rowsperstrip or lv.height, lv.height)
                for si in range(y0 // rps, (y1 - 1) // rps + 1):
                    seg = self._segment(level, si)
                    sy0 = si * rps
                    a0, a1 = max(y0, sy0), min(y1, sy0 + seg.shape[0])
                    out[a0 - y:a1 - y, x0 - x:x1 - x] = seg[a0 - sy0:a1 - sy0, x0:x1]
        return _rgb8(out)


def _rgb8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0).round().astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


class OpenSlideSlide(SlideReader):  # pragma: no cover - exercised only where openslide is installed
    """openslide-python backend (MRXS, SCN, BIF, ... and everything tifffile cannot open)."""

    backend = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self.path = path
        try:
            self._os = openslide.OpenSlide(str(path))
        except Exception as e:  # noqa: BLE001
            raise SlideError(f"'{path}' is not a whole-slide image OpenSlide can read ({e}).") from None
        props = self._os.properties
        mpp = _plausible(float(props["openslide.mpp-x"])) if props.get("openslide.mpp-x") else None
        self.mpp, self.mpp_source = mpp, ("OpenSlide openslide.mpp-x" if mpp else "")
        self.levels = [Level(i, h, w, float(ds), mpp * float(ds) if mpp else None)
                       for i, ((w, h), ds) in enumerate(zip(self._os.level_dimensions, self._os.level_downsamples))]

    def close(self) -> None:
        self._os.close()

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        lv = self.level(level)
        # OpenSlide takes the location in level-0 coordinates
        im = self._os.read_region((int(round(x * lv.downsample)), int(round(y * lv.downsample))), level, (w, h))
        rgba = np.asarray(im)
        alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0  # transparent = outside the scanned area: white
        return (rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)


def open_slide(path: str | Path, mpp: float | None = None) -> SlideReader:
    """Open a slide (tifffile first, then OpenSlide where installed); ``mpp`` overrides level-0 mpp."""
    path = Path(path)
    if not path.exists():
        raise SlideError(f"Slide file not found: '{path}'. Check the path.")
    if path.is_dir():
        raise SlideError(f"'{path}' is a directory; pass a slide file (.svs, .tif, .ome.tif, ...).")
    try:
        reader: SlideReader = TiffSlide(path)
    except SlideError as tiff_error:
        try:
            import openslide  # noqa: F401
        except ImportError:
            raise tiff_error from None
        reader = OpenSlideSlide(path)
    if mpp is not None:
        if not (isinstance(mpp, (int, float)) and 0 < mpp < 100):
            reader.close()
            raise SlideError(f"--mpp {mpp!r} is not a valid microns-per-pixel value (e.g. 0.25 for 40x, 0.5 for 20x).")
        reader.set_mpp(float(mpp))
    return reader


def require_mpp(reader: SlideReader) -> float:
    if reader.mpp is None:
        raise SlideError(f"'{reader.path.name}' records no microns-per-pixel (no Aperio MPP, OME "
                         f"PhysicalSizeX or TIFF resolution in cm/inch). Pass it with --mpp, e.g. --mpp 0.25 "
                         f"for a 40x scan or --mpp 0.5 for 20x (segment_slide(model, ..., mpp=0.25)).")
    return reader.mpp


def choose_level(reader: SlideReader, model_mpp: float, tolerance: float = 0.05) -> Level:
    """The coarsest level whose mpp is not coarser than ``model_mpp`` (within ``tolerance``), i.e. the
    closest from the fine side; level 0 when every level is coarser (then tiles are upsampled)."""
    require_mpp(reader)
    fine = [lv for lv in reader.levels if lv.mpp <= model_mpp * (1 + tolerance)]
    if not fine:
        return reader.levels[0]
    return max(fine, key=lambda lv: lv.mpp)
