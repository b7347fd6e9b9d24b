"""``mpp="auto"``: the patch features and the shipped pixel-size regressor."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pathsegmentor.inference import mpp_features as mf
from pathsegmentor.inference.mpp_estimate import TEST_SCALES, MppEstimateError, MppRegressor, estimate_mpp


def _he_like(n: int = 600, r: float = 7.0, seed: int = 0) -> np.ndarray:
    """Pink background with purple discs of radius ~``r`` px (nuclei), noise."""
    rng = np.random.default_rng(seed)
    img = np.full((n, n, 3), (235, 200, 220), np.float32)
    yy, xx = np.mgrid[:n, :n]
    for _ in range(n * n // 900):
        cy, cx = rng.integers(0, n, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= (r * rng.uniform(0.7, 1.3)) ** 2] = (90, 60, 150)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def test_patch_features_shape_and_bad_patch():
    f = mf.patch_features(_he_like(256))
    assert f.shape == (mf.FEATURES,) and f.dtype == np.float32 and np.isfinite(f[: mf.BINS]).all()
    with pytest.raises(ValueError, match="square RGB patch of 128-256 px"):
        mf.patch_features(np.zeros((64, 64, 3), np.uint8))


def test_estimate_follows_the_scale_and_reports_its_range():
    a = _he_like()
    b = np.asarray(Image.fromarray(a).resize((1200, 1200), Image.Resampling.BILINEAR))  # 2x finer pixels
    ea, eb = estimate_mpp(a), estimate_mpp(b)
    assert 0.3 < eb.mpp / ea.mpp < 0.7  # ideal 0.5
    assert ea.low < ea.mpp < ea.high and ea.patches == 16 * len(TEST_SCALES) and ea.nuclei >= 50
    assert "regressor" in ea.method and "µm/px" in ea.describe()
    assert estimate_mpp(a).mpp == ea.mpp  # fixed seed: the same patches, the same answer


def test_test_time_scales_read_more_patches_and_agree():
    a = _he_like()
    one, three = estimate_mpp(a, scales=(1.0,)), estimate_mpp(a, scales=(1 / 1.4, 1.0, 1.4))
    assert one.patches == 16 and three.patches == 48
    assert 0.8 < three.mpp / one.mpp < 1.25  # each patch's estimate is corrected back by its factor
    with pytest.raises(ValueError, match="must include 1.0"):
        estimate_mpp(a, scales=(0.5, 2.0))


def test_refusals_name_the_fix():
    with pytest.raises(MppEstimateError, match="--mpp X"):
        estimate_mpp(np.full((300, 300, 3), 240, np.uint8))  # glass: no nuclei
    with pytest.raises(MppEstimateError, match="smaller than 128 px"):
        estimate_mpp(_he_like(100))
    with pytest.raises(ValueError, match="refit it with `python bench/mpp_auto.py --fit`"):
        MppRegressor({}, {"features": "old-v0", "cv_log_std": "0.1"})
