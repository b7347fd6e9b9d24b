"""Generic folder adapter: label maps, binary masks, instance modes, patient regex, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_builders import SourceFormatError, get_source
from pathsegmentor.ontology import Ontology


def write(root, stem, mask, sub="masks", suffix=".png"):
    (root / "images").mkdir(exist_ok=True)
    (root / sub).mkdir(exist_ok=True)
    Image.fromarray(np.full((*mask.shape, 3), 120, np.uint8)).save(root / "images" / f"{stem}.png")
    Image.fromarray(mask).save(root / sub / f"{stem}{suffix}")


def test_label_map_semantic_and_ignore(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[0:5, 0:5] = 4
    m[10:15, 10:15] = 4
    m[0:3, 15:20] = 2
    m[18:20, 0:2] = 9
    write(tmp_path, "P01_a", m)
    a = get_source("folder")(tmp_path, label_map={2: "inflammatory nuclei", 4: "tumor nuclei", 9: None}, mpp=0.25,
                             patient_regex=r"^(P\d+)_", region="colon")
    assert a.source_classes == ["inflammatory nuclei", "tumor nuclei"]
    s = next(a.load_item(a.list_items()[0]))
    assert s.patient_id == "P01" and s.organ == "colon" and s.mpp == 0.25
    assert set(s.masks) == {"inflammatory nuclei", "tumor nuclei"} and not s.has_instances["tumor nuclei"]
    assert s.masks["tumor nuclei"].sum() == 50 and s.ignore.sum() == 4
    b = get_source("folder")(tmp_path, label_map={2: "inflammatory nuclei", 4: "tumor nuclei", 9: None},
                             instances="components")
    s = next(b.load_item(b.list_items()[0]))
    assert s.masks["tumor nuclei"].max() == 2 and s.has_instances["tumor nuclei"]


def test_binary_and_pattern(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[1:6, 1:6] = 255
    m[10:18, 10:25] = 255
    write(tmp_path, "train_1", m, sub="anno", suffix="_anno.bmp")
    a = get_source("folder")(tmp_path, masks="anno", mask_pattern="{stem}_anno.bmp", binary="gland",
                             instances="components", mpp=0.5)
    s = next(a.load_item("images/train_1.png"))
    assert list(s.masks) == ["gland"] and s.masks["gland"].max() == 2 and s.patient_id == "train_1"


def test_consep_codes_map_like_the_consep_adapter():
    """configs/data/shared.yaml's CoNSeP label map gives the categories the consep adapter's table gives."""
    import yaml
    from pathlib import Path

    from data_builders.sources.consep import TYPE_CODES

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/data/shared.yaml").read_text())
    lm = recipe["sources"]["consep"]["label_map"]
    onto = Ontology.load()
    table = onto.mapping("consep")
    assert {int(k): onto.resolve(v) for k, v in lm.items()} == {c: table[n] for c, n in TYPE_CODES.items()}
    assert sorted(recipe["sources"]["consep"]["exhaustive"]) == sorted(onto.exhaustive("consep"))


def test_bad_inputs(tmp_path):
    m = np.zeros((10, 10), np.uint8)
    m[0, 0] = 8
    write(tmp_path, "x", m)
    a = get_source("folder")(tmp_path, label_map={1: "other nuclei", 2: "inflammatory nuclei"})
    with pytest.raises(SourceFormatError, match=r"unknown class code\(s\) \[8\]; the label map knows"):
        next(a.load_item("images/x.png"))
    Image.fromarray(np.zeros((11, 10), np.uint8)).save(tmp_path / "masks" / "x.png")
    with pytest.raises(SourceFormatError, match="mask size 10x11 does not match the image size 10x10"):
        next(a.load_item("images/x.png"))
    (tmp_path / "masks" / "x.png").unlink()
    with pytest.raises(SourceFormatError, match="no mask"):
        next(a.load_item("images/x.png"))
    with pytest.raises(ValueError, match="exactly one of `label_map`"):
        get_source("folder")(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceFormatError, match="no images matching"):
        get_source("folder")(tmp_path, images="empty", binary="gland").list_items()
