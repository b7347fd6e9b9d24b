"""Prediction of one band of a slide run: its tissue tiles through the model, each gated by its presence and
blended into the band's part arrays (background tiles are skipped)."""
from __future__ import annotations

import numpy as np

from ..inference.tiling import blend_weights, gate_by_presence
from .bands import BandPlan, band_arrays
from .grid import WorkGrid
from .tissue import TissueMap


def predict_band(model, grid: WorkGrid, plan: BandPlan, band, text_emb, tissue: TissueMap | None, dtype: str,
                 hires, bar=None, sep_rows: list[int] | None = None, *, presence_threshold: float = 0.0,
                 channels: int = 3) -> tuple[dict[str, np.ndarray], int, int]:
    """Predict the tiles of one band and blend them into its part arrays (see ``bands.band_arrays``).

    Each tile's probabilities are gated by its own presence (:func:`~pathsegmentor.inference.tiling.gate_by_presence`
    at ``presence_threshold``), as ``segment()`` gates its windows: a tile that judges a prompt absent adds no mask
    pixels for it. ``sep_rows``: prompts whose separation maps (``channels`` per prompt) are kept too, as planes
    ``P + channels * k + c`` (k-th such prompt, channel c), offsets stored as ``(x + 1) / 2`` so every plane lies in
    [0, 1] like a probability."""
    sep_rows = list(sep_rows or [])
    P = int(text_emb.shape[0]) + channels * len(sep_rows)
    n_text = int(text_emb.shape[0])
    H, W = plan.height, plan.width
    tiles = plan.tiles(band)
    todo = [t for t in tiles if tissue is None or tissue.tile_has_tissue(t.y0, t.x0, t.y1, t.x1)]
    n_skip = len(tiles) - len(todo)
    # the canvas spans only the predicted tiles' columns: glass costs neither memory nor time
    x0 = min((t.x0 for t in todo), default=0)
    x1 = max((t.x1 for t in todo), default=0)
    sums = np.zeros((P, band.hi - band.lo, x1 - x0), np.float32)
    weight = np.zeros((band.hi - band.lo, x1 - x0), np.float32)
    presence = np.zeros(n_text, np.float32)
    n_pred = 0
    if bar is not None and n_skip:
        bar.update(n_skip)
    for t in todo:
        window = grid.read(t.y0, t.y1, t.x0, t.x1)
        if sep_rows:
            pred = model.predict_window_maps(window, text_emb, None, None, hires, separation=True)
            maps = pred.separation[sep_rows].copy()
            if maps.shape[1] != channels:
                raise ValueError(f"the model predicts {maps.shape[1]} separation maps per prompt, the slide run "
                                 f"expected {channels} (mask_decoder.separation_channels in the model's config)")
            maps[:, :2] = (maps[:, :2] + 1.0) / 2.0
            pres = pred.presence
            probs = np.concatenate([gate_by_presence(pred.probs, pres, presence_threshold),
                                    maps.reshape(-1, *maps.shape[-2:])])
        else:
            probs, pres = model.predict_window(window, text_emb, None, None, hires)
            probs = gate_by_presence(probs, pres, presence_threshold)
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

