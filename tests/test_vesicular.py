"""Synthetic vesicular nuclei: centres cleared, rims and everything else kept, labels unchanged, recipes reach it."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pathsegmentor.modeling.config import ConfigError
from pathsegmentor.training.augment import stain_concentrations
from pathsegmentor.training.data import PromptedCrops
from pathsegmentor.training.segmentation import load_train_config, run_training
from pathsegmentor.training.vesicular import hollow_nuclei, relative_depth, vesicular_crop

TEST_RECIPE = Path(__file__).resolve().parent.parent / "configs" / "train" / "test.yaml"


def _two_touching_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """Pink tissue with two round, dark purple nuclei of radius 10 that touch (ids 1 and 2)."""
    yy, xx = np.mgrid[:64, :64]
    inst = np.zeros((64, 64), np.int32)
    inst[(yy - 20) ** 2 + (xx - 20) ** 2 < 100] = 1
    inst[(yy - 20) ** 2 + (xx - 38) ** 2 < 100] = 2
    image = np.full((64, 64, 3), (235, 200, 220), np.uint8)
    image[inst > 0] = (80, 50, 140)
    return image, inst


def test_relative_depth_is_one_at_each_centre_and_zero_where_nuclei_touch():
    _, inst = _two_touching_nuclei()
    depth = relative_depth(inst)
    assert depth[20, 20] == pytest.approx(1.0) and depth[20, 38] == pytest.approx(1.0)
    assert depth[inst == 0].max() == 0.0
    assert depth[20, 29] == 0.0  # the pixel where the two nuclei meet is a border of both
    assert 0.0 < depth[20, 13] < depth[20, 16] < depth[20, 20]  # rises from the rim to the centre


def test_hollowing_pales_the_centre_keeps_the_rim_the_tissue_and_is_reproducible():
    image, inst = _two_touching_nuclei()
    out = hollow_nuclei(image, inst, np.random.default_rng(0), fraction=1.0, centre=(0.3, 0.3), grain=0.0,
                        nucleolus_prob=0.0)
    h0, h1 = stain_concentrations(image)[..., 0], stain_concentrations(out)[..., 0]
    assert h1[20, 20] == pytest.approx(0.3 * h0[20, 20], rel=0.1)  # 30 % of the centre's haematoxylin kept
    assert h1[20, 11] == pytest.approx(h0[20, 11], abs=0.02)  # the rim as it was
    np.testing.assert_array_equal(out[inst == 0], image[inst == 0])  # tissue untouched
    assert out.dtype == np.uint8 and image[20, 20].tolist() == [80, 50, 140]  # input untouched
    again = hollow_nuclei(image, inst, np.random.default_rng(0), fraction=1.0, centre=(0.3, 0.3), grain=0.0,
                          nucleolus_prob=0.0)
    np.testing.assert_array_equal(again, out)  # a pure function of the generator (exact resume)
    kept = hollow_nuclei(image, inst, np.random.default_rng(0), fraction=1.0, centre=(0.3, 0.3), grain=0.0,
                         nucleolus_prob=1.0)
    assert stain_concentrations(kept)[20, 20, 0] == pytest.approx(h0[20, 20], abs=0.02)  # a nucleolus stays dark
    assert stain_concentrations(kept)[20, 16, 0] < 0.8 * h0[20, 16]  # around it the chromatin is cleared
    nothing = hollow_nuclei(image, np.zeros_like(inst), np.random.default_rng(0), fraction=1.0)
    assert nothing is image


def test_only_nucleus_structures_are_hollowed_and_the_chance_is_honoured():
    image, inst = _two_touching_nuclei()
    ontology = SimpleNamespace(categories={"nuclei": SimpleNamespace(structure="nuclei"),
                                           "gland": SimpleNamespace(structure="gland")})
    args = (0.5, (0.3, 0.3))
    assert vesicular_crop(image, {"gland": inst}, ontology, np.random.default_rng(0), 1.0, *args) is image
    assert vesicular_crop(image, {"nuclei": inst}, ontology, np.random.default_rng(0), 0.0, *args) is image
    changed = [not np.array_equal(vesicular_crop(image, {"nuclei": inst}, ontology, np.random.default_rng(s), 0.5,
                                                 1.0, (0.3, 0.3)), image) for s in range(200)]
    assert 0.4 < np.mean(changed) < 0.6


@pytest.mark.parametrize("override, message", [
    ("data.vesicular_prob=1.5", "vesicular_prob=1.5"),
    ("data.vesicular_fraction=0", "vesicular_fraction=0"),
    ("data.vesicular_centre=[0.7, 0.3]", r"vesicular_centre=\[0.7, 0.3\]"),
])
def test_bad_vesicular_settings_are_named_before_any_output(tmp_path, override, message):
    corpus = SimpleNamespace(images={"train": {}}, ontology=None)
    with pytest.raises(ValueError, match=message):
        PromptedCrops(corpus, "train", load_train_config(TEST_RECIPE, [override]).data, model_mpp=0.5, seed=0)
    from data_builders import build
    from data_builders.synthetic import write_folder_dataset

    corpus_dir = tmp_path / "pathseg"
    build({"folder": write_folder_dataset(tmp_path / "src", n=4, size=64)}, corpus_dir, val_fraction=0.25, seed=0)
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        run_training(load_train_config(TEST_RECIPE, [f"output_dir={run}", override, f"data.corpus={corpus_dir}"]))
    assert not (run / "checkpoints").exists()


def test_the_v16_recipe_turns_it_on():
    data = load_train_config(TEST_RECIPE.parent / "tiny-v16-cpu.yaml", []).data
    assert data.vesicular_prob == 0.3 and data.vesicular_fraction == 0.5 and list(data.vesicular_centre) == [0.3, 0.7]
    assert load_train_config(TEST_RECIPE.parent / "tiny-v10-cpu.yaml", []).data.vesicular_prob == 0.0
