"""``--mpp auto`` for slides: read a few tissue regions of level 0 and estimate the pixel size from them
(:func:`pathsegmentor.inference.mpp_estimate.estimate_mpp`); the reader then carries the estimate as its
mpp, with the source saying so."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..inference.mpp_estimate import MppEstimateError, estimate_mpp
from .reader_base import SlideError, SlideReader
from .tissue import tissue_mask


def tissue_regions(reader: SlideReader, count: int = 4, size: int = 1024) -> list[np.ndarray]:
    """Up to ``count`` level-0 regions (``uint8 [size, size, 3]`` or smaller at the edges) centred on the
    thumbnail's tissue, spread over it (evenly spaced in the tissue pixels' order)."""
    thumb, lv = reader.thumbnail(1024)
    mask = tissue_mask(thumb)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return []
    h0, w0 = reader.dimensions
    fy, fx = h0 / thumb.shape[0], w0 / thumb.shape[1]
    picks = np.linspace(0, len(ys) - 1, count + 2)[1:-1].round().astype(int)
    regions = []
    for i in picks:
        cy, cx = int(ys[i] * fy), int(xs[i] * fx)
        y, x = max(0, min(h0 - size, cy - size // 2)), max(0, min(w0 - size, cx - size // 2))
        regions.append(reader.read_region(0, y, x, min(size, h0), min(size, w0)))
    return regions


def estimate_slide_mpp(reader: SlideReader) -> dict[str, Any]:
    """Estimate level-0 mpp from tissue regions and set it on ``reader`` (``mpp_source`` names the
    estimate); returns the estimate's ``to_dict()`` for the summary. Raises :class:`SlideError` when
    the estimate is unreliable (the message says ``--mpp X``)."""
    regions = tissue_regions(reader)
    try:
        est = estimate_mpp(regions)
    except MppEstimateError as e:
        raise SlideError(f"'{reader.path.name}': {e}") from None
    reader.set_mpp(est.mpp)
    reader.mpp_source = f"--mpp auto: {est.describe()}"
    return est.to_dict()
