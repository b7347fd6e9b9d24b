"""Tissue / gland / whole-slide source adapters on fixtures in each source's real on-disk format, and the mapping
tables of the fourteen sources in data_builders/sources/{pannuke, ..., paip2019}.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fixtures_formats as ff
from data_builders.base import SourceFormatError, get_source

REPO = Path(__file__).resolve().parent.parent
MINE = ("pannuke", "cpm17", "tnbc", "cryonuseg", "nuinsseg", "monusac", "lizard", "conic", "crag", "bcss", "segpath",
        "wsss4luad", "digestpath", "paip2019")


def _samples(name, root, **options):
    ad = get_source(name)(root, **options)
    return {s.sample_id: s for item in ad.list_items() for s in ad.load_item(item)}


def _px(s) -> dict[str, int]:
    return {k: int((m > 0).sum()) for k, m in s.masks.items()}


# ------------------------------------------------------------------------------------------------ crag
def test_crag(tmp_path):
    spec = ff.write_crag(tmp_path)
    got = _samples("crag", tmp_path)
    assert sorted(got) == ["train_1", "train_2", "valid_test_1"]
    for folder, imgs in spec.items():
        for stem, rects in imgs.items():
            s = got[stem if folder == "train" else f"{folder}_{stem}"]
            m = s.masks["gland"]
            assert m.dtype == np.int32 and int(m.max()) == len(rects) and _px(s) == {"gland": ff.area(rects)}
            assert s.split == ("train" if folder == "train" else "test") and s.organ == "colon"
    assert _samples("crag", tmp_path, valid_split="validation")["valid_test_1"].split == "validation"


def test_crag_size_mismatch(tmp_path):
    ff.write_crag(tmp_path)
    ff.write_png(tmp_path / "train" / "Annotation" / "train_2.png", np.zeros((64, 60), np.uint8))
    ad = get_source("crag")(tmp_path)
    with pytest.raises(SourceFormatError, match=r"Annotation/train_2\.png: mask size 60x64 does not match"):
        list(ad.load_item("train/Images/train_2.png"))


# ------------------------------------------------------------------------------------------------ bcss
def test_bcss(tmp_path):
    ff.write_bcss(tmp_path)
    got = _samples("bcss", tmp_path)
    a = got["TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500"]
    assert _px(a) == {"tumor": 1280, "stroma": 1080, "fat": 1224}
    assert int(a.ignore.sum()) == 512  # outside_roi
    assert a.patient_id == "TCGA-A1-A0SK" and a.mpp == 0.25 and a.organ == "breast"
    assert all(not v for v in a.has_instances.values())
    b = got["TCGA-A2-A0CM-DX1_xmin18562_ymin56852_MPP-0.2500"]
    assert _px(b) == {"lymphocytic_infiltrate": 4071, "dcis": 25} and b.ignore is None
    c = got["TCGA-A2-A0CM-DX1_xmin1_ymin2_MPP-0.2500"]
    assert _px(c) == {"exclude": 2048, "blood_vessel": 2048} and c.patient_id == b.patient_id


def test_bcss_unknown_code_and_bad_tsv(tmp_path):
    spec = ff.write_bcss(tmp_path)
    stem = next(iter(spec))
    m = np.zeros((64, 64), np.uint8)
    m[:2, :2] = 30
    ff.write_png(tmp_path / "masks" / f"{stem}.png", m)
    ad = get_source("bcss")(tmp_path)
    with pytest.raises(SourceFormatError, match=r"unknown class code\(s\) \[30\]; valid codes: 0=outside_roi, 1=tumor"):
        list(ad.load_item(f"images/{stem}.png"))
    (tmp_path / "gtruth_codes.tsv").write_text("name,code\ntumor,1\n")
    with pytest.raises(SourceFormatError, match=r"gtruth_codes\.tsv: header.*expected 'label<TAB>GT_code'"):
        list(get_source("bcss")(tmp_path).load_item(f"images/{stem}.png"))


# ------------------------------------------------------------------------------------------------ segpath
def test_segpath(tmp_path):
    ff.write_segpath(tmp_path)
    got = _samples("segpath", tmp_path)
    assert sorted(got) == ["CD235a_RBC_0001", "PanCK_Epithelium_0001", "PanCK_Epithelium_0002"]
    a, b, c = got["PanCK_Epithelium_0001"], got["PanCK_Epithelium_0002"], got["CD235a_RBC_0001"]
    assert _px(a) == {"PanCK_Epithelium": 600} and a.split == "train" and a.exhaustive == ["epithelium"]
    assert b.masks == {} and b.split == "test" and b.exhaustive == ["epithelium"]  # a true negative for epithelium
    assert _px(c) == {"CD235a_RBC": 25} and c.split is None and c.exhaustive == ["red blood cells"]
    assert a.mpp == 0.22 and set(np.unique(a.masks["PanCK_Epithelium"]).tolist()) == {0, 1}


def test_segpath_non_binary_mask(tmp_path):
    ff.write_segpath(tmp_path)
    ff.write_png(tmp_path / "CD235a_RBC" / "CD235a_RBC_0001_mask.png", np.full((64, 64), 7, np.uint8))
    ad = get_source("segpath")(tmp_path)
    with pytest.raises(SourceFormatError, match=r"CD235a_RBC_0001_mask\.png: mask values \[7\]; expected a binary"):
        list(ad.load_item("CD235a_RBC/CD235a_RBC_0001_HE.png"))


# ------------------------------------------------------------------------------------------------ wsss4luad
def test_wsss4luad(tmp_path):
    ff.write_wsss4luad(tmp_path)
    got = _samples("wsss4luad", tmp_path)
    assert sorted(got) == ["test_00", "validation_00", "validation_01"]
    v0, v1, t0 = got["validation_00"], got["validation_01"], got["test_00"]
    assert _px(v0) == {"tumor": 960, "stroma": 960} and int(v0.ignore.sum()) == 384  # background index 3
    assert _px(v1) == {"normal": 2304} and int(v1.ignore.sum()) == 192  # white background-mask strip
    assert _px(t0) == {"tumor": 1152, "normal": 1152} and t0.ignore is None
    assert (v0.split, t0.split, t0.organ) == ("validation", "test", "lung")


def test_wsss4luad_rgb_mask_and_unknown_code(tmp_path):
    ff.write_wsss4luad(tmp_path)
    pal = np.array(ff.WSSS_PALETTE[:12], np.uint8).reshape(4, 3)
    m = np.zeros((48, 48), np.uint8)
    m[:, 24:] = 1
    ff.write_png(tmp_path / "3.testing" / "mask" / "00.png", pal[m])  # an RGB copy of the palette mask
    s = _samples("wsss4luad", tmp_path)["test_00"]
    assert _px(s) == {"tumor": 1152, "stroma": 1152}
    m[0, 0] = 5
    ff.write_png(tmp_path / "3.testing" / "mask" / "00.png", m, mode="P", palette=ff.WSSS_PALETTE)
    with pytest.raises(SourceFormatError, match=r"unknown class code\(s\) \[5\]; valid codes: 0=tumor"):
        list(get_source("wsss4luad")(tmp_path).load_item("3.testing/img/00.png"))


# ------------------------------------------------------------------------------------------------ digestpath
def test_digestpath(tmp_path):
    spec = ff.write_digestpath(tmp_path)
    got = _samples("digestpath", tmp_path)
    assert sorted(got) == sorted([spec["pos"], spec["neg"]])
    pos, neg = got[spec["pos"]], got[spec["neg"]]
    assert abs(_px(pos)["lesion"] - ff.area([spec["rect"]])) <= 40  # JPEG mask, thresholded at 127
    assert pos.patient_id == "18-00530A" and pos.organ == "colon"
    assert neg.masks == {} and neg.meta["negative_image"] and neg.patient_id == "D20190441101"
    assert list(_samples("digestpath", tmp_path / "tissue-train-pos-v1")) == [spec["pos"]]  # root = one folder
    (tmp_path / "tissue-train-pos-v1" / f"{spec['pos']}_mask.jpg").unlink()
    with pytest.raises(SourceFormatError, match=r"no mask: expected .*_mask\.jpg"):
        _samples("digestpath", tmp_path)


# ------------------------------------------------------------------------------------------------ paip2019
def test_paip2019_tiles_skip_background_and_stream(tmp_path, monkeypatch):
    import tifffile

    e = ff.write_paip2019(tmp_path)
    decoded_whole = []
    real = tifffile.TiffPage.asarray

    def spy(self, *a, **kw):
        if tuple(self.shape[:2]) == e["image"].shape[:2]:
            decoded_whole.append(self.parent.filename)
        return real(self, *a, **kw)

    monkeypatch.setattr(tifffile.TiffPage, "asarray", spy)
    got = _samples("paip2019", tmp_path, tile=e["tile"])
    assert decoded_whole == []  # level 0 and the masks are only read region by region
    case = e["case"]
    assert sorted(got) == sorted(f"{case}_x{x:06d}_y{y:06d}" for x in (0, 128) for y in (0, 128))
    for s in got.values():
        x0, y0, x1, y1 = s.meta["box"]
        assert np.array_equal(s.image, e["image"][y0:y1, x0:x1])
        assert s.patient_id == case and s.organ == "liver" and s.split == "train" and s.mpp == 0.5021
        for cls, key in (("whole_tumor", "whole"), ("viable_tumor", "viable")):
            want = e[key][y0:y1, x0:x1]
            if want.any():
                assert np.array_equal(s.masks[cls], want.astype(np.int32))
            else:
                assert cls not in s.masks
    assert _px(got[f"{case}_x000000_y000000"]) == {"whole_tumor": 10800, "viable_tumor": 2800}
    assert _px(got[f"{case}_x000128_y000000"]) == {"whole_tumor": 1200}
    every = _samples("paip2019", tmp_path, tile=128, min_tissue=0)
    assert len(every) == 9 and every[f"{case}_x000256_y000256"].image.shape == (64, 32, 3)


def test_paip2019_uncompressed_single_strip_mask(tmp_path):
    import tifffile

    e = ff.write_paip2019(tmp_path)
    path = e["dir"] / f"{e['case']}_whole.tif"
    ff.write_tif(path, e["whole"], rowsperstrip=e["whole"].shape[0])  # one strip, no compression
    with tifffile.TiffFile(str(path)) as t:
        assert t.pages[0].is_memmappable and len(t.pages[0].dataoffsets) == 1
    got = _samples("paip2019", tmp_path, tile=128)
    s = got[f"{e['case']}_x000128_y000000"]
    assert np.array_equal(s.masks["whole_tumor"], e["whole"][0:128, 128:256].astype(np.int32))


def test_paip2019_bad_masks(tmp_path):
    e = ff.write_paip2019(tmp_path)
    ff.write_tif(e["dir"] / f"{e['case']}_viable.tif", np.zeros((100, 100), np.uint8))
    ad = get_source("paip2019")(tmp_path, tile=128)
    (item,) = ad.list_items()
    with pytest.raises(SourceFormatError, match=r"_viable\.tif: mask size 100x100 does not match the slide's level 0 288x320"):
        list(ad.load_item(item))
    (e["dir"] / f"{e['case']}_viable.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(SourceFormatError, match=r"_viable\.tif: cannot open TIFF"):
        list(ad.load_item(item))
    (e["dir"] / f"{e['case']}_viable.tif").unlink()
    with pytest.raises(SourceFormatError, match=r"no viable mask"):
        list(ad.load_item(item))


# ------------------------------------------------------------------------------------------------ all adapters
@pytest.mark.parametrize("name", MINE)
def test_empty_folder_names_the_expected_layout(tmp_path, name):
    with pytest.raises(SourceFormatError, match=r"expected"):
        get_source(name)(tmp_path).list_items()


# ------------------------------------------------------------------------------------------------ mapping tables
@pytest.mark.parametrize("name", MINE)
def test_mapping_table_covers_adapter_classes(name):
    import yaml

    table = yaml.safe_load((REPO / "configs" / "ontology" / "sources" / f"{name}.yaml").read_text())
    cls = get_source(name)
    assert table["source"] == name
    assert set(table["classes"]) == set(cls.classes), "every class the adapter yields is mapped, and only those"
    assert table["mpp"] == cls.default_mpp
    assert table["licence"] and table["citation"]
    mapped = {v for v in table["classes"].values() if v is not None}
    assert set(table["exhaustive"]) <= mapped


def test_mapping_tables_resolve_in_the_ontology():
    from pathsegmentor.ontology import Ontology

    onto = Ontology.load()
    onto.validate({n: get_source(n).classes for n in MINE}, orphans=False)  # raises listing every problem
    for n in MINE:
        for organ, region in onto.source(n).organ_map.items():
            assert onto.region(organ, n) == region
