"""Whole-slide inference, the outputs of a run: stitching equal to ``segment`` with background tiles
skipped, resampling from a finer level, QuPath GeoJSON in level-0 coordinates and measurements on
shapes of known size (fixture slide and stub model in slide_helpers.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")
shapely = pytest.importorskip("shapely")

from pathsegmentor.inference.tiling import tile_grid  # noqa: E402
from pathsegmentor.slide import segment_slide  # noqa: E402
from slide_helpers import DISKS, MPP0, SQUARES, DarkStub, slide_spec, tiff_levels  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ stitching
def test_stitched_equals_direct_segment_and_skips_background(slide, tmp_path, present_test_model):
    test_model = present_test_model  # every window present: the TIFFs hold the blended probabilities
    res = segment_slide(test_model, slide, ["tumor nuclei", "stroma"], out=tmp_path / "o", dtype="float32",
                        progress=False)
    tiles = res.summary["tiles"]
    # working grid 768x1024, tiles 128 / overlap 32: 8 x 11 tiles; tissue spans working px 128..640
    assert tiles["total"] == 88
    ys = [t.y0 for t in tile_grid(768, 1, 128, 32)]
    xs = [t.x0 for t in tile_grid(1, 1024, 128, 32)]
    touch = lambda s, n: s + 128 > 128 - 0.5 and s < 640 + 0.5  # noqa: E731 (1 thumbnail px margin)
    expected = sum(touch(y, 768) for y in ys) * sum(touch(x, 1024) for x in xs)
    assert tiles["predicted"] == expected and tiles["skipped_background"] == 88 - expected
    probs = tiff_levels(res.masks["tumor nuclei"])[0]
    assert probs.dtype == np.float32 and probs.shape == (768, 1024)
    assert (probs[:, 704:] == 0).all() and (probs[:, :704] > 0).any()  # only skipped tiles there: background
    # direct segment of a region aligned with the slide grid: 3x3 tiles from (192, 192)
    with tifffile.TiffFile(slide) as t:
        region = t.series[0].levels[1].asarray()[192:512, 192:512]
    direct = test_model.segment(region, ["tumor nuclei", "stroma"])
    probs2 = tiff_levels(res.masks["stroma"])[0]
    for k, out in enumerate((probs, probs2)):
        got = out[192:512, 192:512][32:-32, 32:-32]  # away from the region's own border seams
        np.testing.assert_allclose(got, direct.probs[k][32:-32, 32:-32], atol=1e-4, rtol=0)
    with tifffile.TiffFile(res.masks["stroma"]) as t:
        page = t.series[0].levels[0].keyframe
        assert page.is_tiled and len(t.series[0].levels) >= 3
        assert page.resolution[0] == pytest.approx(1e4 / 0.5) and page.resolutionunit == 3


def test_windows_judged_absent_paint_nothing_as_segment_returns_nothing(slide, tmp_path, test_model):
    """The random model's presence (about 0.45) is under its 0.5 threshold in every window: segment() returns empty
    masks, and the slide's TIFFs, objects and summary are empty too (its presence_max is still reported)."""
    with tifffile.TiffFile(slide) as t:
        region = t.series[0].levels[1].asarray()[192:512, 192:512]
    direct = test_model.segment(region, ["tumor nuclei", "stroma"])
    assert not direct.masks.any() and (direct.presence < 0.5).all() and (direct.probs > 0.5).any()
    res = segment_slide(test_model, slide, ["tumor nuclei", "stroma"], out=tmp_path / "o", progress=False)
    for p in ("tumor nuclei", "stroma"):
        assert not tiff_levels(res.masks[p])[0].any()
    s = res.summary
    assert [p["area_mm2"] for p in s["prompts"]] == [0.0, 0.0] and s["prompts"][0]["objects"] == 0
    assert 0 < s["prompts"][0]["presence_max"] < s["presence_threshold"] == 0.5


def test_presence_gates_each_window_alone():
    """A tile whose presence is under the threshold adds zeros for that prompt (and only that prompt)."""
    from pathsegmentor.inference.tiling import gate_by_presence

    probs = np.full((2, 4, 4), 0.9, np.float32)
    out = gate_by_presence(probs, np.array([0.3, 0.7], np.float32), 0.5)
    assert not out[0].any() and (out[1] == probs[1]).all() and out.dtype == np.float32


def test_upsampled_level_uses_remaining_scale(slide, tmp_path):
    """Model mpp 0.4 on a 0.25/0.5/1.0 pyramid: level 0 is read and each tile resampled to 0.4."""
    stub = DarkStub(mpp=0.4)
    res = segment_slide(stub, slide, ["nuclei"], out=tmp_path / "o", progress=False, vocabulary="open")
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

    res = segment_slide(DarkStub(), slide, ["nuclei", "dark region"], out=tmp_path / "o", geojson=True, vocabulary="open",
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

    res = segment_slide(DarkStub(), slide, ["nuclei"], out=tmp_path / "o", progress=False, vocabulary="open")
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



# ------------------------------------------------------------------------------------------ prompt resolution
def test_slide_outputs_carry_prompt_resolution(slide, tmp_path, present_test_model):
    """A model that records only 'nuclei': 'all nuclei' is answered (synonym), 'lymphocyte nuclei' by its
    trained parent, 'stroma' is refused and not run; summary.json and every GeoJSON feature say so."""
    import copy

    model = copy.deepcopy(present_test_model)
    model.__dict__.pop("_predictor", None)  # a fresh predictor for the copy
    model.config.vocabulary = {"nuclei": {"sources": ["test"]}}
    res = segment_slide(model, slide, ["all nuclei", "lymphocyte nuclei", "stroma"], out=tmp_path / "o",
                        geojson=True, instances=False, progress=False)
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [p["prompt"] for p in s["prompts"]] == ["all nuclei", "lymphocyte nuclei"]
    assert [r["relation"] for r in s["prompt_resolution"]] == ["same", "broader"]
    assert [r["answered_as"] for r in s["prompt_resolution"]] == ["nuclei", "nuclei"]
    assert [r["prompt"] for r in s["refused_prompts"]] == ["stroma"] and s["refused_prompts"][0]["suggestions"]
    assert set(res.masks) == {"all nuclei", "lymphocyte nuclei"}
    feats = json.loads(res.geojson.read_text())["features"]
    assert feats and all(f["properties"]["promptResolution"]["answeredAs"] == "nuclei" for f in feats)
    assert {f["properties"]["promptResolution"]["prompt"] for f in feats} <= {"all nuclei", "lymphocyte nuclei"}


def test_slide_with_only_refused_prompts_is_an_error(slide, tmp_path, test_model):
    import copy

    from pathsegmentor.slide.reader import SlideError

    model = copy.deepcopy(test_model)
    model.__dict__.pop("_predictor", None)  # a fresh predictor for the copy
    model.config.vocabulary = {"nuclei": {}}
    with pytest.raises(SlideError, match="No prompt this model can answer.*stroma"):
        segment_slide(model, slide, ["stroma"], out=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ separated instances
class _ColouredDisks:
    """A SlideSpec-like renderer: disk k drawn in a dark colour whose red channel is 40 + 20 k."""

    def __init__(self, spec, disks):
        self.spec, self.disks = spec, disks

    def render(self, y0, x0, h, w, downsample):
        out = self.spec.render(y0, x0, h, w, downsample)
        Y = ((np.arange(y0, y0 + h) + 0.5) * downsample)[:, None]
        X = ((np.arange(x0, x0 + w) + 0.5) * downsample)[None, :]
        painted = np.zeros((h, w), bool)
        for k, (cx, cy, r) in enumerate(self.disks):
            m = ((Y - cy) ** 2 + (X - cx) ** 2 <= r * r) & ~painted
            out[m] = (40 + 20 * k, 20, 100)
            painted |= m
        return out

    def __getattr__(self, name):
        return getattr(self.spec, name)


class SeparationStub(DarkStub):
    """DarkStub with a separation head: ideal maps from the colour-coded disks (instance id from red)."""

    has_separation = True

    def predict_window_maps(self, window, text_emb, points, boxes, hires, separation=False):
        from types import SimpleNamespace

        from pathsegmentor.inference.separation import separation_targets

        probs, pres = self.predict_window(window, text_emb, points, boxes, hires)
        inst = np.where(probs[0] > 0.5, (window[..., 0].astype(np.int32) - 30) // 20 + 1, 0).astype(np.int32)
        maps = np.repeat(separation_targets(inst)[None], len(probs), 0)
        return SimpleNamespace(probs=probs, presence=pres, separation=maps)


def test_slide_instances_from_separation_maps_split_touching_nuclei(tmp_path):
    from pathsegmentor.slide.synthetic import write_slide

    # a small nucleus pressed against a large one (level-0 px at 0.25 µm/px; working grid at 0.5)
    disks = [(600.0, 600.0, 56.0), (664.0, 600.0, 24.0)]
    spec = slide_spec(disks=[], squares=[])
    path = write_slide(tmp_path / "touching.tif", _ColouredDisks(spec, disks))
    counts = {}
    for name, model, decoder in (("watershed", DarkStub(), None), ("separation", SeparationStub(), None),
                                 ("distance", SeparationStub(), "distance"),
                                 ("set-to-watershed", SeparationStub(), "watershed"),
                                 ("max-100-um2", SeparationStub(), None)):
        if decoder is not None:  # the model's inference.instances, as segment() reads it
            model.config.inference.instances = decoder
        if name.startswith("max-"):  # the pair touches: one ~640 µm² part of the mask, over the limit
            model.config.inference.max_cell_component_um2 = 100.0
        res = segment_slide(model, path, ["nuclei"], out=tmp_path / name, geojson=True, vocabulary="open",
                            progress=False)
        fc = json.loads(res.geojson.read_text())
        counts[name] = sum(f["properties"]["objectType"] == "detection" for f in fc["features"])
    assert counts == {"watershed": 1, "separation": 2, "distance": 2, "set-to-watershed": 1, "max-100-um2": 0}


# ------------------------------------------------------------------------------ one rule with segment()
def test_slide_decides_instances_by_the_ontology_as_segment_does(slide, tmp_path):
    """'glands' (an instance concept without 'nucle'/'cell' in it) gets objects; 'dark cells' (no concept: the
    old substring rule gave it objects) is a region, as segment() decides (wants_instances)."""
    from pathsegmentor.inference.predictor import Predictor
    from pathsegmentor.inference.separation import wants_instances

    prompts = ["glands", "dark cells"]
    res = segment_slide(DarkStub(), slide, prompts, out=tmp_path / "o", geojson=True, vocabulary="open",
                        progress=False)
    rows = res.summary["prompts"]
    stub = DarkStub()
    assert [r["instances"] for r in rows] == [wants_instances(r, stub.config.inference)
                                             for r in Predictor(stub).resolve(prompts, "open")]
    assert [r["instances"] for r in rows] == [True, False]
    assert rows[0]["objects"] == len(DISKS) + len(SQUARES) and rows[1]["regions"] > 0


def test_size_limit_clears_the_mask_tiff_as_well_as_the_table(slide, tmp_path):
    """max_cell_component_um2 = 150 µm²: the 30 px disk (177 µm²) is gone from the TIFF, the objects and the summary
    area; the other shapes (79-120 µm²) stay."""
    stub = DarkStub()
    stub.config.inference.max_cell_component_um2 = 150.0
    res = segment_slide(stub, slide, ["nuclei"], out=tmp_path / "o", progress=False, vocabulary="open")
    probs = tiff_levels(res.masks["nuclei"])[0]  # working grid at 0.5 µm/px: level-0 / 2
    big, kept = DISKS[1], DISKS[0]
    assert big[2] == 30.0 and not probs[int(big[1] / 2) - 12:int(big[1] / 2) + 12,
                                         int(big[0] / 2) - 12:int(big[0] / 2) + 12].any()
    assert (probs[int(kept[1] / 2), int(kept[0] / 2)] > 127)
    import pandas as pd

    df = pd.read_csv(res.objects_csv)
    assert len(df) == len(DISKS) + len(SQUARES) - 1
    assert not (np.hypot(df.centroid_x - big[0], df.centroid_y - big[1]) < big[2]).any()
    drawn = sum(math.pi * r * r for *_, r in DISKS if r != 30.0) + \
        sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in SQUARES)
    assert res.summary["prompts"][0]["area_mm2"] == pytest.approx(drawn * MPP0 ** 2 / 1e6, rel=0.05)


@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_size_limit_equals_the_whole_image_rule(seed):
    """Parts joined across strip seams are measured whole: the two-pass strip filter removes exactly what
    plausibility.oversized_parts removes from the whole mask."""
    from scipy import ndimage as ndi

    from pathsegmentor.inference.plausibility import oversized_parts
    from pathsegmentor.slide.oversized import drop_oversized_strips

    rng = np.random.default_rng(seed)
    probs = (ndi.gaussian_filter(rng.random((300, 200)), 3) * 255).astype(np.uint8)
    probs = np.where(probs > np.percentile(probs, 45), probs, 0).astype(np.uint8)
    mask = probs > 127
    max_px = float(np.percentile(np.bincount(ndi.label(mask)[0].ravel())[1:], 70))
    expected = np.where(oversized_parts(mask, max_px), 0, probs)
    got = np.concatenate(list(drop_oversized_strips(lambda: (probs[r:r + 32] for r in range(0, 300, 32)), 127,
                                                    max_px)))
    assert oversized_parts(mask, max_px).any() and (got == expected).all()
