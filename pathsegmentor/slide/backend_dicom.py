"""The DICOM-WSI backend: OpenSlide 4's DICOM reader (a series of VL Whole Slide Microscopy instances,
one file per level, found from any one of them), plus the colour check OpenSlide does not make.

OpenSlide decodes the JPEG frames in the colour space the file *declares*. Some converters (Google's
wsi2dcm among them) declare ``PhotometricInterpretation = RGB`` but write ordinary JFIF/YCbCr JPEG
frames; read as RGB, such a slide comes out green-grey. This backend looks at the first frame's JPEG
markers as a JPEG decoder would (an Adobe APP14 transform 0 or component ids ``R G B`` mean RGB;
JFIF, ids ``1 2 3`` or no marker mean YCbCr) and, where the declaration and the frames disagree,
converts OpenSlide's samples with the JFIF (full-range BT.601) YCbCr->RGB transform.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend_openslide import OpenSlideSlide
from .reader_base import SlideError

_JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}  # JPEG baseline / extended
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian


def is_dicom(path: Path) -> bool:
    """True for a ``.dcm`` file, a file with the ``DICM`` preamble, or a folder holding ``.dcm`` files."""
    if path.is_dir():
        return any(path.glob("*.dcm"))
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def dicom_file(path: Path) -> Path:
    """The file OpenSlide opens for ``path``: the file itself, or for a folder its largest ``.dcm``
    (the level-0 instance; OpenSlide finds the series' other instances beside it)."""
    if not path.is_dir():
        return path
    files = sorted(path.glob("*.dcm"), key=lambda p: (-p.stat().st_size, p.name))
    if not files:
        raise SlideError(f"'{path}' is a folder without .dcm files; pass a slide file or a DICOM-WSI series folder.")
    return files[0]


def jpeg_colour_space(frame_head: bytes) -> str | None:
    """``"RGB"`` or ``"YCbCr"``: how a JPEG decoder reads this 3-component JPEG stream, from its APP0/APP14
    markers and frame header; None when ``frame_head`` holds no JPEG start."""
    i = frame_head.find(b"\xff\xd8\xff")
    if i < 0:
        return None
    i += 2
    jfif = False
    while i + 4 <= len(frame_head) and frame_head[i] == 0xFF:
        marker, length = frame_head[i + 1], int.from_bytes(frame_head[i + 2:i + 4], "big")
        body = frame_head[i + 4:i + 2 + length]
        if marker == 0xE0 and body.startswith(b"JFIF"):
            jfif = True
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            return "RGB" if body[11] == 0 else "YCbCr"
        elif marker in (0xC0, 0xC1, 0xC2) and len(body) >= 6 + 3 * 3:
            ids = bytes(body[6 + 3 * k] for k in range(body[5]))
            return "RGB" if (ids == b"RGB" and not jfif) else "YCbCr"
        elif marker == 0xDA:
            break
        i += 2 + length
    return "YCbCr"


def _first_frame_head(path: Path, limit: int = 4 << 20) -> bytes:
    """Bytes from the first JPEG start after the PixelData tag (at most 64 KB of it)."""
    with open(path, "rb") as f:
        data = f.read(limit)
    tag = data.rfind(_PIXEL_DATA_TAG)
    start = data.find(b"\xff\xd8\xff", tag if tag >= 0 else 0)
    return data[start:start + 65536] if start >= 0 else b""


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """JFIF YCbCr -> RGB, ``uint8 [h, w, 3]`` in and out (full range, BT.601, as libjpeg converts)."""
    y = ycc[:, :, 0].astype(np.float32)
    cb = ycc[:, :, 1].astype(np.float32) - 128.0
    cr = ycc[:, :, 2].astype(np.float32) - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=2)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


class DicomSlide(OpenSlideSlide):
    """DICOM-WSI through OpenSlide 4 (a ``.dcm`` file or a series folder); ``colour`` says how the frames
    were decoded (``"RGB"``, or ``"YCbCr frames declared RGB: converted"``)."""

    backend = "dicom"

    def __init__(self, path: Path) -> None:
        super().__init__(dicom_file(path))
        self.path = path
        props = self.properties
        if props.get("openslide.vendor") != "dicom":
            self.close()
            raise SlideError(f"'{path}' is not DICOM-WSI (OpenSlide reads it as "
                             f"{props.get('openslide.vendor')!r}); use --backend openslide or auto.")
        declared = props.get("dicom.PhotometricInterpretation", "")
        syntax = props.get("dicom.TransferSyntaxUID", "")
        frames = jpeg_colour_space(_first_frame_head(dicom_file(path))) if syntax in _JPEG_SYNTAXES else None
        self._convert = declared == "RGB" and frames == "YCbCr"
        self.colour = ("YCbCr JPEG frames declared RGB: converted YCbCr->RGB" if self._convert
                       else f"{declared or '?'} ({'JPEG ' + frames if frames else syntax or '?'})")
        if self.mpp:
            self.mpp_source = "DICOM PixelSpacing (OpenSlide openslide.mpp-x)"

    def _colour(self, rgb: np.ndarray) -> np.ndarray:
        return ycbcr_to_rgb(rgb) if self._convert else rgb
