"""Tiles cover the image with the requested overlap; blending is exact where it should be."""
from __future__ import annotations

import numpy as np
import pytest

from pathsegmentor.modeling.inference_config import InferenceConfig
from pathsegmentor.inference.tiling import BlendAccumulator, blend_weights, tile_grid

CASES = [(300, 263, 128, 32), (1000, 1000, 256, 64), (128, 128, 128, 32), (50, 700, 128, 0), (129, 257, 128, 127),
         (1, 1, 16, 4), (999, 17, 100, 10)]


@pytest.mark.parametrize("h,w,tile,overlap", CASES)
def test_tile_grid_covers_every_pixel_with_overlap(h, w, tile, overlap):
    tiles = tile_grid(h, w, tile, overlap)
    cover = np.zeros((h, w), np.int32)
    for t in tiles:
        assert 0 <= t.y0 < t.y1 <= h and 0 <= t.x0 < t.x1 <= w
        assert t.shape[0] <= tile and t.shape[1] <= tile
        assert t.shape == (min(tile, h), min(tile, w))  # full-size tiles: the last is flush with the edge
        cover[t.y0:t.y1, t.x0:t.x1] += 1
    assert (cover >= 1).all()
    for axis_starts, length in ((sorted({t.y0 for t in tiles}), h), (sorted({t.x0 for t in tiles}), w)):
        for a, b in zip(axis_starts, axis_starts[1:]):
            assert min(a + tile, length) - b >= overlap  # neighbours share at least `overlap` pixels
    assert len(tiles) == len(set(tiles))


def test_tile_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(100, 100, 32, 32)
    with pytest.raises(ValueError, match="tile"):
        tile_grid(100, 100, 0, 0)


@pytest.mark.parametrize("h,w,tile,overlap", CASES)
def test_blending_a_constant_gives_the_constant(h, w, tile, overlap):
    acc = BlendAccumulator(2, h, w, overlap)
    for t in tile_grid(h, w, tile, overlap):
        acc.add(t, np.stack([np.full(t.shape, 0.3, np.float32), np.full(t.shape, 1.0, np.float32)]))
    out = acc.result()
    assert out.shape == (2, h, w)
    np.testing.assert_allclose(out[0], 0.3, atol=1e-6)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-6)


@pytest.mark.parametrize("h,w,tile,overlap", CASES)
def test_away_from_seams_the_single_tile_value_is_kept(h, w, tile, overlap):
    tiles = tile_grid(h, w, tile, overlap)
    rng = np.random.default_rng(0)
    acc = BlendAccumulator(1, h, w, overlap)
    owner = np.full((h, w), -1)
    cover = np.zeros((h, w), np.int32)
    preds = []
    for i, t in enumerate(tiles):
        p = rng.random((1, *t.shape), dtype=np.float32)  # each tile predicts something different
        preds.append(p)
        acc.add(t, p)
        cover[t.y0:t.y1, t.x0:t.x1] += 1
        owner[t.y0:t.y1, t.x0:t.x1] = i
    out = acc.result()[0]
    single = cover == 1
    expected = np.zeros((h, w), np.float32)
    for i, t in enumerate(tiles):
        region = single[t.y0:t.y1, t.x0:t.x1] & (owner[t.y0:t.y1, t.x0:t.x1] == i)
        expected[t.y0:t.y1, t.x0:t.x1][region] = preds[i][0][region]
    np.testing.assert_allclose(out[single], expected[single], atol=1e-6)
    # in the seams the blend stays within the range of the predictions
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_blend_weights_full_on_image_borders():
    tiles = tile_grid(300, 300, 128, 32)
    w = blend_weights(tiles[0], 300, 300, 32)
    assert w[0, 0] == 1.0 and w[0, :96].min() == 1.0  # top-left tile: no ramp on the image's own edges
    assert w[-1, -1] < 0.05  # ramps towards the inner corner
    assert (w > 0).all()


class _HalfPresentStub:
    """A 'model' with 64 px windows whose probability is 0.9 everywhere and whose presence is 1 only in windows
    that are mostly bright: segment() must paint only where a window judged the prompt present."""

    name = "half-present-stub"
    device = "cpu"

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.config = SimpleNamespace(preprocess=SimpleNamespace(mpp=0.5, input_size=64, structure_mpp={}),
                                      inference=InferenceConfig(tile_overlap=16))

    def encode_text(self, prompts):
        import torch

        return torch.zeros(len(prompts), 1)

    def predict_window(self, window, text_emb, points, boxes, hires):
        n = text_emb.shape[0]
        present = float(window.mean() > 127)
        return np.full((n, *window.shape[:2]), 0.9, np.float32), np.full(n, present, np.float32)


def test_segment_gates_each_tile_by_its_own_presence():
    from pathsegmentor.inference.predictor import Predictor

    img = np.zeros((64, 200, 3), np.uint8)
    img[:, 100:] = 255  # right half bright: its windows say "present", the left ones "absent"
    res = Predictor(_HalfPresentStub()).segment(img, ["tumor"], vocabulary="open")
    assert res.presence[0] == 1.0 and (res.probs[0] > 0.5).all()  # probabilities are not gated
    # windows start at x 0, 48 (both mostly dark: absent), 96 and 136 (present)
    assert [t.x0 for t in tile_grid(64, 200, 64, 16)] == [0, 48, 96, 136]
    assert not res.masks[0][:, :96].any()  # covered by absent windows only: nothing painted
    assert res.masks[0][:, 112:].all()  # covered by present windows only: their pixels
