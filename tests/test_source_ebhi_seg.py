"""EBHI-Seg adapter on fixtures in the release layout (``EBHI-SEG/<class>/image|label/*.png``) and on the shared copy."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data_builders import SourceFormatError, build, get_source, load_pathseg
from data_builders.sources.ebhi_seg import CLASSES, case_id
from tests.fixtures_formats import rgb, write_png

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ebhi_seg"
SHARED_COUNTS = {"Normal": 55, "Polyp": 104, "Low-grade IN": 115, "High-grade IN": 77, "Serrated adenoma": 29,
                 "Adenocarcinoma": 136}
S = 32

# (class folder, file name, annotated rectangle y, x, h, w)
PAIRS = [("Normal", "GT2000000-1-400-001.png", (2, 3, 10, 12)),
         ("Normal", "GT2100093-4-400-001.png", (0, 0, 8, 8)),
         ("Low-grade IN", "GT2100093-4-400-001.png", (4, 4, 6, 5)),   # same name, other class, same case
         ("Low-grade IN", "GTxc2110176-3-400-006.png", (1, 1, 20, 20)),
         ("Adenocarcinoma", "GTXC2110176-1-400-001.png", (0, 0, S, S)),  # tumour edge to edge, same case as above
         ("Adenocarcinoma", "GTDC2013013-2-400-002.png", (5, 5, 5, 5))]


def _label(rect) -> np.ndarray:
    y, x, h, w = rect
    lab = np.zeros((S, S), np.uint8)
    lab[y:y + h, x:x + w] = 255
    return lab


def write_ebhi(root: Path) -> Path:
    """The release layout with three populated classes, one empty class folder and two missing ones."""
    base = root / "EBHI-SEG"
    for i, (cls, name, rect) in enumerate(PAIRS):
        write_png(base / cls / "image" / name, rgb(S, S, seed=i))
        lab = _label(rect)
        if cls == "Normal" and name.startswith("GT2000000"):  # in-between values from the release's encoding
            lab[20, 20], lab[21, 21], lab[22, 22] = 128, 127, 1   # 128 -> annotated, 127 and 1 -> not
        write_png(base / cls / "label" / name, lab)
    (base / "High-grade IN" / "image").mkdir(parents=True)
    (base / "High-grade IN" / "label").mkdir()
    (base / "readme.md").write_text("EBHI-Seg\n")
    return base


def test_case_id():
    assert case_id("GT2012149-2-400-001") == "2012149"
    assert case_id("GTxc2110176-3-400-006") == case_id("GTXC2110176-1-400-001") == "2110176"
    with pytest.raises(ValueError, match="does not start with GT<digits>-"):
        case_id("IMG_0001")


def test_release_layout(tmp_path):
    base = write_ebhi(tmp_path)
    for root in (tmp_path, base):  # the EBHI-SEG folder or its parent
        a = get_source("ebhi_seg")(root)
        items = a.list_items()
        assert len(items) == len(PAIRS) and all(i.endswith(".png") for i in items)
    a = get_source("ebhi_seg")(base)
    samples = {s.sample_id: s for it in a.list_items() for s in a.load_item(it)}
    assert len(samples) == len(PAIRS)  # a name under two classes stays two samples
    s = samples["normal/GT2000000-1-400-001"]
    assert s.patient_id == "2000000" and list(s.masks) == ["Normal"] and s.has_instances == {"Normal": False}
    assert s.masks["Normal"].dtype == np.int32 and int(s.masks["Normal"].sum()) == 10 * 12 + 1  # 128 kept
    assert s.masks["Normal"][20, 20] == 1 and s.masks["Normal"][21, 21] == 0 and s.masks["Normal"][22, 22] == 0
    assert s.organ == "colon" and s.mpp == pytest.approx(1.4) and s.meta["diagnosis"] == "Normal"
    assert set(s.exhaustive) == {"gland", "benign gland", "tumor", "malignant gland", "dysplastic gland"}
    lg = samples["low-grade-in/GT2100093-4-400-001"]
    assert lg.patient_id == samples["normal/GT2100093-4-400-001"].patient_id == "2100093"
    assert list(lg.masks) == ["Low-grade IN"] and lg.exhaustive == ["dysplastic gland"]
    assert samples["adenocarcinoma/GTXC2110176-1-400-001"].patient_id == "2110176"
    assert samples["adenocarcinoma/GTXC2110176-1-400-001"].masks["Adenocarcinoma"].all()


def test_bad_inputs(tmp_path):
    base = write_ebhi(tmp_path)
    a = get_source("ebhi_seg")(base)
    lab = base / "Normal" / "label" / "GT2000000-1-400-001.png"
    write_png(lab, np.zeros((S, S + 1), np.uint8))
    with pytest.raises(SourceFormatError, match=r"GT2000000-1-400-001.png: mask size 33x32 does not match"):
        next(a.load_item("Normal/image/GT2000000-1-400-001.png"))
    (base / "Low-grade IN" / "label" / "GTxc2110176-3-400-006.png").unlink()
    with pytest.raises(SourceFormatError, match=r"Low-grade IN/image/GTxc2110176-3-400-006.png: no label .*"
                                                r"Low-grade IN/label/GTxc2110176-3-400-006.png"):
        next(a.load_item("Low-grade IN/image/GTxc2110176-3-400-006.png"))
    write_png(base / "Polyp" / "image" / "scan_1.png", rgb(S, S))
    write_png(base / "Polyp" / "label" / "scan_1.png", _label((0, 0, 4, 4)))
    with pytest.raises(SourceFormatError, match="scan_1.png: file name 'scan_1' does not start with GT"):
        next(a.load_item("Polyp/image/scan_1.png"))
    empty = tmp_path / "empty"
    (empty / "Normal" / "image").mkdir(parents=True)
    with pytest.raises(SourceFormatError, match="no <class>/image/"):
        get_source("ebhi_seg")(empty).list_items()


def test_build_mapping_negatives_and_grouped_split(tmp_path):
    base = write_ebhi(tmp_path / "src")
    out = build({"ebhi_seg": {"root": str(base)}}, tmp_path / "corpus", progress=False, val_fraction=0.5)
    c = load_pathseg(out)
    rows = {sp: c.images[sp].to_pandas() for sp in c.splits}
    tri = {sp: c.triples[sp].to_pandas() for sp in c.splits}
    imgs = {r.sample_id: r for sp in rows for r in rows[sp].itertuples()}
    assert len(imgs) == len(PAIRS)
    labels = {sid: set(r.labels) for sid, r in imgs.items()}
    assert labels["normal/GT2000000-1-400-001"] == {"colon benign gland", "benign gland", "gland"}
    assert labels["low-grade-in/GT2100093-4-400-001"] == {"dysplastic gland", "gland"}
    assert labels["adenocarcinoma/GTXC2110176-1-400-001"] == {"colon tumor", "tumor"}  # not a gland
    neg = set(imgs["normal/GT2000000-1-400-001"].negative_labels)
    assert {"tumor", "colon tumor", "malignant gland", "colon malignant gland", "dysplastic gland"} <= neg
    assert "gland" not in neg and "benign gland" not in neg
    assert not len(imgs["low-grade-in/GT2100093-4-400-001"].negative_labels)  # no diagnosis negatives
    # the diagnosis class travels with every triple as its source label
    src = {(r.image_id, r.label): r.source_label for sp in tri for r in tri[sp].itertuples()}
    assert src[("ebhi_seg/normal/GT2000000-1-400-001/0_0", "gland")] == "Normal"
    assert src[("ebhi_seg/adenocarcinoma/GTXC2110176-1-400-001/0_0", "tumor")] == "Adenocarcinoma"
    # cases, not crops, are split: 2100093 and 2110176 each appear under two classes
    split_of = {}
    for sp in rows:
        for p in rows[sp]["patient_id"]:
            assert split_of.setdefault(p, sp) == sp, f"case {p} in two splits"
    assert set(split_of) == {"2000000", "2100093", "2110176", "2013013"} and len(set(split_of.values())) == 2


def test_shared_copy_counts_and_case_split(tmp_path):
    if not SHARED.is_dir():
        pytest.skip(f"EBHI-Seg shared copy not available at {SHARED} (only in the project's CI/dev checkout)")
    a = get_source("ebhi_seg")(SHARED / "EBHI-SEG")
    items = a.list_items()
    per_class = Counter(Path(i).parent.parent.name for i in items)
    assert {c: per_class.get(c, 0) for c in CLASSES} == SHARED_COUNTS
    for it in items[::40]:  # a sample of every ~40th pair decodes with a thresholded mask
        s = next(a.load_item(it))
        assert s.image.shape == (224, 224, 3) and set(np.unique(s.masks[s.meta["diagnosis"]])) <= {0, 1}
    out = build({"ebhi_seg": {"root": str(SHARED / "EBHI-SEG")}}, tmp_path / "corpus", progress=False)
    c = load_pathseg(out)
    assert c.manifest["rejects"] == 0
    assert sum(len(c.images[sp]) for sp in c.splits) == sum(SHARED_COUNTS.values())
    cases = {sp: set(c.images[sp]["patient_id"]) for sp in c.splits}
    assert not (cases["train"] & cases["validation"]) and len(cases["validation"]) >= 1
    assert len(cases["train"] | cases["validation"]) == len({case_id(Path(i).stem) for i in items})
