"""The dense pixel decoder (dense mode): shapes, one shared pixel embedding for N prompts, gradients, the
thick-border separation targets and decoder on hand-made touching objects, and exact resume of a training leg."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pathsegmentor import create_model
from pathsegmentor.inference.separation import decode_instances, separation_targets
from pathsegmentor.modeling.pixel_decoder import PixelDecoder

DENSE = {"mask_decoder": {"dense": True, "hires": False, "separation_channels": 4, "dense_widths": [16, 16, 8, 8],
                          "dense_dim": 8}}


@pytest.fixture(scope="module")
def dense_model():
    torch.manual_seed(0)
    return create_model("pathsegmentor-test", overrides=DENSE).eval()


def test_pixel_decoder_shapes_with_and_without_skips():
    dec = PixelDecoder(in_dim=32, skip_channels={4: 8, 8: 16}, widths=(24, 16, 12, 8), out_dim=6)
    pixels, emb = torch.randn(2, 3, 96, 64), torch.randn(2, 32, 6, 4)
    skips = {4: torch.randn(2, 8, 24, 16), 8: torch.randn(2, 16, 12, 8)}
    assert dec(pixels, emb, skips).shape == (2, 6, 48, 32)
    vit_like = PixelDecoder(in_dim=32, skip_channels={}, widths=(24, 16, 12, 8), out_dim=6)
    assert vit_like(pixels, emb).shape == (2, 6, 48, 32)
    assert not vit_like.lateral.keys() - {"2"}  # only the pixel stem feeds a ViT's decoder
    with pytest.raises(ValueError, match="4 widths"):
        PixelDecoder(in_dim=32, skip_channels={}, widths=(8, 8))


def test_stride_one_stage_shape_and_zero_start():
    """The stride-1 stage gives ``[B, out_dim, H, W]`` and, untrained, exactly the upsampled stride-2 embedding."""
    torch.manual_seed(0)
    two = PixelDecoder(in_dim=32, skip_channels={4: 8}, widths=(24, 16, 12, 8), out_dim=6).eval()
    one = PixelDecoder(in_dim=32, skip_channels={4: 8}, widths=(24, 16, 12, 8), out_dim=6, fullres_dim=10).eval()
    missing, unexpected = one.load_state_dict(two.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("fullres") for k in missing)
    pixels, emb, skips = torch.randn(2, 3, 96, 64), torch.randn(2, 32, 6, 4), {4: torch.randn(2, 8, 24, 16)}
    with torch.no_grad():
        out2, out1 = two(pixels, emb, skips), one(pixels, emb, skips)
    assert (two.stride, one.stride) == (2, 1) and out1.shape == (2, 6, 96, 64)
    up = torch.nn.functional.interpolate(out2, size=(96, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(out1, up, atol=1e-5)
    with torch.no_grad():  # once trained (here: the last convolution set), the stage changes the embedding
        one.fullres[-1].weight.normal_()
        assert not torch.allclose(one(pixels, emb, skips), up, atol=1e-3)


def test_stride_one_model_reads_masks_at_the_input_resolution():
    torch.manual_seed(0)
    over = {"mask_decoder": {**DENSE["mask_decoder"], "dense_fullres_dim": 8}}
    model = create_model("pathsegmentor-test", overrides=over).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(pixels, [["nuclei", "gland"]], full_resolution=False, separation=True)
    assert out.mask_logits.shape == (1, 2, 64, 64) and out.separation.shape[-2:] == (64, 64)


def test_one_image_encoding_and_one_pixel_embedding_serve_every_prompt(dense_model, monkeypatch):
    calls = {"encoder": 0, "pixel_decoder": 0}
    enc, pix = dense_model.image_encoder, dense_model.mask_decoder.pixel_decoder
    enc_ff, pix_fw = enc.forward_features, pix.forward

    def counted_enc(x):
        calls["encoder"] += 1
        return enc_ff(x)

    def counted_pix(*a, **k):
        calls["pixel_decoder"] += 1
        return pix_fw(*a, **k)

    monkeypatch.setattr(enc, "forward_features", counted_enc)
    monkeypatch.setattr(pix, "forward", counted_pix)
    img = np.random.default_rng(0).integers(0, 256, (90, 110, 3), dtype=np.uint8)
    prompts = ["nuclei", "gland", "tumor nuclei", "inflammatory nuclei", "lymphocytes"]
    res = dense_model.segment(img, prompts, vocabulary="open")
    assert calls == {"encoder": 1, "pixel_decoder": 1}
    assert res.masks.shape == (5, 90, 110) and res.probs.dtype == np.float32
    assert res.instances is not None  # the nucleus prompts are decoded into instances from the border map


def test_dense_training_forward_every_trainable_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = create_model("pathsegmentor-test", overrides=DENSE).train()
    with torch.no_grad():  # timm's zero-initialised last norms give zero gradients at step 0 only
        for m in model.image_encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.any():
                m.weight.fill_(1.0)
    pixels = model.normalize(torch.randint(0, 256, (2, 3, 64, 64)).float())
    out = model(pixels, [["nuclei", "gland", "stroma"], ["tumor nuclei", "gland", "nuclei"]], separation=True,
                full_resolution=False)
    assert out.mask_logits.shape == (2, 3, 32, 32)  # stride 2: the decoder grid
    assert out.separation.shape == (2, 3, 4, 32, 32)
    (out.mask_logits.mean() + out.separation.mean() + out.presence_logits.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
               and not n.startswith("prompt_encoder.")]  # points/boxes: not asked in a text-only forward
    assert not missing, missing
    # SAM's per-prompt upscaling is kept for official checkpoints but frozen in dense mode
    assert not model.mask_decoder.output_upscaling[0].weight.requires_grad


def _touching_squares() -> np.ndarray:
    inst = np.zeros((24, 40), np.int32)
    inst[4:20, 4:20] = 1
    inst[4:20, 20:36] = 2  # shares its whole left edge with object 1
    return inst


def test_thick_border_targets_on_touching_objects():
    inst = _touching_squares()
    t = separation_targets(inst, channels=4, border_px=3)
    assert t.shape == (4, 24, 40)
    border = t[3] > 0
    assert not border[inst == 0].any()  # only object pixels can be border
    # 3 px on each side of the shared edge, the object interiors off the border
    assert border[12, 17:23].all() and not border[12, 8:16].any() and not border[12, 24:32].any()
    assert (separation_targets(inst)[:3] == t[:3]).all()  # the first three channels are unchanged
    with pytest.raises(ValueError, match="3 or 4"):
        separation_targets(inst, channels=5)


def test_border_decoder_separates_what_the_mask_alone_cannot():
    inst = _touching_squares()
    t = separation_targets(inst, channels=4, border_px=3)
    mask = inst > 0
    maps = np.stack([t[0], t[1], t[2], t[3]])
    labels = decode_instances(mask, maps, "border")
    assert len(np.unique(labels[labels > 0])) == 2
    for obj in (1, 2):  # each predicted object is one of the true ones, grown back over its border
        ids, counts = np.unique(labels[inst == obj], return_counts=True)
        assert counts.max() / counts.sum() > 0.9
    assert decode_instances(mask, maps, "auto").max() == 2  # auto picks the border decoder with four maps
    assert decode_instances(mask, None, "watershed").max() == 1  # one rectangle: nothing to split it on
    with pytest.raises(ValueError, match="thick-border"):
        decode_instances(mask, maps[:3], "border")


def test_dense_training_leg_resumes_exactly(tmp_path):
    from tests.test_train import TEST_RECIPE, _run_cli, _weights

    from data_builders import build
    from data_builders.synthetic import write_folder_dataset

    source = write_folder_dataset(tmp_path / "src", n=6, size=96)
    corpus = tmp_path / "corpus"
    build({"folder": source}, corpus, val_fraction=0.25, tile=1024, seed=0)
    common = ["--config", str(TEST_RECIPE), f"data.corpus={corpus}", "train.steps=4", "train.save_every=2",
              "model.overrides.mask_decoder={dense: true, hires: false, separation_channels: 4, "
              "dense_widths: [16, 16, 8, 8], dense_dim: 8}", "data.separation=true", "loss.separation=1.0",
              "loss.grid=decoder", "freeze.image_encoder_modules=[backbone.conv1]"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    r = _run_cli(common + [f"output_dir={straight}"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run_cli(common + [f"output_dir={resumed}", "train.stop_after=2"])  # the first leg ends at step 2
    assert r.returncode == 0 and not (resumed / "model").exists(), r.stderr[-3000:]
    r = _run_cli(common + [f"output_dir={resumed}", "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and any(k.startswith("mask_decoder.pixel_decoder.") for k in a)
    for k in a:
        assert (a[k] == b[k]).all(), f"{k} differs after resume"
