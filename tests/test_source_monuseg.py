"""MoNuSeg adapter on fixtures in the official layouts (Aperio XML, colour masks), and on the real files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_builders import SourceFormatError, get_source
from data_builders.sources.monuseg import parse_aperio_xml

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "monuseg" / "MoNuSegTrainingData"


def aperio_xml(polys, mpp=0.252) -> str:
    regions = []
    for i, pts in enumerate(polys, 1):
        v = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in pts)
        regions.append(f'<Region Id="{i}" Type="0"><Attributes/><Vertices>{v}</Vertices></Region>')
    return (f'<Annotations MicronsPerPixel="{mpp:.6f}"><Annotation Id="1" Type="4"><Attributes/><Regions>'
            f'<RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region"/></RegionAttributeHeaders>'
            f'{"".join(regions)}</Regions><Plots/></Annotation></Annotations>')


def write_tif(path: Path, arr: np.ndarray) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(str(path), arr)


SQUARES = [[(2, 2), (10, 2), (10, 10), (2, 10)], [(20, 20), (30, 20), (30, 28), (20, 28)],
           [(8, 8), (14, 8), (14, 14), (8, 14)]]  # the third overlaps the first: it overwrites it


@pytest.fixture
def training_layout(tmp_path):
    root = tmp_path / "MoNuSegTrainingData"
    rng = np.random.default_rng(0)
    write_tif(root / "Tissue_Images" / "TCGA-A7-A13E-01Z-00-DX1.tif", rng.integers(0, 255, (40, 48, 3), np.uint8))
    (root / "Annotations").mkdir()
    (root / "Annotations" / "TCGA-A7-A13E-01Z-00-DX1.xml").write_text(aperio_xml(SQUARES))
    write_tif(root / "Tissue_Images" / "TCGA-B0-5698-01Z-00-DX1.tif", rng.integers(0, 255, (40, 48, 3), np.uint8))
    col = np.zeros((40, 48, 3), np.uint8)
    col[1:5, 1:5] = (255, 0, 0)
    col[10:20, 30:40] = (0, 128, 255)
    (root / "Color_masks").mkdir()
    Image.fromarray(col).save(root / "Color_masks" / "TCGA-B0-5698-01Z-00-DX1.png")
    return root


def test_training_layout_xml_and_colour(training_layout):
    a = get_source("monuseg")(training_layout)
    items = a.list_items()
    assert items == ["Tissue_Images/TCGA-A7-A13E-01Z-00-DX1.tif", "Tissue_Images/TCGA-B0-5698-01Z-00-DX1.tif"]
    s = next(a.load_item(items[0]))
    assert s.patient_id == "TCGA-A7-A13E" and s.organ == "A7" and s.split is None and s.mpp == pytest.approx(0.252)
    inst = s.masks["nucleus"]
    assert s.has_instances["nucleus"] and inst.dtype == np.int32
    assert set(np.unique(inst)) == {0, 1, 2, 3}
    assert inst[3, 3] == 1 and inst[24, 25] == 2 and inst[10, 10] == 3  # later region overwrites the earlier one
    assert (inst == 2).sum() == 9 * 11  # vertices inclusive: rows 20..28, cols 20..30
    c = next(a.load_item(items[1]))
    assert c.meta["annotation"] == "colour" and len(np.unique(c.masks["nucleus"])) == 3
    assert (c.masks["nucleus"] > 0).sum() == 16 + 100


def test_test_layout_side_by_side(tmp_path):
    root = tmp_path / "MoNuSegTestData"
    write_tif(root / "TCGA-2Z-A9J9-01A-01-TS1.tif", np.full((32, 32, 3), 200, np.uint8))
    (root / "TCGA-2Z-A9J9-01A-01-TS1.xml").write_text(aperio_xml(SQUARES[:2]))
    s = next(get_source("monuseg")(tmp_path).load_item("MoNuSegTestData/TCGA-2Z-A9J9-01A-01-TS1.tif"))
    assert s.split == "test" and s.masks["nucleus"].max() == 2


def test_bad_inputs(training_layout):
    xml = training_layout / "Annotations" / "TCGA-A7-A13E-01Z-00-DX1.xml"
    xml.write_text(aperio_xml(SQUARES)[:-40])
    a = get_source("monuseg")(training_layout)
    with pytest.raises(SourceFormatError, match="malformed XML") as e:
        next(a.load_item(a.list_items()[0]))
    assert e.value.path.endswith(".xml")
    tif = training_layout / "Tissue_Images" / "TCGA-B0-5698-01Z-00-DX1.tif"
    tif.write_bytes(tif.read_bytes()[:200])
    with pytest.raises(SourceFormatError, match="truncated or corrupt"):
        next(a.load_item(a.list_items()[1]))
    (training_layout / "Color_masks" / "TCGA-B0-5698-01Z-00-DX1.png").unlink()
    with pytest.raises(SourceFormatError, match="no annotation"):
        next(a.load_item(a.list_items()[1]))


def test_empty_folder(tmp_path):
    with pytest.raises(SourceFormatError, match="no .tif images"):
        get_source("monuseg")(tmp_path).list_items()


def test_real_xml_matches_binary_masks():
    if not REAL.is_dir():
        pytest.skip(f"real MoNuSeg data not available at {REAL}")
    from data_builders.masks import rasterize_polygons, read_mask

    ious = {}
    for xml in sorted((REAL / "Annotations").glob("*.xml")):
        polys, mpp = parse_aperio_xml(xml)
        inst = rasterize_polygons(polys, (1000, 1000))
        b = read_mask(REAL / "Binary_masks" / f"{xml.stem}.png") > 0
        x = inst > 0
        ious[xml.stem] = float((x & b).sum() / (x | b).sum())
        assert inst.max() == len(polys) and mpp == pytest.approx(0.252)
    print("MoNuSeg XML vs Binary_masks IoU:", {k: round(v, 4) for k, v in ious.items()})
    assert len(ious) == 2
    assert min(ious.values()) >= 0.89 and np.mean(list(ious.values())) >= 0.94
