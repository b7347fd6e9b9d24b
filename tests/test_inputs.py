"""Every input type gives masks of the input's size; mpp rescaling and tiling map back to it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pathsegmentor.inference.image_io import ImageReadError, read_image, to_rgb_uint8

H, W = 70, 90


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(test_model, rgb):
    return test_model.segment(rgb, ["nuclei", "gland"])


def _count_encoder_calls(model, monkeypatch):
    shapes = []
    original = model.image_encoder.forward_features

    def counted(x):
        shapes.append(tuple(x.shape))
        return original(x)

    monkeypatch.setattr(model.image_encoder, "forward_features", counted)
    return shapes


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_image_files(test_model, rgb, reference, tmp_path, suffix):
    path = tmp_path / f"tile{suffix}"
    Image.fromarray(rgb).save(path)
    res = test_model.segment(path, ["nuclei", "gland"])
    assert res.masks.shape == (2, H, W)
    res_str = test_model.segment(str(path), ["nuclei", "gland"])
    assert np.array_equal(res.probs, res_str.probs)
    if suffix != ".jpg":  # lossless formats give exactly the array's result
        assert np.array_equal(res.probs, reference.probs)


def _variants(rgb):
    rgba = np.concatenate([rgb, np.full((H, W, 1), 255, np.uint8)], axis=2)
    gray = rgb[..., 0]
    return {
        "pil_rgb": (Image.fromarray(rgb), rgb),
        "pil_rgba": (Image.fromarray(rgba, "RGBA"), rgb),
        "pil_l": (Image.fromarray(gray, "L"), np.repeat(gray[..., None], 3, 2)),
        "np_hw_uint8": (gray, np.repeat(gray[..., None], 3, 2)),
        "np_hwc_uint16": (rgb.astype(np.uint16) * 257, rgb),
        "np_hwc4": (rgba, rgb),
        "np_float01": (rgb.astype(np.float32) / 255.0, rgb),
        "torch_chw_uint8": (torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), rgb),
        "torch_chw_float01": (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0, rgb),
    }


@pytest.mark.parametrize("kind", list(_variants(np.zeros((H, W, 3), np.uint8))))
def test_in_memory_inputs(test_model, rgb, kind):
    image, expected_rgb = _variants(rgb)[kind]
    assert np.array_equal(to_rgb_uint8(image), expected_rgb)
    res = test_model.segment(image, ["nuclei", "gland"])
    assert res.masks.shape == (2, H, W) and res.probs.shape == (2, H, W)
    assert res.image_size == (H, W)


def test_rgb_variants_give_identical_results(test_model, rgb, reference):
    for kind in ("pil_rgb", "pil_rgba", "np_hwc_uint16", "np_hwc4", "np_float01", "torch_chw_uint8",
                 "torch_chw_float01"):
        res = test_model.segment(_variants(rgb)[kind][0], ["nuclei", "gland"])
        assert np.array_equal(res.probs, reference.probs), kind


def test_mpp_rescaling_maps_back_to_input_size(test_model, monkeypatch):
    assert test_model.config.preprocess.mpp == 0.5
    shapes = _count_encoder_calls(test_model, monkeypatch)
    fine = np.random.default_rng(1).integers(0, 256, (120, 100, 3), dtype=np.uint8)
    res = test_model.segment(fine, "nuclei", mpp=0.25)  # 40x input: shrunk 2x to the model's 0.5 um/px
    assert shapes[-1][-2:] == (64, 64)  # 60x50 padded to the size divisor (32)
    assert res.masks.shape == (1, 120, 100) and res.mpp == 0.25
    coarse = np.random.default_rng(2).integers(0, 256, (60, 40, 3), dtype=np.uint8)
    res = test_model.segment(coarse, "nuclei", mpp=1.0)  # 10x input: enlarged 2x
    assert shapes[-1][-2:] == (128, 96)  # the encoder sees a 2x larger image (120x80, padded)
    assert res.masks.shape == (1, 60, 40)
    same = test_model.segment(coarse, "nuclei", mpp=0.5)  # the model's own mpp: no rescaling
    assert shapes[-1][-2:] == (64, 64) and same.masks.shape == (1, 60, 40)
    assert np.array_equal(same.probs, test_model.segment(coarse, "nuclei").probs)


def test_large_image_is_tiled_and_matches_input_size(test_model, monkeypatch):
    size = test_model.config.preprocess.input_size
    shapes = _count_encoder_calls(test_model, monkeypatch)
    big = np.random.default_rng(3).integers(0, 256, (300, 2 * size + 7, 3), dtype=np.uint8)
    res = test_model.segment(big, ["nuclei", "gland"])
    assert res.masks.shape == (2, 300, 2 * size + 7) and res.probs.shape == res.masks.shape
    assert len(shapes) > 1 and all(max(s[-2:]) <= size for s in shapes)
    assert np.isfinite(res.probs).all()
    # with mpp the rescaled image is tiled and mapped back
    res = test_model.segment(big[:200, :200], "nuclei", mpp=1.0)  # 400x400 at the model's mpp
    assert res.masks.shape == (1, 200, 200)


def test_bad_images_have_clear_errors(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ImageReadError, match="corrupt"):
        read_image(corrupt)
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(truncated)
    with pytest.raises(ImageReadError):
        to_rgb_uint8(np.zeros((4, 5, 6, 7), np.uint8))
    with pytest.raises(ImageReadError, match="float"):
        to_rgb_uint8(np.full((4, 4, 3), 300.0, np.float32))


def test_truncated_tiff_is_reported_as_such(tmp_path):
    """A cut-off TIFF (a real MoNuSeg tile, first 200 kB) is named corrupt or truncated, not 'shape (0,)'."""
    import tifffile

    src = tmp_path / "full.tif"
    tifffile.imwrite(src, np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(src.read_bytes()[:200_000])
    cut_header = tmp_path / "cut_header.tif"
    cut_header.write_bytes(src.read_bytes()[:100])
    for bad in (cut, cut_header):
        with pytest.raises(ImageReadError, match="corrupt or truncated") as info:
            read_image(bad)
        assert str(bad) in str(info.value) and "shape (0,)" not in str(info.value)


def test_segment_mpp_auto_reports_the_estimate_and_refuses_without_nuclei(test_model):
    from PIL import Image

    from pathsegmentor.resources import SAMPLES_DIR

    rgb = np.asarray(Image.open(SAMPLES_DIR / "monuseg_TCGA-18-5592-01Z-00-DX1.png").convert("RGB"))
    res = test_model.segment(rgb, "nuclei", mpp="auto")
    est = res.mpp_estimate
    assert est is not None and res.mpp == pytest.approx(est["mpp"], rel=1e-3) and est["low"] <= est["mpp"] <= est["high"] and est["nuclei"] > 0
    assert any("mpp estimated" in w for w in res.warnings) and res.summary()["mpp_estimate"] == est
    with pytest.raises(ValueError, match="mpp"):
        test_model.segment(np.full((256, 256, 3), 240, np.uint8), "nuclei", mpp="auto")
    with pytest.raises(ValueError, match="'auto'"):
        test_model.segment(rgb, "nuclei", mpp="fast")
