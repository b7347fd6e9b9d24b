"""Slides from real scanners (../shared/data/slides, see its PROVENANCE.txt): every backend on every real
file — levels, dimensions, mpp and its source; the same region read by each backend agrees; DICOM
colours are right (frames YCbCr, declared RGB); the near-white extract is "no tissue"; ``pathsegmentor
slide`` end to end on the CMU file (GeoJSON; OpenSlide and tifffile give identical masks) and on the
JPEG 2000 TCGA file with ``--mpp auto``; a truncated SVS is reported as such with nothing written."""
from __future__ import annotations

import json

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")
shapely = pytest.importorskip("shapely")

from conftest import shared_data  # noqa: E402
from pathsegmentor.slide import segment_slide  # noqa: E402
from pathsegmentor.slide.reader import SlideError, open_slide  # noqa: E402
from slide_helpers import tiff_levels  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CMU, TCGA, SMALL, DICOM = ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs", "openslide-python-small.svs",
                           "dicom-cmu-1-small-region")


def _need_openslide():
    pytest.importorskip("openslide", reason="openslide-python not installed: pip install 'pathsegmentor[slides]'")


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_levels_dimensions_and_mpp_of_the_svs_files(backend):
    if backend == "openslide":
        _need_openslide()
    with open_slide(shared_data("slides", CMU), backend=backend) as r:
        assert r.backend == backend and backend in r.backend_reason
        assert [(lv.width, lv.height) for lv in r.levels] == [(2220, 2967)]
        assert r.mpp == pytest.approx(0.499) and ("Aperio" in r.mpp_source or "aperio" in r.mpp_source)
    with open_slide(shared_data("slides", TCGA), backend=backend) as r:
        assert [(lv.width, lv.height) for lv in r.levels] == [(4443, 3567), (2221, 1783)]
        assert r.mpp is None and r.mpp_source == ""
    with open_slide(shared_data("slides", SMALL), backend=backend) as r:
        assert r.dimensions == (16, 16) and r.mpp == pytest.approx(0.499)


def test_auto_backend_choice_and_dicom_levels():
    with open_slide(shared_data("slides", CMU)) as r:
        assert r.backend == "tifffile" and r.backend_reason.startswith("auto")
    _need_openslide()
    folder = shared_data("slides", DICOM)
    for path in (folder, folder / "level-1-frames-0-9.dcm"):
        with open_slide(path) as r:
            assert r.backend == "dicom" and "DICOM" in r.backend_reason
            assert len(r.levels) == 12 and r.dimensions == (2967, 2220)
            assert (r.levels[1].width, r.levels[1].height) == (1110, 1483)
            assert r.mpp == pytest.approx(0.499) and "PixelSpacing" in r.mpp_source
            assert "YCbCr" in r.colour
    with pytest.raises(SlideError, match="Unknown slide backend 'vips'.*tifffile"):
        open_slide(folder, backend="vips")
    with pytest.raises(SlideError, match="directory"):
        open_slide(folder, backend="tifffile")


def test_same_region_from_every_backend():
    _need_openslide()
    reads = {}
    for name, backend in [(CMU, "tifffile"), (CMU, "openslide"), (DICOM, "dicom")]:
        with open_slide(shared_data("slides", name), backend=backend) as r:
            reads[backend] = r.read_region(0, 1000, 900, 300, 200).astype(np.int16)
    np.testing.assert_array_equal(reads["tifffile"], reads["openslide"])  # same JPEG tiles, same decoder
    # DICOM is a re-encoding of the same pixels: close, and in colour (a YCbCr-as-RGB read is ~40 off)
    diff = np.abs(reads["dicom"] - reads["tifffile"])
    assert diff.mean() < 12
    assert np.abs(reads["dicom"].mean((0, 1)) - reads["tifffile"].mean((0, 1))).max() < 4
    with open_slide(shared_data("slides", TCGA), backend="tifffile") as a, \
            open_slide(shared_data("slides", TCGA), backend="openslide") as b:
        np.testing.assert_array_equal(a.read_region(0, 300, 500, 200, 300), b.read_region(0, 300, 500, 200, 300))
        # level 1's downsample is 2.0005: OpenSlide places it with a sub-pixel offset
        d1 = np.abs(a.read_region(1, 300, 500, 200, 300).astype(int) - b.read_region(1, 300, 500, 200, 300))
        assert d1.mean() < 4


def test_dicom_colour_conversion_is_needed_and_right():
    _need_openslide()
    from pathsegmentor.slide.backend_dicom import jpeg_colour_space, ycbcr_to_rgb

    with open_slide(shared_data("slides", DICOM)) as r, open_slide(shared_data("slides", CMU)) as svs:
        ref = svs.read_region(0, 1200, 600, 256, 256).astype(np.int16)
        raw = r._os.read_region((600, 1200), 0, (256, 256))  # OpenSlide's read, as declared (RGB)
        raw = np.asarray(raw)[:, :, :3].astype(np.int16)
        assert np.abs(raw - ref).mean() > 25  # naive: wrong colours
        good = r.read_region(0, 1200, 600, 256, 256).astype(np.int16)
        assert np.abs(good - ref).mean() < 12
    white = np.full((2, 2, 3), [255, 128, 128], np.uint8)
    assert (ycbcr_to_rgb(white) == 255).all()
    assert jpeg_colour_space(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00") == "YCbCr"
    adobe = b"\xff\xd8\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
    assert jpeg_colour_space(adobe) == "RGB"


def test_near_white_extract_is_no_tissue(tmp_path, test_model):
    res = segment_slide(test_model, shared_data("slides", SMALL), ["nuclei"], out=tmp_path / "o", progress=False)
    s = res.summary
    assert s["tissue"]["area_mm2"] == 0.0 and s["tiles"]["predicted"] == 0
    assert s["prompts"][0]["area_mm2"] == 0.0


@pytest.mark.slow
def test_cmu_end_to_end_geojson_and_identical_masks_across_backends(tmp_path, test_model_dir, capsys):
    _need_openslide()
    from pathsegmentor.slide.cli import main

    cmu = shared_data("slides", CMU)
    outs = {}
    for backend in ("tifffile", "openslide"):
        out = tmp_path / backend
        rc = main([str(cmu), "--prompt", "nuclei", "--out", str(out), "--model", str(test_model_dir), "--geojson",
                   "--quiet", "--backend", backend])
        assert rc == 0, capsys.readouterr().err
        printed = json.loads(capsys.readouterr().out)
        assert printed["backend"] == backend and printed["slide_mpp"] == pytest.approx(0.499)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["backend"] == backend and summary["backend_reason"]
        gj = json.loads((out / "cmu-1-small-region.geojson").read_text())
        assert gj["type"] == "FeatureCollection"
        outs[backend] = out
    for a, b in zip(tiff_levels(outs["tifffile"] / "nuclei.tif"), tiff_levels(outs["openslide"] / "nuclei.tif")):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_tcga_jpeg2000_with_mpp_auto(tmp_path, test_model_dir, capsys):
    from pathsegmentor.slide.cli import main

    tcga = shared_data("slides", TCGA)
    assert main([str(tcga), "--prompt", "nuclei", "--out", str(tmp_path / "n"), "--model", str(test_model_dir),
                 "--quiet"]) == 2
    assert "--mpp" in capsys.readouterr().err and not (tmp_path / "n").exists()
    out = tmp_path / "o"
    rc = main([str(tcga), "--prompt", "nuclei", "--out", str(out), "--model", str(test_model_dir), "--quiet",
               "--mpp", "auto", "--no-instances"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "mpp estimated from the image" in captured.err
    est = json.loads((out / "summary.json").read_text())["mpp_estimate"]
    assert 0.05 < est["mpp"] < 5 and est["low"] < est["mpp"] < est["high"] and est["nuclei"] >= 50
    assert "haematoxylin" in est["method"]


def test_truncated_svs_is_reported_and_nothing_written(tmp_path, test_model_dir, capsys):
    from pathsegmentor.slide.cli import main

    data = shared_data("slides", CMU).read_bytes()
    for name, blob in [("cut.svs", data[: len(data) // 3]), ("head.svs", data[:200])]:
        p = tmp_path / name
        p.write_bytes(blob)
        out = tmp_path / f"out-{name}"
        assert main([str(p), "--prompt", "nuclei", "--out", str(out), "--model", str(test_model_dir), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "corrupt or truncated" in err, err
        assert not out.exists()
