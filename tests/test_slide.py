"""Whole-slide inference: level choice, tissue skipping, stitching equal to ``segment``, QuPath
geometry in level-0 coordinates, measurements on shapes of known size, resume, process split, and
bad input. Fixture slides are written here with tifffile (pyramids with known mpp and shapes)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

tifffile = pytest.importorskip("tifffile")
shapely = pytest.importorskip("shapely")

from pathsegmentor.slide import infer as slide_infer  # noqa: E402
from pathsegmentor.slide import segment_slide  # noqa: E402
from pathsegmentor.slide.reader import SlideError, choose_level, open_slide  # noqa: E402
from pathsegmentor.slide.synthetic import SlideSpec, write_slide  # noqa: E402
from pathsegmentor.tiling import tile_grid  # noqa: E402

MPP0 = 0.25
# level 0 2048x1536 at 0.25 µm/px; level 1 (0.5 µm/px) is the pathsegmentor-test working level.
# Shapes in level-0 pixels. The disk at y=512 and the square spanning y 500..532 straddle the
# 256-row analysis strip boundary (working row 256 = level-0 row 512).
DISKS = [(500.0, 600.0, 24.0), (900.0, 800.0, 30.0), (700.0, 512.0, 20.0)]
SQUARES = [(1000.0, 400.0, 1040.0, 440.0), (1100.0, 500.0, 1160.0, 532.0)]
TISSUE = [(256.0, 256.0, 1280.0, 1280.0)]


def _spec(**kw) -> SlideSpec:
    base = dict(height=1536, width=2048, mpp=MPP0, levels=3, tissue=TISSUE, disks=DISKS, squares=SQUARES)
    base.update(kw)
    return SlideSpec(**base)


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return write_slide(tmp_path_factory.mktemp("slide") / "case.tif", _spec())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The test model is tiny: one thread is fastest and avoids oversubscribing shared CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class DarkStub:
    """A 'model' whose probability is 1 on dark (drawn-object) pixels: geometry tests only."""

    name = "dark-stub"

    def __init__(self, mpp: float = 0.5, size: int = 128, overlap: int = 32) -> None:
        self.config = SimpleNamespace(preprocess=SimpleNamespace(mpp=mpp, input_size=size),
                                      inference=SimpleNamespace(tile_overlap=overlap, mask_threshold=0.5,
                                                                presence_threshold=0.5),
                                      to_dict=lambda: {"stub": [mpp, size, overlap]})
        self.calls = 0

    def state_dict(self):
        return {}

    def to(self, device):
        return self

    def encode_text(self, prompts):
        return torch.zeros(len(prompts), 1)

    def _predict_window(self, window, text_emb, points, boxes, hires):
        self.calls += 1
        p = (window.astype(np.float32).mean(-1) < 150).astype(np.float32)
        n = text_emb.shape[0]
        return np.repeat(p[None], n, 0), np.ones(n, np.float32)


def _levels(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as t:
        return [lv.asarray() for lv in t.series[0].levels]


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
    p = write_slide(tmp_path / "inch.tif", _spec(height=512, width=512, levels=2), layout="pages",
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


# ------------------------------------------------------------------------------------------ stitching
def test_stitched_equals_direct_segment_and_skips_background(slide, tmp_path, test_model):
    res = test_model.segment_slide(slide, ["tumor nuclei", "stroma"], out=tmp_path / "o", dtype="float32",
                                   progress=False)
    tiles = res.summary["tiles"]
    # working grid 768x1024, tiles 128 / overlap 32: 8 x 11 tiles; tissue spans working px 128..640
    assert tiles["total"] == 88
    ys = [t.y0 for t in tile_grid(768, 1, 128, 32)]
    xs = [t.x0 for t in tile_grid(1, 1024, 128, 32)]
    touch = lambda s, n: s + 128 > 128 - 0.5 and s < 640 + 0.5  # noqa: E731 (1 thumbnail px margin)
    expected = sum(touch(y, 768) for y in ys) * sum(touch(x, 1024) for x in xs)
    assert tiles["predicted"] == expected and tiles["skipped_background"] == 88 - expected
    probs = _levels(res.masks["tumor nuclei"])[0]
    assert probs.dtype == np.float32 and probs.shape == (768, 1024)
    assert (probs[:, 704:] == 0).all() and (probs[:, :704] > 0).any()  # only skipped tiles there: background
    # direct segment of a region aligned with the slide grid: 3x3 tiles from (192, 192)
    with tifffile.TiffFile(slide) as t:
        region = t.series[0].levels[1].asarray()[192:512, 192:512]
    direct = test_model.segment(region, ["tumor nuclei", "stroma"])
    probs2 = _levels(res.masks["stroma"])[0]
    for k, out in enumerate((probs, probs2)):
        got = out[192:512, 192:512][32:-32, 32:-32]  # away from the region's own border seams
        np.testing.assert_allclose(got, direct.probs[k][32:-32, 32:-32], atol=1e-4, rtol=0)
    with tifffile.TiffFile(res.masks["stroma"]) as t:
        page = t.series[0].levels[0].keyframe
        assert page.is_tiled and len(t.series[0].levels) >= 3
        assert page.resolution[0] == pytest.approx(1e4 / 0.5) and page.resolutionunit == 3


def test_upsampled_level_uses_remaining_scale(slide, tmp_path):
    """Model mpp 0.4 on a 0.25/0.5/1.0 pyramid: level 0 is read and each tile resampled to 0.4."""
    stub = DarkStub(mpp=0.4)
    res = segment_slide(stub, slide, ["nuclei"], out=tmp_path / "o", progress=False)
    assert res.summary["level"] == 0
    assert res.summary["work_shape"] == [round(1536 * 0.25 / 0.4), round(2048 * 0.25 / 0.4)]
    import pandas as pd

    df = pd.read_csv(res.objects_csv)
    for cx, cy, r in DISKS:
        d = np.hypot(df.centroid_x - cx, df.centroid_y - cy)
        assert d.min() < 1.5, (cx, cy, df[["centroid_x", "centroid_y"]])


# ------------------------------------------------------------------------------------------ geometry
def test_geojson_lands_on_drawn_objects_in_level0(slide, tmp_path):
    from shapely.geometry import Point, box, shape

    res = segment_slide(DarkStub(), slide, ["nuclei", "dark region"], out=tmp_path / "o", geojson=True,
                        progress=False)
    fc = json.loads(res.geojson.read_text())
    assert fc["type"] == "FeatureCollection"
    dets = [f for f in fc["features"] if f["properties"]["objectType"] == "detection"]
    anns = [f for f in fc["features"] if f["properties"]["objectType"] == "annotation"]
    for f in fc["features"]:
        assert f["type"] == "Feature" and len(f["id"]) == 36 and f["geometry"]["type"] == "Polygon"
        props = f["properties"]
        assert props["isLocked"] is False and isinstance(props["measurements"], dict)
        assert set(props["classification"]) == {"name", "color"} and len(props["classification"]["color"]) == 3
    assert {f["properties"]["classification"]["name"] for f in dets} == {"nuclei"}
    assert {f["properties"]["classification"]["name"] for f in anns} == {"dark region"}
    truth = [Point(cx, cy).buffer(r, 256) for cx, cy, r in DISKS] + [box(*s) for s in SQUARES]
    for feats in (dets, anns):  # every drawn object once (also those across the strip seam), in place
        assert len(feats) == len(truth)
        polys = [shape(f["geometry"]) for f in feats]
        for t in truth:
            best = max(polys, key=lambda p: p.intersection(t).area)
            iou = best.intersection(t).area / best.union(t).area
            assert iou > 0.93, (t.bounds, best.bounds, iou)
            assert best.centroid.distance(t.centroid) < 1.0
    # squares align with pixel corners exactly: a pixel (x, y) covers [x, x+1) in QuPath
    for s in SQUARES:
        p = max((shape(f["geometry"]) for f in dets), key=lambda p: p.intersection(box(*s)).area)
        assert p.bounds == pytest.approx(s, abs=1e-6)


def test_measurements_on_known_shapes(slide, tmp_path):
    import pandas as pd

    res = segment_slide(DarkStub(), slide, ["nuclei"], out=tmp_path / "o", progress=False)
    df = pd.read_csv(res.objects_csv)
    assert list(df.columns) == ["object_id", "prompt", "centroid_x", "centroid_y", "area_um2", "perimeter_um",
                                "eccentricity", "solidity", "mean_hematoxylin", "mean_eosin"]
    assert len(df) == len(DISKS) + len(SQUARES) and df.object_id.is_unique
    pq = pd.read_parquet(res.objects_parquet)
    assert len(pq) == len(df)
    for cx, cy, r in DISKS:
        row = df.iloc[int(np.argmin(np.hypot(df.centroid_x - cx, df.centroid_y - cy)))]
        assert abs(row.centroid_x - cx) < 1 and abs(row.centroid_y - cy) < 1
        assert row.area_um2 == pytest.approx(math.pi * r * r * MPP0 ** 2, rel=0.03)
        assert row.perimeter_um == pytest.approx(2 * math.pi * r * MPP0, rel=0.1)
        assert row.eccentricity < 0.3 and row.solidity > 0.95
    for x0, y0, x1, y1 in SQUARES:
        row = df.iloc[int(np.argmin(np.hypot(df.centroid_x - (x0 + x1) / 2, df.centroid_y - (y0 + y1) / 2)))]
        assert row.area_um2 == pytest.approx((x1 - x0) * (y1 - y0) * MPP0 ** 2, rel=0.01)
    # stain: drawn objects are dark purple -> hematoxylin well above the pink tissue's
    assert (df.mean_hematoxylin > 0.05).all()
    s = res.summary
    tissue_mm2 = (1024 * 1024) * MPP0 ** 2 / 1e6
    assert s["tissue"]["area_mm2"] == pytest.approx(tissue_mm2, rel=0.01)
    nuc = s["prompts"][0]
    assert nuc["objects"] == len(df)
    assert nuc["objects_per_mm2_tissue"] == pytest.approx(len(df) / tissue_mm2, rel=0.01)
    drawn = sum(math.pi * r * r for *_, r in DISKS) + sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in SQUARES)
    assert nuc["area_fraction_of_tissue"] == pytest.approx(drawn / (1024 * 1024), rel=0.05)


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


def test_tumor_stroma_ratio_in_summary():
    from pathsegmentor.slide.summary import PromptStats, slide_summary

    s = slide_summary(stats=[PromptStats("tumor", False, 30, 30), PromptStats("stroma", False, 10, 10),
                             PromptStats("tumor nuclei", True, 5, 5, objects=4)],
                      tissue_pixels=100, work_pixels=400, pixel_area_um2=0.25, info={})
    assert s["tumor_stroma"]["tumor_stroma_ratio"] == pytest.approx(3.0)
    assert s["tumor_stroma"]["stroma_fraction"] == pytest.approx(0.25)
    assert s["prompts"][0]["area_fraction_of_tissue"] == pytest.approx(0.3)
    assert s["prompts"][2]["objects_per_mm2_tissue"] == pytest.approx(4 / (100 * 0.25 / 1e6))


# ------------------------------------------------------------------------------------------ resume / split
class _Stop(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_result(slide, tmp_path, test_model):
    prompts = ["tumor nuclei", "stroma"]
    ref = test_model.segment_slide(slide, prompts, out=tmp_path / "ref", geojson=True, progress=False)

    def stop_after_3(band, done):
        if done == 3:
            raise _Stop

    out = tmp_path / "run"
    with pytest.raises(_Stop):
        test_model.segment_slide(slide, prompts, out=out, geojson=True, progress=False, on_band=stop_after_3)
    assert sorted(p.name for p in out.iterdir()) == [".partial"]  # nothing half-written in place
    assert len(list((out / ".partial" / "parts").glob("band_*.npz"))) == 3
    progress = json.loads((out / ".partial" / "progress-rank0.json").read_text())
    assert progress["bands_done"] == [0, 1, 2]
    with pytest.raises(SlideError, match="--resume"):
        test_model.segment_slide(slide, prompts, out=out, progress=False)
    with pytest.raises(SlideError, match="other settings.*overlap"):
        test_model.segment_slide(slide, prompts, out=out, overlap=16, resume=True, progress=False)
    done = []
    res = test_model.segment_slide(slide, prompts, out=out, geojson=True, resume=True, progress=False,
                                   on_band=lambda b, n: done.append(b))
    assert 0 not in done and len(done) == res.summary["tiles"]["total"] // 11 - 3  # 8 tile rows, 3 were done
    assert not (out / ".partial").exists()
    for p in prompts:
        for a, b in zip(_levels(ref.masks[p]), _levels(res.masks[p])):
            np.testing.assert_array_equal(a, b)
    assert ref.objects_csv.read_text() == res.objects_csv.read_text()
    assert ref.summary["prompts"] == res.summary["prompts"]
    n_ref = len(json.loads(ref.geojson.read_text())["features"])
    assert n_ref == len(json.loads(res.geojson.read_text())["features"])
    with pytest.raises(SlideError, match="finished slide run"):
        test_model.segment_slide(slide, prompts, out=out, progress=False)


def test_bands_split_across_processes_merge_to_the_single_process_result(slide, tmp_path, monkeypatch):
    from pathsegmentor.slide.infer import bands_for_rank

    assert sorted(bands_for_rank(7, 0, 2) + bands_for_rank(7, 1, 2)) == list(range(7))
    single = segment_slide(DarkStub(), slide, ["nuclei"], out=tmp_path / "one", progress=False)

    out = tmp_path / "two"
    stubs = {0: DarkStub(), 1: DarkStub()}
    results = {}

    class FakeProcs:
        """Rank ``rank`` of 2; the main process's last barrier (after its own bands) runs rank 1."""

        def __init__(self, rank):
            self.rank, self.world, self.device, self.barriers = rank, 2, None, 0

        def barrier(self):
            self.barriers += 1
            if self.rank == 0 and self.barriers == 3:
                current["rank"] = 1
                results[1] = segment_slide(stubs[1], slide, ["nuclei"], out=out, progress=False, resume=True)
                current["rank"] = 0

        @property
        def is_main(self):
            return self.rank == 0

    current = {"rank": 0}
    monkeypatch.setattr(slide_infer, "_Processes", lambda: FakeProcs(current["rank"]))
    r = segment_slide(stubs[0], slide, ["nuclei"], out=out, progress=False)
    assert results[1] is None and r is not None
    stubs = [stubs[0], stubs[1]]
    assert stubs[0].calls + stubs[1].calls == single.summary["tiles"]["predicted"]
    assert stubs[0].calls > 0 and stubs[1].calls > 0
    for a, b in zip(_levels(single.masks["nuclei"]), _levels(r.masks["nuclei"])):
        np.testing.assert_array_equal(a, b)
    assert single.objects_csv.read_text() == r.objects_csv.read_text()


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_give_clear_errors_and_write_nothing(slide, tmp_path):
    stub = DarkStub()
    out = tmp_path / "out"
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    with pytest.raises(SlideError, match="not a whole-slide image"):
        segment_slide(stub, text, ["nuclei"], out=out, progress=False)
    png = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(png)
    with pytest.raises(SlideError, match="not a whole-slide image"):
        segment_slide(stub, png, ["nuclei"], out=out, progress=False)
    with pytest.raises(SlideError, match="not found"):
        segment_slide(stub, tmp_path / "missing.tif", ["nuclei"], out=out, progress=False)
    nompp = write_slide(tmp_path / "nompp.tif", _spec(height=512, width=512, levels=2, mpp=None))
    with pytest.raises(SlideError, match="--mpp"):
        segment_slide(stub, nompp, ["nuclei"], out=out, progress=False)
    with pytest.raises(SlideError, match=r"--level 9 .*3 level\(s\): level 0: 2048x1536.*level 2: 512x384"):
        segment_slide(stub, slide, ["nuclei"], out=out, level=9, progress=False)
    with pytest.raises(SlideError, match="non-empty phrase"):
        segment_slide(stub, slide, ["  "], out=out, progress=False)
    assert not out.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    with pytest.raises(SlideError, match="not empty"):
        segment_slide(stub, slide, ["nuclei"], out=foreign, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.docx"]
    # with --mpp the slide without metadata works (level 1 at 0.5 µm/px)
    res = segment_slide(stub, nompp, ["nuclei"], out=out, mpp=0.25, progress=False)
    assert res.summary["slide_mpp"] == 0.25 and res.summary["mpp_source"] == "--mpp" and res.summary["level"] == 1


def test_cli_end_to_end_and_exit_codes(tmp_path, test_model_dir, capsys):
    from pathsegmentor.cli import main as top_main
    from pathsegmentor.slide.cli import main

    small = write_slide(tmp_path / "small.tif", SlideSpec(512, 640, 0.5, 2, tissue=[(64, 64, 448, 448)],
                                                          disks=[(200.0, 200.0, 12.0)]))
    out = tmp_path / "o"
    rc = main([str(small), "--prompt", "nuclei", "--out", str(out), "--model", str(test_model_dir), "--geojson",
               "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert {"nuclei.tif", "objects.csv", "summary.json", "small.geojson", "tissue.png"} <= {p.name for p in out.iterdir()}
    printed = json.loads(capsys.readouterr().out)
    assert printed["tiles"]["total"] == 35  # 5 tile rows x 7 columns
    assert main([str(small), "--prompt", "nuclei", "--out", str(out), "--model", str(test_model_dir)]) == 2
    assert "finished slide run" in capsys.readouterr().err
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    assert top_main(["slide", str(bad), "--prompt", "x", "--out", str(tmp_path / "b")]) == 2
    assert "not a whole-slide image" in capsys.readouterr().err
    assert main([str(small), "--prompt", "x", "--out", str(tmp_path / "c"), "--level", "5"]) == 2
    assert "level(s)" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_two_processes_with_torchrun_match_one(tmp_path, test_model_dir):
    """Real multi-process run (torchrun, gloo on CPU): bands split by rank, merged by the main process."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    small = write_slide(tmp_path / "small.tif", SlideSpec(512, 640, 0.5, 2, tissue=[(64, 64, 448, 448)],
                                                          disks=[(200.0, 200.0, 12.0)]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(small), "--prompt", "nuclei", "--model", str(test_model_dir), "--quiet"]
    one = subprocess.run([sys.executable, "-m", "pathsegmentor.slide.cli", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "pathsegmentor.slide.cli", *args,
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert sorted(p["rank"] for p in summary["processes"]) == [0, 1]
    assert all(p["world"] == 2 and p["bands_this_run"] > 0 for p in summary["processes"])
    for a, b in zip(_levels(tmp_path / "one" / "nuclei.tif"), _levels(tmp_path / "two" / "nuclei.tif")):
        np.testing.assert_allclose(a.astype(int), b.astype(int), atol=1)  # same tiles, other process
    assert (tmp_path / "one" / "objects.csv").read_text().count("\n") == \
        (tmp_path / "two" / "objects.csv").read_text().count("\n")
