"""Whole-slide image reading, and the one place where the backend is chosen.

Backends (``backend=`` / ``--backend``):

- ``tifffile`` (:mod:`.backend_tifffile`): pyramidal TIFF, Aperio SVS (JPEG and JPEG 2000), OME-TIFF,
  NDPI; always installed with ``pathsegmentor[wsi]``.
- ``openslide`` (:mod:`.backend_openslide`): everything OpenSlide reads (MRXS, SCN, BIF, VMS, ...).
- ``dicom`` (:mod:`.backend_dicom`): DICOM-WSI through OpenSlide 4, with YCbCr frames declared RGB
  decoded right.
- ``auto`` (default): DICOM files and series folders go to ``dicom``; anything else to ``tifffile``
  first, then ``openslide`` where installed. The reader records the choice and why in
  ``reader.backend`` / ``reader.backend_reason``.

``openslide`` and ``dicom`` come with ``pip install 'pathsegmentor[slides]'``. Regions are
``uint8 [h, w, 3]`` RGB; coordinates are level pixels, ``(y, x)`` of the top-left corner.
"""
from __future__ import annotations

from pathlib import Path

from .backend_dicom import DicomSlide, is_dicom
from .backend_openslide import INSTALL_HINT, OpenSlideSlide, openslide_version
from .backend_tifffile import TiffSlide, mpp_from_tiff
from .reader_base import Level, SlideError, SlideReader

__all__ = ["BACKENDS", "Level", "SlideError", "SlideReader", "TiffSlide", "choose_level", "mpp_from_tiff",
           "open_slide", "require_mpp"]

BACKENDS = ("auto", "tifffile", "openslide", "dicom")


def _open_backend(path: Path, backend: str) -> SlideReader:
    """The reader of ``backend`` for ``path`` (``auto`` resolved here), with ``backend_reason`` set."""
    if backend == "tifffile":
        reader, reason = TiffSlide(path), "--backend tifffile"
    elif backend == "openslide":
        reader, reason = OpenSlideSlide(path), f"--backend openslide (OpenSlide {openslide_version()})"
    elif backend == "dicom":
        reader, reason = DicomSlide(path), f"--backend dicom (OpenSlide {openslide_version()})"
    elif is_dicom(path):
        if openslide_version() is None:
            raise SlideError(f"'{path}' is DICOM-WSI, which is read through OpenSlide 4, not installed: "
                             f"{INSTALL_HINT}.")
        reader = DicomSlide(path)
        reason = f"auto: DICOM file or series folder, read with OpenSlide {openslide_version()}'s DICOM support"
    elif path.is_dir():
        raise SlideError(f"'{path}' is a directory without .dcm files; pass a slide file (.svs, .tif, "
                         f".ome.tif, ...) or a DICOM-WSI series folder.")
    else:
        try:
            reader, reason = TiffSlide(path), "auto: tifffile reads it (tried first: no extra dependency)"
        except SlideError as tiff_error:
            if openslide_version() is None:
                raise SlideError(f"{tiff_error} OpenSlide, which reads more formats, is not installed "
                                 f"({INSTALL_HINT}).") from None
            try:
                reader = OpenSlideSlide(path)
            except SlideError as os_error:
                raise SlideError(f"{tiff_error} OpenSlide: {os_error}") from None
            reason = f"auto: tifffile cannot read it ({tiff_error}); OpenSlide {openslide_version()} can"
    reader.backend_reason = reason
    return reader


def open_slide(path: str | Path, mpp: float | None = None, backend: str = "auto") -> SlideReader:
    """Open a slide with ``backend`` (one of :data:`BACKENDS`; see the module docstring); ``mpp``
    overrides the level-0 microns per pixel."""
    path = Path(path)
    if backend not in BACKENDS:
        raise SlideError(f"Unknown slide backend {backend!r}. Available: {list(BACKENDS)} "
                         f"(--backend auto picks one by the file).")
    if not path.exists():
        raise SlideError(f"Slide file not found: '{path}'. Check the path.")
    if path.is_dir() and backend not in ("auto", "dicom"):
        raise SlideError(f"'{path}' is a directory; pass a slide file (.svs, .tif, .ome.tif, ...), or a "
                         f"DICOM-WSI series folder with --backend dicom or auto.")
    reader = _open_backend(path, backend)
    if mpp is not None:
        if not (isinstance(mpp, (int, float)) and 0 < mpp < 100):
            reader.close()
            raise SlideError(f"--mpp {mpp!r} is not a valid microns-per-pixel value (e.g. 0.25 for 40x, 0.5 "
                             f"for 20x), or 'auto' to estimate it.")
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
