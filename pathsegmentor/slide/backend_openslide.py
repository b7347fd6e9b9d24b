"""The OpenSlide backend (openslide-python with openslide-bin: Aperio, Hamamatsu, Leica, MIRAX,
Philips, Sakura, Ventana, generic tiled TIFF, and DICOM-WSI with OpenSlide 4)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .reader_base import Level, SlideError, SlideReader, _plausible


INSTALL_HINT = "pip install 'pathsegmentor[slides]' (openslide-python with openslide-bin)"


def openslide_version() -> str | None:
    """The OpenSlide library version (e.g. ``"4.0.1"``), or None when openslide-python is not installed."""
    try:
        import openslide
    except ImportError:
        return None
    return str(openslide.__library_version__)


class OpenSlideSlide(SlideReader):
    """openslide-python backend (MRXS, SCN, BIF, ... and everything tifffile cannot open)."""

    backend = "openslide"

    def __init__(self, path: Path) -> None:
        try:
            import openslide
        except ImportError:
            raise SlideError(f"The {self.backend} backend needs OpenSlide, which is not installed: "
                             f"{INSTALL_HINT}, or choose --backend tifffile.") from None
        self.path = path
        try:
            self._os = openslide.OpenSlide(str(path))
        except Exception as e:  # noqa: BLE001 - OpenSlide raises several types
            raise SlideError(f"'{path}' is not a whole-slide image OpenSlide {openslide_version()} can read "
                             f"({e}). The file may be corrupt or truncated.") from None
        props = self._os.properties
        self.properties = dict(props)
        mpp = _plausible(float(props["openslide.mpp-x"])) if props.get("openslide.mpp-x") else None
        vendor = props.get("openslide.vendor", "?")
        self.mpp, self.mpp_source = mpp, (f"OpenSlide openslide.mpp-x ({vendor})" if mpp else "")
        self.levels = [Level(i, h, w, float(ds), mpp * float(ds) if mpp else None)
                       for i, ((w, h), ds) in enumerate(zip(self._os.level_dimensions, self._os.level_downsamples))]

    def close(self) -> None:
        self._os.close()

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        lv = self.level(level)
        # OpenSlide takes the location in level-0 coordinates
        im = self._os.read_region((int(round(x * lv.downsample)), int(round(y * lv.downsample))), level, (w, h))
        rgba = np.asarray(im)
        rgba = np.concatenate([self._colour(rgba[:, :, :3]), rgba[:, :, 3:]], axis=2)
        alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0  # transparent = outside the scanned area: white
        return (rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)

    def _colour(self, rgb: np.ndarray) -> np.ndarray:
        """Hook for backends whose decoded samples are not RGB yet (``uint8 [h, w, 3]`` in and out)."""
        return rgb
