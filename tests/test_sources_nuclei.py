"""Nucleus-source adapters read fixtures written in each source's real on-disk format (fixtures_formats.py)."""
from __future__ import annotations

import numpy as np
import pytest

import fixtures_formats as ff
from data_builders.base import SourceFormatError, get_source


def _samples(name, root, **options):
    ad = get_source(name)(root, **options)
    return {s.sample_id: s for item in ad.list_items() for s in ad.load_item(item)}


def _n(mask) -> int:
    return int(len(np.unique(mask[mask > 0])))


def _check_contract(s, classes):
    assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[-1] == 3
    for k, m in s.masks.items():
        assert k in classes
        assert m.dtype == np.int32 and m.shape == s.image.shape[:2]
        if s.has_instances[k]:
            assert set(np.unique(m).tolist()) == set(range(int(m.max()) + 1))  # ids 0..K, consecutive
    if s.ignore is not None:
        assert s.ignore.dtype == bool and s.ignore.shape == s.image.shape[:2]


# ------------------------------------------------------------------------------------------------ pannuke
@pytest.mark.parametrize("layout", ["official", "flat"])
def test_pannuke_fold_rows(tmp_path, layout):
    exp = {}
    for fold in (1, 2, 3):
        exp[fold] = ff.write_pannuke(tmp_path, fold=fold, layout=layout)
    ad = get_source("pannuke")(tmp_path)
    assert len(ad.list_items()) == 3  # one item per fold
    got = {s.sample_id: s for s in ad}
    assert sorted(got) == [f"fold{f}_{i:05d}" for f in (1, 2, 3) for i in range(3)]
    for f in (1, 2, 3):
        for i, e in enumerate(exp[f]["expected"]):
            s = got[f"fold{f}_{i:05d}"]
            _check_contract(s, ad.classes)
            assert s.split == {1: "train", 2: "validation", 3: "test"}[f]
            assert s.organ == exp[f]["tissues"][i]
            assert s.mpp == 0.25
            assert {k: (_n(m), int((m > 0).sum())) for k, m in s.masks.items()} == e
    # the image is the float64 0-255 array, cast to uint8
    raw = np.load(exp[1]["dir"] / "images.npy")
    assert np.array_equal(got["fold1_00002"].image, raw[2].astype(np.uint8))


def test_pannuke_split_option_and_streaming(tmp_path, monkeypatch):
    ff.write_pannuke(tmp_path, fold=2)
    seen = []
    real_load = np.load

    def spy(path, *a, **kw):
        seen.append((str(path).rsplit("/", 1)[-1], kw.get("mmap_mode")))
        return real_load(path, *a, **kw)

    monkeypatch.setattr(np, "load", spy)
    s = _samples("pannuke", tmp_path, fold_splits={"1": "test", "2": "train", "3": "validation"})
    assert {x.split for x in s.values()} == {"train"}
    assert ("images.npy", "r") in seen and ("masks.npy", "r") in seen  # memory-mapped, never loaded whole
    s = _samples("pannuke", tmp_path, fold_splits=None)
    assert {x.split for x in s.values()} == {None}


def test_pannuke_bad_shapes(tmp_path):
    e = ff.write_pannuke(tmp_path, fold=1)
    np.save(e["mask_dir"] / "masks.npy", np.zeros((3, 256, 256, 5)))  # 5 channels, not 6
    ad = get_source("pannuke")(tmp_path)
    with pytest.raises(SourceFormatError, match=r"masks\.npy.*\[N, H, W, 6\].*\(3, 256, 256, 5\)"):
        list(ad.load_item(ad.list_items()[0]))
    np.save(e["dir"] / "images.npy", np.zeros((3, 256, 256)))
    with pytest.raises(SourceFormatError, match=r"images\.npy.*\[N, H, W, 3\]"):
        list(ad.load_item(ad.list_items()[0]))


# ------------------------------------------------------------------------------------------------ cpm17
def test_cpm17(tmp_path):
    spec = ff.write_cpm17(tmp_path)
    got = _samples("cpm17", tmp_path)
    assert sorted(got) == ["test_image_00", "train_image_00", "train_image_01"]
    for split, imgs in spec.items():
        for stem, rects in imgs.items():
            s = got[f"{split}_{stem}"]
            _check_contract(s, ("nucleus",))
            assert s.split == split
            m = s.masks["nucleus"]
            assert _n(m) == len(rects) and int(m.max()) == len(rects)  # renumbered 1..K
            assert int((m > 0).sum()) == ff.area(rects)


def test_cpm17_mat_without_key(tmp_path):
    ff.write_cpm17(tmp_path)
    ff.write_mat(tmp_path / "train" / "Labels" / "image_01.mat", type_map=np.zeros((48, 48)))
    ad = get_source("cpm17")(tmp_path)
    with pytest.raises(SourceFormatError, match=r"image_01\.mat.*missing variable.*inst_map.*type_map"):
        list(ad.load_item("train/Images/image_01.png"))


def test_cpm17_size_mismatch(tmp_path):
    ff.write_cpm17(tmp_path)
    ff.write_mat(tmp_path / "test" / "Labels" / "image_00.mat", inst_map=np.zeros((40, 48)))
    ad = get_source("cpm17")(tmp_path)
    with pytest.raises(SourceFormatError, match=r"image_00\.mat.*48x40 does not match.*48x48"):
        list(ad.load_item("test/Images/image_00.png"))


# ------------------------------------------------------------------------------------------------ tnbc
def test_tnbc(tmp_path):
    spec = ff.write_tnbc(tmp_path)
    got = _samples("tnbc", tmp_path)
    assert sorted(got) == ["01_1", "01_2", "02_1"]
    for (pat, stem), rects in spec.items():
        s = got[stem]
        _check_contract(s, ("nucleus",))
        assert s.patient_id == f"tnbc_{pat}" and s.organ == "breast" and s.split is None
        assert s.has_instances["nucleus"] is False
        assert set(np.unique(s.masks["nucleus"]).tolist()) == {0, 1}
        assert int(s.masks["nucleus"].sum()) == ff.area(rects)
    inst = _samples("tnbc", tmp_path, instances=True)
    assert _n(inst["02_1"].masks["nucleus"]) == 3 and inst["02_1"].has_instances["nucleus"]


def test_tnbc_corrupt_image(tmp_path):
    ff.write_tnbc(tmp_path)
    p = tmp_path / "Slide_01" / "01_1.png"
    p.write_bytes(p.read_bytes()[:60])  # truncated
    ad = get_source("tnbc")(tmp_path)
    with pytest.raises(SourceFormatError, match=r"01_1\.png.*truncated or corrupt"):
        list(ad.load_item("Slide_01/01_1.png"))


# ------------------------------------------------------------------------------------------------ cryonuseg
def test_cryonuseg_annotators(tmp_path):
    spec = ff.write_cryonuseg(tmp_path)
    got = _samples("cryonuseg", tmp_path)
    assert sorted(got) == sorted(spec)
    for stem, rects in spec.items():
        s = got[stem]
        _check_contract(s, ("nucleus",))
        assert _n(s.masks["nucleus"]) == len(rects)
        assert int((s.masks["nucleus"] > 0).sum()) == ff.area(rects)
    assert got["Human_AdrenalGland_01"].organ == "AdrenalGland" and got["Human_LymphNode_02"].organ == "LymphNode"
    a2 = _samples("cryonuseg", tmp_path, annotator="Annotator 2")
    assert _n(a2["Human_LymphNode_02"].masks["nucleus"]) == len(spec["Human_LymphNode_02"]) + 1
    with pytest.raises(SourceFormatError, match="annotator 'Annotator 9'"):
        _samples("cryonuseg", tmp_path, annotator="Annotator 9")


# ------------------------------------------------------------------------------------------------ nuinsseg
def test_nuinsseg_with_vague_areas(tmp_path):
    spec = ff.write_nuinsseg(tmp_path)
    got = _samples("nuinsseg", tmp_path)
    assert sorted(got) == ["human_bladder_01", "mouse_muscle_01"]
    s = got["human_bladder_01"]
    _check_contract(s, ("nucleus",))
    rects, vague = spec[("human bladder", "human_bladder_01")]
    assert s.organ == "bladder" and s.meta["species"] == "human"
    assert _n(s.masks["nucleus"]) == 2 and int((s.masks["nucleus"] > 0).sum()) == ff.area(rects)
    assert int(s.ignore.sum()) == ff.area([vague])
    m = got["mouse_muscle_01"]
    assert m.ignore is None and m.organ == "muscle" and m.meta["species"] == "mouse"


def test_nuinsseg_size_mismatch(tmp_path):
    ff.write_nuinsseg(tmp_path)
    ff.write_png(tmp_path / "human bladder" / "vague areas" / "mask binary" / "human_bladder_01.png",
                 np.zeros((32, 64), np.uint8))
    ad = get_source("nuinsseg")(tmp_path)
    with pytest.raises(SourceFormatError, match=r"mask binary/human_bladder_01\.png.*64x32 does not match"):
        list(ad.load_item("human bladder/tissue images/human_bladder_01.png"))


# ------------------------------------------------------------------------------------------------ monusac
def test_monusac_xml_classes_and_ambiguous(tmp_path):
    spec = ff.write_monusac(tmp_path)
    got = _samples("monusac", tmp_path)
    p = ff.MONUSAC_PATIENT
    assert sorted(got) == [f"{p}_001", f"{p}_002"]
    for stem, anns in spec.items():
        s = got[stem]
        _check_contract(s, get_source("monusac").classes)
        assert s.patient_id == p[:12] and s.split == "train"
        want = {n.lower(): (len(r), ff.area(r)) for n, r in anns if r and n != "Ambiguous"}
        assert {k: (_n(m), int((m > 0).sum())) for k, m in s.masks.items()} == want
    assert got[f"{p}_001"].ignore is None  # read from the .svs
    assert int(got[f"{p}_002"].ignore.sum()) == 100


def test_monusac_bad_xml(tmp_path):
    ff.write_monusac(tmp_path)
    xml = tmp_path / "MoNuSAC_images_and_annotations" / ff.MONUSAC_PATIENT / f"{ff.MONUSAC_PATIENT}_002.xml"
    ad = get_source("monusac")(tmp_path)
    item = str(xml.relative_to(tmp_path))
    xml.write_text(xml.read_text()[:-40])  # truncated
    with pytest.raises(SourceFormatError, match=r"_002\.xml: malformed XML"):
        list(ad.load_item(item))
    xml.write_text(ff.aperio_xml([("Basophil", [(1, 1, 3, 3)])]))
    with pytest.raises(SourceFormatError, match=r"unknown class 'Basophil'; valid: Epithelial, Lymphocyte"):
        list(ad.load_item(item))


# ------------------------------------------------------------------------------------------------ lizard
def test_lizard(tmp_path):
    spec = ff.write_lizard(tmp_path)
    got = _samples("lizard", tmp_path)
    assert sorted(got) == ["consep_1", "glas_1"]
    for stem, (_, objs) in spec.items():
        s = got[stem]
        _check_contract(s, get_source("lizard").classes)
        assert s.mpp == 0.5 and s.organ == "colon" and s.split is None
        want: dict[str, list] = {}
        for r, c in objs:
            want.setdefault(ff.LIZARD_CODES[c], []).append(r)
        assert {k: (_n(m), int((m > 0).sum())) for k, m in s.masks.items()} == \
            {k: (len(v), ff.area(v)) for k, v in want.items()}
    assert got["glas_1"].meta["origin"] == "glas" and got["glas_1"].meta["fold"] == "3"


def test_lizard_bad_mat(tmp_path):
    ff.write_lizard(tmp_path)
    mat = tmp_path / "Lizard_Labels" / "Labels" / "glas_1.mat"
    inst = np.zeros((64, 64), np.int32)
    inst[:4, :4] = 1
    ff.write_mat(mat, inst_map=inst, id=np.array([[1]]), classes=np.array([[9]]))
    ad = get_source("lizard")(tmp_path)
    with pytest.raises(SourceFormatError, match=r"glas_1\.mat: unknown class code\(s\) \[9\]; valid codes: 1=neutrophil"):
        list(ad.load_item("Lizard_Images2/glas_1.png"))
    ff.write_mat(mat, inst_map=inst, id=np.array([[1]]))
    with pytest.raises(SourceFormatError, match=r"missing variable\(s\) \['classes'\]"):
        list(ad.load_item("Lizard_Images2/glas_1.png"))


# ------------------------------------------------------------------------------------------------ conic
def test_conic(tmp_path):
    spec = ff.write_conic(tmp_path)
    got = _samples("conic", tmp_path)
    assert list(got) == spec["names"]
    for name, objs in zip(spec["names"], spec["objs"]):
        s = got[name]
        _check_contract(s, get_source("conic").classes)
        assert s.patient_id == name.rsplit("-", 1)[0] and s.image.shape == (256, 256, 3)
        want: dict[str, list] = {}
        for r, c in objs:
            want.setdefault(ff.LIZARD_CODES[c], []).append(r)
        assert {k: (_n(m), int((m > 0).sum())) for k, m in s.masks.items()} == \
            {k: (len(v), ff.area(v)) for k, v in want.items()}
    assert got["consep_1-0000"].patient_id == got["consep_1-0001"].patient_id == "consep_1"


def test_conic_bad_input(tmp_path):
    ff.write_conic(tmp_path)
    lab = np.load(tmp_path / "data" / "labels.npy")
    np.save(tmp_path / "data" / "labels.npy", lab[..., :1])
    ad = get_source("conic")(tmp_path)
    with pytest.raises(SourceFormatError, match=r"labels\.npy.*\[N, H, W, 2\].*\(3, 256, 256, 1\)"):
        list(ad.load_item("data/images.npy"))
    lab[2, 0, 0, 1] = 8
    np.save(tmp_path / "data" / "labels.npy", lab)
    with pytest.raises(SourceFormatError, match=r"patch 2: unknown class code\(s\) \[8\]"):
        list(ad.load_item("data/images.npy"))
    (tmp_path / "data" / "patch_info.csv").write_text("patch_info\nconsep_1-0000\n")
    with pytest.raises(SourceFormatError, match=r"patch_info\.csv: 1 patch names for 3 patches"):
        list(ad.load_item("data/images.npy"))
