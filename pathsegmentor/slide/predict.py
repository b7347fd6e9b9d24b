"""Prediction of one band of a slide run: its tissue tiles through the model, blended into the band's
part arrays (background tiles are skipped)."""
from __future__ import annotations

import numpy as np

from ..inference.tiling import blend_weights
from .bands import BandPlan, band_arrays
from .grid import WorkGrid
from .tissue import TissueMap


def predict_band(model, grid: WorkGrid, plan: BandPlan, band, text_emb, tissue: TissueMap | None, dtype: str,
                 hires, bar=None) -> tuple[dict[str, np.ndarray], int, int]:
    """Predict the tiles of one band and blend them into its part arrays (see ``bands.band_arrays``)."""
    P = int(text_emb.shape[0])
    H, W = plan.height, plan.width
    tiles = plan.tiles(band)
    todo = [t for t in tiles if tissue is None or tissue.tile_has_tissue(t.y0, t.x0, t.y1, t.x1)]
    n_skip = len(tiles) - len(todo)
    # the canvas spans only the predicted tiles' columns: glass costs neither memory nor time
    x0 = min((t.x0 for t in todo), default=0)
    x1 = max((t.x1 for t in todo), default=0)
    sums = np.zeros((P, band.hi - band.lo, x1 - x0), np.float32)
    weight = np.zeros((band.hi - band.lo, x1 - x0), np.float32)
    presence = np.zeros(P, np.float32)
    n_pred = 0
    if bar is not None and n_skip:
        bar.update(n_skip)
    for t in todo:
        probs, pres = model.predict_window(grid.read(t.y0, t.y1, t.x0, t.x1), text_emb, None, None, hires)
        w = blend_weights(t, H, W, plan.overlap)
        sums[:, t.y0 - band.lo:t.y1 - band.lo, t.x0 - x0:t.x1 - x0] += probs * w
        weight[t.y0 - band.lo:t.y1 - band.lo, t.x0 - x0:t.x1 - x0] += w
        presence = np.maximum(presence, pres)
        n_pred += 1
        if bar is not None:
            bar.update(1)
    arrays = band_arrays(plan, band, sums, weight, dtype, x_offset=x0)
    arrays["presence"] = presence
    arrays["tiles"] = np.array([n_pred, n_skip], np.int64)
    return arrays, n_pred, n_skip

