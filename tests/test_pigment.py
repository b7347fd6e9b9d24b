"""Synthetic pigment negatives: what is pasted, what is cleared, and that a recipe reaches them."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pathsegmentor.modeling.config import ConfigError
from pathsegmentor.training.data import PromptedCrops
from pathsegmentor.training.pigment import paste_pigment, pigment_alpha
from pathsegmentor.training.segmentation import load_train_config, run_training

TEST_RECIPE = Path(__file__).resolve().parent.parent / "configs" / "train" / "test.yaml"


def _tile(size: int = 128) -> tuple[np.ndarray, dict, dict]:
    """Pale tissue with a 4 x 4 lattice of square purple nuclei, each its own instance."""
    image = np.full((size, size, 3), (235, 200, 220), np.uint8)
    inst = np.zeros((size, size), np.int32)
    for k, (y, x) in enumerate([(y, x) for y in range(8, size, 32) for x in range(8, size, 32)], start=1):
        image[y:y + 14, x:x + 14] = (90, 60, 150)
        inst[y:y + 14, x:x + 14] = k
    return image, {"nuclei": (inst > 0).astype(np.uint8)}, {"nuclei": inst}


def test_alpha_covers_about_the_asked_fraction_in_clumps():
    rng = np.random.default_rng(0)
    for coverage in (0.05, 0.2, 0.35):
        alpha = pigment_alpha(128, coverage, rng)
        assert alpha.shape == (128, 128) and alpha.min() >= 0.0 and alpha.max() <= 1.0
        assert abs(float((alpha > 0.5).mean()) - coverage) < 0.05
    with pytest.raises(ValueError, match="coverage"):
        pigment_alpha(64, 1.0, rng)


def test_paste_darkens_the_covered_pixels_and_clears_every_target_there():
    image, targets, instances = _tile()
    out, t2, i2 = paste_pigment(image, targets, instances, np.random.default_rng(3), coverage=(0.25, 0.3))
    drop = image.astype(int).sum(-1) - out.astype(int).sum(-1)  # how much darker each pixel became
    tissue = targets["nuclei"] == 0
    assert 0.15 < (drop[tissue] > 300).mean() < 0.4  # about the asked share of the pale tissue turned near-black
    cleared = (targets["nuclei"] == 1) & (t2["nuclei"] == 0)
    assert cleared.any() and drop[cleared].min() > 0  # a nucleus pixel is cleared only under pigment
    assert (i2["nuclei"][cleared] == 0).all() and (i2["nuclei"][t2["nuclei"] == 1] > 0).all()
    kept = (targets["nuclei"] == 1) & (drop < 20)
    assert kept.any() and (t2["nuclei"][kept] == 1).all()  # nuclei off the pigment stay nuclei
    assert t2["nuclei"].dtype == np.uint8 and i2["nuclei"].dtype == np.int32
    assert image.max() == 235 and targets["nuclei"].sum() == 16 * 14 * 14  # inputs untouched
    again = paste_pigment(image, targets, instances, np.random.default_rng(3), coverage=(0.25, 0.3))
    np.testing.assert_array_equal(again[0], out)  # a pure function of the generator (exact resume)


def test_bad_pigment_settings_are_a_config_error_naming_the_value(tmp_path):
    from types import SimpleNamespace

    cfg = load_train_config(TEST_RECIPE, ["data.pigment_prob=0.2", "data.pigment_coverage=[0.05, 0.35]"])
    assert cfg.data.pigment_prob == 0.2
    corpus = SimpleNamespace(images={"train": {}}, ontology=None)
    bad = load_train_config(TEST_RECIPE, ["data.pigment_coverage=[0.4, 0.1]"])
    with pytest.raises(ValueError, match=r"pigment_coverage=\[0.4, 0.1\]"):
        PromptedCrops(corpus, "train", bad.data, model_mpp=0.5, seed=0)
    from data_builders import build
    from data_builders.synthetic import write_folder_dataset

    corpus_dir = tmp_path / "pathseg"
    build({"folder": write_folder_dataset(tmp_path / "src", n=4, size=64)}, corpus_dir, val_fraction=0.25, seed=0)
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="pigment_prob=1.5"):
        run_training(load_train_config(TEST_RECIPE, [f"output_dir={run}", "data.pigment_prob=1.5",
                                                     f"data.corpus={corpus_dir}"]))
    assert not (run / "checkpoints").exists()


def test_a_recipe_with_pigment_pastes_it_into_its_crops_and_only_there(tmp_path):
    from data_builders import build, load_pathseg
    from data_builders.synthetic import write_folder_dataset

    corpus_dir = tmp_path / "pathseg"
    build({"folder": write_folder_dataset(tmp_path / "src", n=4, size=64)}, corpus_dir, val_fraction=0.25, seed=0)
    corpus = load_pathseg(corpus_dir)
    plain = load_train_config(TEST_RECIPE, []).data
    with_pigment = load_train_config(TEST_RECIPE, ["data.pigment_prob=1.0", "data.pigment_coverage=[0.3, 0.3]"]).data
    a = PromptedCrops(corpus, "train", plain, model_mpp=0.5, seed=0).view(0, 0)
    b = PromptedCrops(corpus, "train", with_pigment, model_mpp=0.5, seed=0).view(0, 0)
    dark_a, dark_b = (v["image"].astype(int).sum(-1) < 330 for v in (a, b))
    assert dark_b.mean() > dark_a.mean() + 0.2, (dark_a.mean(), dark_b.mean())  # ~30 % became pigment
    for label, target in b["targets"].items():
        assert target[dark_b & ~dark_a].sum() <= a["targets"][label][dark_b & ~dark_a].sum()
        assert target.sum() <= a["targets"][label].sum()


def test_every_tiny_recipe_loads_and_only_v8_and_later_paste_pigment():
    recipes = sorted((TEST_RECIPE.parent).glob("tiny-*.yaml"))
    assert any(r.name == "tiny-v8-cpu.yaml" for r in recipes)
    for recipe in recipes:
        data = load_train_config(recipe, []).data
        version = re.match(r"tiny-v(\d+)-", recipe.name)  # tiny-cpu.yaml: v1
        pigmented = version is not None and int(version.group(1)) >= 8  # v8 and the legs that continue it
        assert (data.pigment_prob > 0) == pigmented, recipe.name
    v8 = load_train_config(TEST_RECIPE.parent / "tiny-v8-cpu.yaml", []).data
    assert v8.pigment_prob == 0.2 and list(v8.pigment_coverage) == [0.05, 0.35]
