"""GlaS adapter on a fixture in the official download layout (BMP pairs + Grade.csv)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_builders import SourceFormatError, get_source

GRADE = ("name,patient ID,grade (GlaS),grade (Sirinukunwattana et al. 2015)\n"
         "testA_1,4,benign,healthy\ntrain_1,1,malignant,adenomatous\ntrain_2,2,benign,healthy\n")


def _pair(root, stem, n_glands, size=(30, 40)):
    img = np.random.default_rng(len(stem)).integers(0, 255, (*size, 3), np.uint8)
    Image.fromarray(img).save(root / f"{stem}.bmp")
    anno = np.zeros(size, np.uint8)
    for k in range(n_glands):
        anno[2 + 8 * k: 7 + 8 * k, 3:12] = k + 1
    Image.fromarray(anno).save(root / f"{stem}_anno.bmp")


@pytest.fixture
def glas_root(tmp_path):
    for stem, n in (("train_1", 2), ("train_2", 3), ("train_10", 1), ("testA_1", 1), ("testB_1", 0)):
        _pair(tmp_path, stem, n)
    (tmp_path / "Grade.csv").write_text(GRADE)
    return tmp_path


def test_official_layout(glas_root):
    a = get_source("glas")(glas_root)
    assert a.list_items() == ["testA_1.bmp", "testB_1.bmp", "train_1.bmp", "train_2.bmp", "train_10.bmp"]
    s = next(a.load_item("train_1.bmp"))
    assert s.split == "train" and s.patient_id == "glas-1" and list(s.masks) == ["malignant"]
    assert s.masks["malignant"].max() == 2 and (s.masks["malignant"] == 1).sum() == 45 and s.exhaustive is None
    assert next(a.load_item("testA_1.bmp")).split == "test"
    assert list(next(a.load_item("train_2.bmp")).masks) == ["benign"]
    s = next(a.load_item("train_10.bmp"))  # not in Grade.csv: ungraded
    assert list(s.masks) == ["gland"] and s.exhaustive == ["gland"]
    assert next(a.load_item("testB_1.bmp")).masks == {}


def test_bad_inputs(glas_root, tmp_path_factory):
    a = get_source("glas")(glas_root)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(glas_root / "train_2_anno.bmp")
    with pytest.raises(SourceFormatError, match="does not match the image size"):
        next(a.load_item("train_2.bmp"))
    (glas_root / "train_1_anno.bmp").unlink()
    with pytest.raises(SourceFormatError, match="train_1_anno.bmp is missing"):
        next(a.load_item("train_1.bmp"))
    p = glas_root / "train_10.bmp"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(SourceFormatError, match="truncated or corrupt"):
        next(a.load_item("train_10.bmp"))
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(SourceFormatError, match="no train_N.bmp"):
        get_source("glas")(empty).list_items()
    (empty / "x.bmp").touch()
    (empty / "Grade.csv").write_text("name,foo\n")
    with pytest.raises(SourceFormatError, match="lacks"):
        get_source("glas")(empty)
