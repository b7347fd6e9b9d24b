"""CoNSeP adapter on a fixture in the official layout (Images/*.png + Labels/*.mat written with savemat)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from data_builders import SourceFormatError, get_source


def write_item(root, split, stem, inst, types, with_inst_type=True, rgba=True):
    (root / split / "Images").mkdir(parents=True, exist_ok=True)
    (root / split / "Labels").mkdir(parents=True, exist_ok=True)
    h, w = inst.shape
    img = np.random.default_rng(0).integers(0, 255, (h, w, 4 if rgba else 3), np.uint8)
    Image.fromarray(img).save(root / split / "Images" / f"{stem}.png")
    type_map = np.zeros_like(inst)
    for i, t in enumerate(types, 1):
        type_map[inst == i] = t
    mat = {"inst_map": inst.astype(np.float64), "type_map": type_map.astype(np.float64),
           "inst_centroid": np.zeros((len(types), 2))}
    if with_inst_type:
        mat["inst_type"] = np.asarray(types, np.float64).reshape(-1, 1)
    savemat(root / split / "Labels" / f"{stem}.mat", mat)


def seven_nuclei(h=32, w=40):
    inst = np.zeros((h, w), np.int32)
    for k in range(7):
        inst[2 + 4 * (k % 7): 5 + 4 * (k % 7), 2 + 5 * k: 6 + 5 * k] = k + 1
    return inst


def test_official_layout_types(tmp_path):
    inst = seven_nuclei()
    write_item(tmp_path, "Train", "train_1", inst, [1, 2, 3, 4, 5, 6, 7])
    write_item(tmp_path, "Test", "test_1", inst, [4, 4, 4, 2, 2, 5, 5], with_inst_type=False)
    a = get_source("consep")(tmp_path)
    assert a.list_items() == ["Test/Images/test_1.png", "Train/Images/train_1.png"]
    s = next(a.load_item("Train/Images/train_1.png"))
    assert s.split == "train" and s.organ == "colon" and s.image.shape == (32, 40, 3)
    assert sorted(s.masks) == sorted(a.classes)
    for cls, m in s.masks.items():
        assert m.max() == 1 and (m > 0).sum() == 12 and s.has_instances[cls]
    assert (s.masks["malignant epithelial"] > 0).sum() == (inst == 4).sum()
    t = next(a.load_item("Test/Images/test_1.png"))  # inst_type absent: majority of type_map
    assert t.split == "test" and t.masks["malignant epithelial"].max() == 3 and t.masks["fibroblast"].max() == 2
    assert "other" not in t.masks


def test_bad_inputs(tmp_path):
    inst = seven_nuclei()
    write_item(tmp_path, "Train", "train_1", inst, [1, 2, 3, 9, 5, 6, 7])
    a = get_source("consep")(tmp_path)
    with pytest.raises(SourceFormatError, match=r"unknown type code\(s\) \[9\].*valid codes") as e:
        next(a.load_item("Train/Images/train_1.png"))
    assert e.value.path.endswith("train_1.mat")
    savemat(tmp_path / "Train" / "Labels" / "train_1.mat", {"type_map": np.zeros((32, 40))})
    with pytest.raises(SourceFormatError, match=r"missing key\(s\) \['inst_map'\]"):
        next(a.load_item("Train/Images/train_1.png"))
    savemat(tmp_path / "Train" / "Labels" / "train_1.mat", {"inst_map": np.zeros((30, 40)), "type_map": np.zeros((30, 40))})
    with pytest.raises(SourceFormatError, match="inst_map is 40x30 but the image is 40x32"):
        next(a.load_item("Train/Images/train_1.png"))
    (tmp_path / "Train" / "Labels" / "train_1.mat").write_bytes(b"MATLAB 5.0 garbage")
    with pytest.raises(SourceFormatError, match="cannot read .mat"):
        next(a.load_item("Train/Images/train_1.png"))
    with pytest.raises(SourceFormatError, match="no Images/"):
        get_source("consep")(tmp_path / "Train" / "Labels").list_items()
