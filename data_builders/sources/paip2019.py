"""PAIP 2019 (Kim et al., MedIA 2021): whole-slide H&E images of hepatocellular carcinoma resections (Aperio .svs,
20x) with pixel masks of the whole tumour area and of the viable tumour.

Layout read (the challenge release; one folder or zip per case, extracted)::

    01_01_0083.svs
    01_01_0083_whole.tif     (uint8, 0 / 1, same size as level 0 of the slide)
    01_01_0083_viable.tif

Slides are never decoded whole: level 0 and the masks are read region by region (the TIFF tiles or strips that
overlap a region are decoded, nothing else; uncompressed masks are memory-mapped), and one sample is emitted per ``tile`` x ``tile`` region (option
``tile``, default 1024; edge tiles are smaller). Background tiles are skipped: tissue is found on the slide's
smallest pyramid level (pixels whose RGB saturation max-min is >= ``tissue_saturation``, default 20) and a tile is
kept when at least ``min_tissue`` (default 0.05) of it is tissue; a slide without a pyramid is judged tile by tile.
mpp: the ``MPP = `` field of the SVS description, else 0.5. Split: "train" / "validation" from a folder named so,
else None. Patient: the slide id.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import to_rgb

MASKS = {"whole": "whole_tumor", "viable": "viable_tumor"}  # file suffix -> source class
_MPP = re.compile(r"MPP\s*=\s*([0-9.]+)")


class TiffRegionReader:
    """Region reads of one pyramid level of a (tiled or stripped) TIFF/SVS without decoding the whole image."""

    def __init__(self, path: str | Path, level: int = 0):
        import tifffile

        self.path = Path(path)
        try:
            self.tif = tifffile.TiffFile(str(path))
            self.levels = self.tif.series[0].levels
            self.page = self.levels[level].pages[0]
        except Exception as e:
            raise SourceFormatError(path, f"cannot open TIFF ({type(e).__name__}: {e}); the file is truncated or "
                                          f"not a TIFF/SVS") from None
        p = self.page
        self.height, self.width = int(p.imagelength), int(p.imagewidth)
        self.samples = int(p.samplesperpixel)
        if self.samples > 1 and int(p.planarconfig) != 1:
            raise SourceFormatError(path, "planar-separate TIFFs are not supported; save it as contiguous RGB")
        if p.is_tiled:
            self.th, self.tw = int(p.tilelength), int(p.tilewidth)
        else:
            self.th, self.tw = min(int(p.rowsperstrip or self.height), self.height), self.width
        self.ntx = math.ceil(self.width / self.tw)
        self._mm = None
        self._cache: dict[int, tuple] = {}
        if p.is_memmappable:  # uncompressed, contiguous: slice a memory map instead of decoding whole strips
            self._mm = np.memmap(str(path), dtype=p.dtype.newbyteorder(self.tif.byteorder), mode="r",
                                 offset=int(p.dataoffsets[0]), shape=tuple(p.shaped[-3:-1]) + (
                                     (self.samples,) if self.samples > 1 else ()))

    def close(self) -> None:
        self._mm = None
        self.tif.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def description(self) -> str:
        return str(self.tif.pages[0].description or "")

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """``[h, w]`` or ``[h, w, samples]`` pixels of the region (clipped to the image)."""
        p, fh = self.page, self.tif.filehandle
        h, w = min(h, self.height - y0), min(w, self.width - x0)
        shape = (h, w) if self.samples == 1 else (h, w, self.samples)
        if self._mm is not None:
            return np.array(self._mm[y0:y0 + h, x0:x0 + w])
        out = np.zeros(shape, p.dtype)
        used: dict[int, tuple] = {}
        try:
            for ty in range(y0 // self.th, (y0 + h - 1) // self.th + 1):
                for tx in range(x0 // self.tw, (x0 + w - 1) // self.tw + 1):
                    idx = ty * self.ntx + tx
                    if not p.databytecounts[idx]:
                        continue
                    if idx in self._cache:
                        seg, sy, sx = self._cache[idx]
                    else:
                        fh.seek(p.dataoffsets[idx])
                        seg, index, _ = p.decode(fh.read(p.databytecounts[idx]), idx, jpegtables=p.jpegtables)
                        seg = np.asarray(seg).reshape(np.asarray(seg).shape[-3:])  # [rows, cols, samples]
                        sy, sx = int(index[-3]), int(index[-2])
                    used[idx] = (seg, sy, sx)
                    ya, yb = max(y0, sy), min(y0 + h, sy + seg.shape[0])
                    xa, xb = max(x0, sx), min(x0 + w, sx + seg.shape[1])
                    if ya >= yb or xa >= xb:
                        continue
                    block = seg[ya - sy:yb - sy, xa - sx:xb - sx]
                    out[ya - y0:yb - y0, xa - x0:xb - x0] = block[..., 0] if self.samples == 1 else block
            # strips wider than a tile are shared by the next tile of the row: keep this read's segments
            self._cache = used if not p.is_tiled else {}
        except SourceFormatError:
            raise
        except Exception as e:
            raise SourceFormatError(self.path, f"cannot decode region y={y0} x={x0} ({type(e).__name__}: {e}); the "
                                               f"file is truncated or corrupt") from None
        return out

    def thumbnail(self) -> tuple[np.ndarray, float] | None:
        """The smallest pyramid level (``uint8 [h, w, 3]``) and its downsample factor, or None without a pyramid."""
        if len(self.levels) < 2:
            return None
        lv = self.levels[-1]
        try:
            arr = to_rgb(lv.asarray(), self.path)
        except SourceFormatError:
            raise
        except Exception as e:
            raise SourceFormatError(self.path, f"cannot decode the thumbnail level ({type(e).__name__}: {e})") from None
        return arr, self.height / arr.shape[0]


def tissue_fraction(rgb: np.ndarray, saturation: int) -> float:
    if rgb.size == 0:
        return 0.0
    sat = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
    return float((sat >= saturation).mean())


@register_source
class PAIP2019(SourceAdapter):
    name = "paip2019"
    classes = tuple(MASKS.values())
    default_mpp = 0.5
    licence = "PAIP data use agreement (research only, no redistribution)"
    citation = "Kim et al., PAIP 2019: Liver cancer segmentation challenge, MedIA 2021"

    def list_items(self) -> list[str]:
        items = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                       if p.is_file() and p.suffix.lower() in (".svs", ".tif", ".tiff")
                       and not any(p.stem.lower().endswith(f"_{s}") for s in MASKS))
        if not items:
            raise SourceFormatError(self.root, "no slides found; expected <case>.svs + <case>_whole.tif + "
                                               "<case>_viable.tif")
        return items

    def load_item(self, item: str) -> Iterator[SourceSample]:
        slide_path = self.root / item
        case = slide_path.stem
        mask_paths = {}
        for suffix, cls in MASKS.items():
            cand = [slide_path.with_name(f"{case}_{suffix}{e}") for e in (".tif", ".tiff", ".TIF")]
            found = next((c for c in cand if c.is_file()), None)
            if found is None:
                raise SourceFormatError(slide_path, f"no {suffix} mask: expected {case}_{suffix}.tif beside the slide")
            mask_paths[cls] = found
        tile = int(self.options.get("tile", 1024))
        sat = int(self.options.get("tissue_saturation", 20))
        min_tissue = float(self.options.get("min_tissue", 0.05))
        parts = [p.lower() for p in Path(item).parts[:-1]]
        split = "validation" if any("valid" in p for p in parts) else "train" if any("train" in p for p in parts) \
            else None
        with TiffRegionReader(slide_path) as slide:
            readers = {c: TiffRegionReader(p) for c, p in mask_paths.items()}
            try:
                for c, r in readers.items():
                    if (r.height, r.width) != (slide.height, slide.width):
                        raise SourceFormatError(r.path, f"mask size {r.width}x{r.height} does not match the slide's "
                                                        f"level 0 {slide.width}x{slide.height} (WxH)")
                m = _MPP.search(slide.description)
                mpp = float(self.options.get("mpp") or (m and float(m.group(1))) or self.default_mpp)
                thumb = slide.thumbnail()
                for y in range(0, slide.height, tile):
                    for x in range(0, slide.width, tile):
                        h, w = min(tile, slide.height - y), min(tile, slide.width - x)
                        if thumb is not None:
                            t, f = thumb
                            region = t[int(y / f):max(int(y / f) + 1, int(math.ceil((y + h) / f))),
                                       int(x / f):max(int(x / f) + 1, int(math.ceil((x + w) / f)))]
                            if tissue_fraction(region, sat) < min_tissue:
                                continue
                        image = to_rgb(slide.read(y, x, h, w), slide_path)
                        if thumb is None and tissue_fraction(image, sat) < min_tissue:
                            continue
                        masks = {}
                        for c, r in readers.items():
                            mk = r.read(y, x, h, w)
                            if mk.ndim == 3:
                                mk = mk.max(axis=-1)
                            if mk.any():
                                masks[c] = (mk > 0).astype(np.int32)
                        yield SourceSample(
                            sample_id=f"{case}_x{x:06d}_y{y:06d}", patient_id=case, image=image, masks=masks,
                            has_instances={c: False for c in self.classes}, mpp=mpp, organ="liver",
                            split=self.options.get("split", split),
                            meta={"slide": str(slide_path), "box": [x, y, x + w, y + h]})
            finally:
                for r in readers.values():
                    r.close()
