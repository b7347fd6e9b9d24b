"""Every inference rule in one InferenceConfig, written by commands (issue 30): the shipped config.json's inference
section and its provenance are rebuilt from the recipe's settings file and the calibration output and compared;
``pathsegmentor info`` prints every setting with its source; bad settings are refused before anything is written."""
from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest

from pathsegmentor.modeling.config import ConfigError
from pathsegmentor.modeling.inference_config import InferenceConfig, inference_field_docs

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pathsegmentor" / "weights" / "pathsegmentor-tiny"
RECIPE = "configs/inference/tiny-v10.yaml"  # as `make settings-tiny` passes it (from the repo root)
CALIBRATION = SHIPPED / "training" / "presence_calibration_train.json"


def test_shipped_inference_section_is_rebuilt_from_the_recipe_and_the_calibration(tmp_path, monkeypatch):
    """`make settings-tiny` on the shipped config with its inference section scrambled gives back the shipped section
    and provenance exactly: no value in it was set by hand."""
    from pathsegmentor.evaluation.settings import main

    monkeypatch.chdir(REPO)
    shipped = json.loads((SHIPPED / "config.json").read_text())
    model = tmp_path / "model"
    model.mkdir()
    scrambled = dict(shipped, inference={"presence_threshold": 0.99, "instances": "hv", "tile_overlap": 7},
                     provenance={"inference.tile_overlap": "a hand edit", "training.note": "kept"})
    (model / "config.json").write_text(json.dumps(scrambled))
    assert main([str(model), RECIPE, "--calibration", str(CALIBRATION)]) == 0
    rebuilt = json.loads((model / "config.json").read_text())
    assert rebuilt["inference"] == shipped["inference"]
    inference_prov = {k: v for k, v in rebuilt["provenance"].items() if k.startswith("inference.")}
    assert inference_prov == shipped["provenance"]
    assert rebuilt["provenance"]["training.note"] == "kept"  # other provenance entries are left alone
    # every field of InferenceConfig is in the shipped section: nothing is left to a reader's fallback
    assert set(shipped["inference"]) == {f.name for f in fields(InferenceConfig)}
    # the calibrated threshold is the calibration file's, and its source says so
    cal = json.loads(CALIBRATION.read_text())
    assert shipped["inference"]["presence_threshold"] == round(cal["calibrated"]["threshold"], 4)
    assert shipped["provenance"]["inference.presence_threshold"].startswith("calibration: ")
    assert shipped["provenance"]["inference.instances"].startswith(f"recipe: {RECIPE}: ")


def test_every_inference_setting_has_a_docstring_and_a_range_check():
    docs = inference_field_docs()
    assert set(docs) == {f.name for f in fields(InferenceConfig)} and all(len(d) > 20 for d in docs.values())
    InferenceConfig().check()
    for bad, match in [(dict(presence_threshold=1.5), "presence_threshold is 1.5; it must be in"),
                       (dict(instances="stardist"), "instances is 'stardist'; available"),
                       (dict(geometric_box="nearest"), "geometric_box is 'nearest'; available"),
                       (dict(geometric_concepts=("nuclei",)), "geometric_concepts"),
                       (dict(tissue_min_um2=-1.0), "tissue_min_um2 is -1.0; it must be >= 0")]:
        with pytest.raises(ValueError, match=match):
            InferenceConfig(**bad).check()


def test_settings_command_refuses_bad_keys_and_values_and_writes_nothing(tmp_path):
    from pathsegmentor.evaluation.settings import main, write_inference

    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(SHIPPED / "config.json", model / "config.json")
    before = (model / "config.json").read_text()
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("instance: border  # a typo\n")
    with pytest.raises(ConfigError, match=r"\['instance'\] in .* are not inference settings. Valid keys"):
        write_inference(model, bad_key)
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text("presence_threshold: 2.0\n")
    assert main([str(model), str(bad_value)]) == 2
    assert main([str(model), str(tmp_path / "missing.yaml")]) == 2
    assert (model / "config.json").read_text() == before  # nothing written
    good = tmp_path / "good.yaml"
    good.write_text("instances: border   # chosen on train\nmax_cell_component_um2: 4000.0\n")
    assert main([str(model), str(good)]) == 0
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["inference"]["instances"] == "border" and cfg["inference"]["presence_threshold"] == 0.5  # a default
    assert cfg["provenance"]["inference.instances"] == f"recipe: {good.as_posix()}: chosen on train"
    assert "inference.presence_threshold" not in cfg["provenance"]  # no calibration given: the default, said so


def test_info_prints_every_inference_setting_and_where_it_came_from(capsys):
    from pathsegmentor.cli import main

    assert main(["info", "pathsegmentor-tiny"]) == 0
    out = capsys.readouterr().out
    block = out.split("inference settings")[1].split("\nconfig:")[0]
    for f in fields(InferenceConfig):
        assert f"  {f.name} " in block, f.name
    assert "from: calibration: presence_calibration_train.json" in block
    assert f"from: recipe: {RECIPE}: border distance" in block
    assert block.count("from: default") == len(fields(InferenceConfig)) - 8  # 7 recipe lines + 1 calibration
    assert "working um/px per structure" in out and "'cell': 0.25" in out
