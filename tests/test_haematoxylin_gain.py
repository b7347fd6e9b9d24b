"""Haematoxylin gain: nuclei paler or darker by one drawn gain, eosin kept, the chance honoured, recipes reach it."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pathsegmentor.training.augment import haematoxylin_gain, stain_concentrations
from pathsegmentor.training.data import PromptedCrops
from pathsegmentor.training.segmentation import load_train_config

TEST_RECIPE = Path(__file__).resolve().parent.parent / "configs" / "train" / "test.yaml"


def _tile() -> np.ndarray:
    """Pink tissue with one dark purple nucleus (rows 8-15)."""
    image = np.full((24, 24, 3), (235, 200, 220), np.uint8)
    image[8:16, 8:16] = (80, 50, 140)
    return image


def test_the_gain_scales_haematoxylin_and_keeps_eosin():
    image = _tile()
    out = haematoxylin_gain(image, np.random.default_rng(0), 1.0, (0.5, 0.5))
    before, after = stain_concentrations(image), stain_concentrations(out)
    nucleus = (slice(8, 16), slice(8, 16))
    # uint8 rounding limits the match to about one grey level in optical density
    assert after[nucleus][..., 0].mean() == pytest.approx(0.5 * before[nucleus][..., 0].mean(), rel=0.03)
    assert after[nucleus][..., 1].mean() == pytest.approx(before[nucleus][..., 1].mean(), abs=0.03)
    assert out[nucleus].astype(int).sum() > image[nucleus].astype(int).sum()  # a paler nucleus is brighter
    assert out.dtype == np.uint8 and out.shape == image.shape


def test_gains_lie_in_the_range_and_the_chance_is_honoured():
    image = _tile()
    h0 = stain_concentrations(image)[8:16, 8:16, 0].mean()
    ratios, changed = [], 0
    for seed in range(200):
        out = haematoxylin_gain(image, np.random.default_rng(seed), 0.5, (0.4, 1.6))
        if out is not image:
            changed += 1
            ratios.append(stain_concentrations(out)[8:16, 8:16, 0].mean() / h0)
    assert 70 <= changed <= 130  # 200 draws at chance 0.5
    assert 0.38 <= min(ratios) < 0.6 and 1.2 < max(ratios) <= 1.65
    # log-uniform: log gains average the middle of [log 0.4, log 1.6], a gain of 0.8
    assert np.mean(np.log(ratios)) == pytest.approx(np.log(0.8), abs=0.1)
    again = haematoxylin_gain(image, np.random.default_rng(3), 1.0, (0.4, 1.6))
    assert np.array_equal(again, haematoxylin_gain(image, np.random.default_rng(3), 1.0, (0.4, 1.6)))
    assert haematoxylin_gain(image, np.random.default_rng(0), 0.0, (0.4, 1.6)) is image


@pytest.mark.parametrize("override, message", [
    ("data.h_gain_prob=1.5", "h_gain_prob=1.5"),
    ("data.h_gain=[0, 1]", r"h_gain=\[0.0, 1.0\]"),
    ("data.h_gain=[1.6, 0.4]", r"h_gain=\[1.6, 0.4\]"),
    ("data.h_gain=pale", "h_gain='pale'"),
])
def test_bad_gain_settings_are_named(override, message):
    corpus = SimpleNamespace(images={"train": {}}, ontology=None)
    with pytest.raises(ValueError, match=message):
        PromptedCrops(corpus, "train", load_train_config(TEST_RECIPE, [override]).data, model_mpp=0.5, seed=0)


def test_the_v20_recipe_turns_it_on_and_v18_does_not():
    data = load_train_config(TEST_RECIPE.parent / "tiny-v20-cpu.yaml", []).data
    assert data.h_gain_prob == 0.5 and list(data.h_gain) == [0.4, 1.6]
    v18 = load_train_config(TEST_RECIPE.parent / "tiny-v18-cpu.yaml", []).data
    assert v18.h_gain_prob == 0.0
    for key in ("vesicular_prob", "pigment_prob", "hed_sigma", "crop", "source_weights"):
        assert getattr(data, key) == getattr(v18, key)  # v18 plus one change


def test_the_stain_bench_draws_a_row_per_jitter_and_gain(tmp_path):
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("stain_augment", TEST_RECIPE.parents[2] / "bench" / "stain_augment.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tile = np.tile(_tile(), (3, 3, 1))  # 72 x 72
    out = tmp_path / "draws.png"
    bench.picture(tile, [(0.05, 0.02)], [(0.4, 1.6)], 2, out, crop=64)
    picture = np.asarray(Image.open(out))
    assert picture.shape == ((64 + 4 + 18) * 2 + 4, (64 + 4) * 3 + 4, 3)
    gain_row = picture[(64 + 4 + 18) + 4 + 18:, :]  # the second row: original, then two gain draws
    originals = [gain_row[:64, 4 + c * 68: 4 + c * 68 + 64] for c in range(3)]
    assert not np.array_equal(originals[0], originals[1])  # a draw changes the crop


def test_the_v21_recipe_is_v10s_with_the_gain():
    v21 = load_train_config(TEST_RECIPE.parent / "tiny-v21-cpu.yaml", [])
    v10 = load_train_config(TEST_RECIPE.parent / "tiny-v10-cpu.yaml", [])
    assert v21.data.h_gain_prob == 0.5 and list(v21.data.h_gain) == [0.4, 1.6] and v10.data.h_gain_prob == 0.0
    for key in ("vesicular_prob", "pigment_prob", "hed_sigma", "crop", "source_weights", "prompts_per_image"):
        assert getattr(v21.data, key) == getattr(v10.data, key)
    assert v21.freeze == v10.freeze and v21.loss == v10.loss and v21.optim == v10.optim
