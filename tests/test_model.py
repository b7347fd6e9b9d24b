"""Tier 1: the tiny registered model on CPU — forward/backward, gradients, shapes, save/load, API."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pathsegmentor import create_model, list_models
from pathsegmentor.modeling.build import UNUSED_SAM_PARTS
from pathsegmentor import from_pretrained


def _pixels(model, b=2, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, size, size), generator=g).float()
    return model.normalize(x)


def test_registry_lists_variants_and_unknown_name_lists_them():
    names = list_models()
    for n in ("pathsegmentor-test", "pathsegmentor-tiny", "pathsegmentor-vit-b", "pathsegmentor-vit-l",
              "pathsegmentor-vit-h"):
        assert n in names
    with pytest.raises(KeyError) as e:
        create_model("pathsegmentor-nope")
    assert "pathsegmentor-nope" in str(e.value) and "pathsegmentor-test" in str(e.value)


def test_forward_backward_every_trainable_parameter_gets_a_finite_gradient():
    torch.manual_seed(0)
    model = create_model("pathsegmentor-test").train()
    # timm zero-initialises the last BatchNorm of each residual block (zero_init_last), which makes the
    # gradients of that block's other layers exactly zero at step 0 only; give those norms a weight
    with torch.no_grad():
        for m in model.image_encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.any():
                m.weight.fill_(1.0)
    pixels = _pixels(model)
    out = model(pixels, [["nuclei", "gland"], ["tumor nuclei", "stroma"]])
    assert out.mask_logits.shape == (2, 2, 128, 128)
    assert out.presence_logits.shape == (2, 2)
    assert torch.isfinite(out.mask_logits).all() and torch.isfinite(out.presence_logits).all()
    target = (torch.rand(out.mask_logits.shape, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.mask_logits, target)
    loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(out.presence_logits,
                                                                      torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # geometric prompts reach SAM's point/box embeddings: points (fg, bg, and the padding point) + text,
    # then boxes alone
    feats = model.encode_image(pixels)
    emb = model.encode_text(["nuclei", "gland"])
    pts = (torch.tensor([[[10.0, 20.0], [50.0, 60.0]], [[30.0, 30.0], [90.0, 100.0]]]), torch.tensor([[1, 0], [1, 0]]))
    d1 = model.decode(feats, pixels, text_embeddings=emb, points=pts, image_index=torch.tensor([0, 1]))
    d2 = model.decode(feats, pixels, boxes=torch.tensor([[8.0, 8.0, 64.0, 90.0]]))
    loss = loss + d1.mask_logits.sigmoid().pow(2).mean() + d1.presence_logits.sigmoid().mean() \
        + d2.mask_logits.sigmoid().pow(2).mean()
    assert torch.isfinite(loss)
    loss.backward()

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # the documented frozen set: the text tower and the SAM parts our decoder never uses
    assert frozen == {n for n, _ in model.named_parameters()
                      if n.startswith("text_encoder.") or n.startswith(UNUSED_SAM_PARTS)}
    assert trainable
    no_grad = [n for n, p in trainable.items() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    bad = [n for n, p in trainable.items() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    zero = [n for n, p in trainable.items() if not p.grad.abs().sum() > 0]
    assert not zero, f"all-zero gradients: {zero}"
    for part in ("image_encoder.", "prompt_adapter.", "mask_decoder.hires_", "mask_decoder.presence_head.",
                 "prompt_encoder.point_embeddings."):
        assert any(n.startswith(part) for n in trainable), part


def test_segment_shapes_and_types(test_model):
    img = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    res = test_model.segment(img, ["nuclei", "gland", "stroma"])
    assert res.prompts == ["nuclei", "gland", "stroma"]
    assert res.masks.shape == (3, 100, 150) and res.masks.dtype == bool
    assert res.probs.shape == (3, 100, 150) and res.probs.dtype == np.float32
    assert res.presence.shape == (3,) and res.presence.dtype == np.float32
    assert np.isfinite(res.probs).all() and (res.probs >= 0).all() and (res.probs <= 1).all()
    assert ((res.presence >= 0) & (res.presence <= 1)).all()
    assert res.mask.shape == (100, 150)
    assert res.image_size == (100, 150) and res.model == "pathsegmentor-test"
    single = test_model.segment(img, "nuclei")
    assert single.masks.shape == (1, 100, 150)
    np.testing.assert_allclose(single.probs[0], res.probs[0], atol=1e-5)  # batching does not change a prompt
    s = res.summary()
    assert [p["prompt"] for p in s["prompts"]] == res.prompts


def test_hires_switch_changes_output_stride(test_model):
    pixels = _pixels(test_model, b=1, size=128)
    feats = test_model.encode_image(pixels)
    emb = test_model.encode_text(["nuclei"])
    hi = test_model.decode(feats, pixels, text_embeddings=emb, hires=True)
    lo = test_model.decode(feats, pixels, text_embeddings=emb, hires=False)
    assert hi.stride == 2 and hi.mask_logits.shape == (1, 64, 64)
    assert lo.stride == 4 and lo.mask_logits.shape == (1, 32, 32)
    img = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    a = test_model.segment(img, "nuclei", hires=True).probs
    b = test_model.segment(img, "nuclei", hires=False).probs
    assert a.shape == b.shape == (1, 96, 96) and not np.array_equal(a, b)


def test_save_load_round_trip_is_bit_exact(test_model, tmp_path):
    test_model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "model.safetensors").is_file()
    loaded = from_pretrained(tmp_path / "m")
    a, b = test_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert loaded.config == test_model.config
    img = np.random.default_rng(2).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    r1 = test_model.segment(img, ["nuclei", "gland"], boxes=[10, 10, 60, 70])
    r2 = loaded.segment(img, ["nuclei", "gland"], boxes=[10, 10, 60, 70])
    assert np.array_equal(r1.probs, r2.probs) and np.array_equal(r1.presence, r2.presence)
    assert np.array_equal(r1.masks, r2.masks)


def test_multi_prompt_call_encodes_the_image_once(test_model, monkeypatch):
    calls = []
    enc = test_model.image_encoder
    original = enc.forward_features

    def counted(x):
        calls.append(tuple(x.shape))
        return original(x)

    monkeypatch.setattr(enc, "forward_features", counted)
    img = np.random.default_rng(3).integers(0, 256, (90, 110, 3), dtype=np.uint8)
    res = test_model.segment(img, ["nuclei", "gland", "tumor nuclei", "stroma", "lymphocytes"])
    assert len(calls) == 1, calls
    assert res.masks.shape == (5, 90, 110)


def test_presence_threshold_empties_masks_but_keeps_probs(test_model):
    img = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    base = test_model.segment(img, ["nuclei", "gland"], presence_threshold=0.0, mask_threshold=0.0)
    assert base.masks.any()
    gated = test_model.segment(img, ["nuclei", "gland"], presence_threshold=1.01, mask_threshold=0.0)
    assert not gated.masks.any()
    assert np.array_equal(gated.probs, base.probs) and np.array_equal(gated.presence, base.presence)
    assert gated.summary()["thresholds"]["presence"] == 1.01


def test_geometric_prompts_only_and_bad_prompts(test_model):
    img = np.random.default_rng(5).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    res = test_model.segment(img, boxes=[5, 5, 40, 50])
    assert res.masks.shape == (1, 64, 80) and res.presence.tolist() == [1.0]
    res = test_model.segment(img, points=[[[20, 20]]], point_labels=[[1]])
    assert res.masks.shape == (1, 64, 80)
    for bad in ([], [""], ["nuclei", "  "]):
        with pytest.raises(ValueError, match="prompt"):
            test_model.segment(img, bad)
    with pytest.raises(ValueError, match="mpp"):
        test_model.segment(img, "nuclei", mpp=-1)
