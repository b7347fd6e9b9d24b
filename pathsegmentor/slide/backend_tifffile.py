"""The tifffile backend: pyramidal TIFF with SubIFDs or pages, Aperio SVS (JPEG and JPEG 2000 tiles),
OME-TIFF, NDPI. Reads only the tiles or strips a region touches (LRU-cached); mpp from the Aperio
description, OME-XML or the TIFF resolution tags."""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .reader_base import Level, SlideError, SlideReader, _plausible


_UNIT_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3}


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
