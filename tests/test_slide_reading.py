"""Whole-slide inference, the pieces: level choice and mpp sources, region reading, the pixel-corner
convention of traced polygons and the tumour-stroma ratio of the summary. Fixture slides are written
with tifffile (pyramids with known mpp and shapes; see slide_helpers.py)."""
from __future__ import annotations

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")
shapely = pytest.importorskip("shapely")

from pathsegmentor.slide.reader import choose_level, open_slide  # noqa: E402
from pathsegmentor.slide.synthetic import write_slide  # noqa: E402
from slide_helpers import MPP0, slide_spec  # noqa: E402


# ------------------------------------------------------------------------------------------ reading
def test_level_choice_and_mpp_sources(slide, tmp_path):
    with open_slide(slide) as r:
        assert r.mpp == pytest.approx(MPP0) and "XResolution" in r.mpp_source
        assert [(lv.width, lv.height) for lv in r.levels] == [(2048, 1536), (1024, 768), (512, 384)]
        assert [lv.mpp for lv in r.levels] == pytest.approx([0.25, 0.5, 1.0])
        assert choose_level(r, 0.5).index == 1  # exact match
        assert choose_level(r, 0.3).index == 0  # level 1 (0.5) would be coarser than needed
        assert choose_level(r, 0.7).index == 1  # closest from the fine side
        assert choose_level(r, 4.0).index == 2
        assert choose_level(r, 0.1).index == 0  # all coarser: finest, then upsampled per tile
    # inch resolution unit and page-per-level layout
    p = write_slide(tmp_path / "inch.tif", slide_spec(height=512, width=512, levels=2), layout="pages",
                    resolution_unit="INCH")
    with open_slide(p) as r:
        assert r.mpp == pytest.approx(MPP0) and len(r.levels) == 2
    # Aperio description and OME-XML PhysicalSizeX
    img = np.full((64, 64, 3), 255, np.uint8)
    svs = tmp_path / "a.svs"
    tifffile.imwrite(svs, img, description="Aperio Image Library v12\n64x64 |AppMag = 40|MPP = 0.2520|Filename = a",
                     photometric="rgb", metadata=None)
    with open_slide(svs) as r:
        assert r.mpp == pytest.approx(0.252) and "Aperio" in r.mpp_source
    ome = tmp_path / "a.ome.tif"
    tifffile.imwrite(ome, img, photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 0.3,
                                                            "PhysicalSizeXUnit": "µm"})
    with open_slide(ome) as r:
        assert r.mpp == pytest.approx(0.3) and "OME" in r.mpp_source


def test_region_reading_matches_whole_level(slide):
    with open_slide(slide) as r, tifffile.TiffFile(slide) as t:
        lv1 = t.series[0].levels[1].asarray()
        np.testing.assert_array_equal(r.read_region(1, 100, 250, 300, 400), lv1[100:400, 250:650])
        edge = r.read_region(1, 700, 1000, 100, 50)  # partly outside: white
        np.testing.assert_array_equal(edge[:68, :24], lv1[700:, 1000:])
        assert (edge[68:] == 255).all() and (edge[:, 24:] == 255).all()



# ------------------------------------------------------------------------------------------ geometry
def test_pixel_corner_convention_of_traced_polygons():
    from pathsegmentor.slide.geojson import mask_polygons, outer_polygon

    m = np.zeros((10, 12), bool)
    m[4, 3] = True  # one pixel: covers [3, 4) x [4, 5)
    (p,) = mask_polygons(m)
    assert p.bounds == (3.0, 4.0, 4.0, 5.0) and (p.centroid.x, p.centroid.y) == (3.5, 4.5)
    m[:] = False
    m[2:6, 5:9] = True  # block: [5, 9) x [2, 6)
    m[3:5, 6:8] = False  # with a hole
    (p,) = mask_polygons(m)
    assert p.bounds == (5.0, 2.0, 9.0, 6.0) and len(p.interiors) == 1
    q = outer_polygon(m[2:6, 5:9], offset_rc=(2, 5))
    assert q.bounds == (5.0, 2.0, 9.0, 6.0)



# ------------------------------------------------------------------------------------------ summary
def test_tumor_stroma_ratio_in_summary():
    from pathsegmentor.slide.summary import PromptStats, slide_summary

    s = slide_summary(stats=[PromptStats("tumor", False, 30, 30), PromptStats("stroma", False, 10, 10),
                             PromptStats("tumor nuclei", True, 5, 5, objects=4)],
                      tissue_pixels=100, work_pixels=400, pixel_area_um2=0.25, info={})
    assert s["tumor_stroma"]["tumor_stroma_ratio"] == pytest.approx(3.0)
    assert s["tumor_stroma"]["stroma_fraction"] == pytest.approx(0.25)
    assert s["prompts"][0]["area_fraction_of_tissue"] == pytest.approx(0.3)
    assert s["prompts"][2]["objects_per_mm2_tissue"] == pytest.approx(4 / (100 * 0.25 / 1e6))

