"""The common interface of the slide backends: :class:`SlideReader` (levels, level-0 mpp and where it
came from, ``read_region``, thumbnails), :class:`Level` and :class:`SlideError`. The backends are
``backend_tifffile``, ``backend_openslide`` and ``backend_dicom``; :mod:`.reader` chooses one.
Regions are ``uint8 [h, w, 3]`` RGB; coordinates are level pixels, ``(y, x)`` of the top-left corner,
end-exclusive sizes.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
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


def _plausible(mpp: float | None) -> float | None:
    """Scanner mpps lie in (0.01, 50); 72/96 dpi defaults and zero resolutions are not mpps."""
    if mpp is None or not math.isfinite(mpp) or not 0.01 < mpp < 50:
        return None
    return float(mpp)


class SlideReader(ABC):
    """Common interface: ``levels``, ``mpp`` (level 0), ``read_region(level, y, x, h, w)``, ``close``."""

    path: Path
    levels: list[Level]
    mpp: float | None
    mpp_source: str
    backend: str
    backend_reason: str = ""

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
