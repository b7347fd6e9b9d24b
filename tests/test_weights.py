"""Weights I/O: official SAM checkpoints (equivalence with upstream), strict key checks, unsafe and
corrupt checkpoints, offline resolution."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pathsegmentor import create_model, from_pretrained
from pathsegmentor.modeling.weights import CheckpointError, WeightsNotFoundError, load_sam_checkpoint, safe_torch_load


class PickledDict(collections.OrderedDict):
    """A dict subclass: saving it pickles a reference to this test module's code."""


@pytest.mark.slow
def test_sam_checkpoint_matches_upstream_predictor(tmp_path, monkeypatch):
    from segment_anything import SamPredictor, sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]().eval()
    with torch.no_grad():  # SAM zero-initialises these; make them non-trivial so they are really tested
        for name, p in sam.named_parameters():
            if "rel_pos" in name or name.endswith("pos_embed"):
                p.normal_(0.0, 0.05)
    ckpt = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(sam.state_dict(), ckpt)

    model = create_model("pathsegmentor-vit-b").eval()
    not_covered = load_sam_checkpoint(model, ckpt)
    assert not_covered and all(k.startswith(("mask_decoder.hires_", "mask_decoder.presence_head.", "prompt_adapter.",
                                             "text_encoder.")) for k in not_covered)

    img = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    box = np.array([200.0, 150.0, 700.0, 610.0])
    predictor = SamPredictor(sam)
    with torch.no_grad():
        predictor.set_image(img)
        upstream_emb = predictor.features
        up_logits, _, _ = predictor.predict(box=box, multimask_output=False, return_logits=True)
        ours_emb = model.encode_image(model.normalize(torch.from_numpy(img).permute(2, 0, 1)[None])).embedding
    assert ours_emb.shape == upstream_emb.shape == (1, 256, 64, 64)
    emb_diff = (ours_emb - upstream_emb).abs().max().item()
    assert emb_diff <= 1e-4, emb_diff

    res = model.segment(img, boxes=[box], hires=False)
    up_probs = torch.sigmoid(torch.from_numpy(up_logits)).numpy()
    assert res.probs.shape == up_probs.shape == (1, 1024, 1024)
    prob_diff = float(np.abs(res.probs - up_probs).max())
    assert prob_diff <= 1e-4, prob_diff

    # the same checkpoint through from_pretrained, found in the cache ($PATHSEGMENTOR_HOME)
    monkeypatch.setenv("PATHSEGMENTOR_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = from_pretrained("pathsegmentor-vit-b")
    ours, theirs = loaded.state_dict(), sam.state_dict()
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), k


def test_sam_checkpoint_with_wrong_keys_names_them(tmp_path, test_model):
    ours_only = ("mask_decoder.hires_", "mask_decoder.presence_head.", "prompt_adapter.", "text_encoder.")
    state = {k: v.clone() for k, v in test_model.state_dict().items() if not k.startswith(ours_only)}
    state["image_encoder.not_a_layer.weight"] = torch.zeros(3)
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as e:
        load_sam_checkpoint(test_model, path)
    msg = str(e.value)
    assert "image_encoder.not_a_layer.weight" in msg and "mask_decoder.iou_token.weight" in msg


def test_model_dir_with_wrong_keys_names_them(tmp_path, test_model):
    test_model.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in test_model.state_dict().items() if not k.startswith("text_encoder.")}
    state["prompt_adapter.extra"] = torch.zeros(2)
    del state["prompt_adapter.token_type"]
    state["mask_decoder.presence_head.layers.0.bias"] = torch.zeros(7)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        from_pretrained(tmp_path)
    msg = str(e.value)
    for key in ("prompt_adapter.extra", "prompt_adapter.token_type", "mask_decoder.presence_head.layers.0.bias"):
        assert key in msg


def test_checkpoint_with_pickled_code_is_refused(tmp_path, test_model):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(PickledDict({"image_encoder.x": torch.zeros(1)}), path)
    with pytest.raises(CheckpointError, match="pickled"):
        safe_torch_load(path)
    with pytest.raises(CheckpointError, match="pickled"):
        load_sam_checkpoint(test_model, path)
    # a plain state dict of tensors is fine
    torch.save({"a": torch.ones(2)}, tmp_path / "ok.pth")
    assert torch.equal(safe_torch_load(tmp_path / "ok.pth")["a"], torch.ones(2))


def test_corrupt_and_truncated_checkpoints(tmp_path, test_model):
    d = tmp_path / "m"
    test_model.save_pretrained(d)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="safetensors"):
        from_pretrained(d)
    torch.save({"a": torch.ones(1000)}, tmp_path / "t.pth")
    data = (tmp_path / "t.pth").read_bytes()
    (tmp_path / "t.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        safe_torch_load(tmp_path / "t.pth")
    with pytest.raises(WeightsNotFoundError, match="not found"):
        safe_torch_load(tmp_path / "missing.pth")
    (d / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="JSON"):
        from_pretrained(d)


def test_unknown_model_name_lists_available():
    with pytest.raises(KeyError, match="pathsegmentor-tiny"):
        create_model("no-such-model")
    with pytest.raises(WeightsNotFoundError, match="pathsegmentor-test"):
        from_pretrained("no-such-model")


def test_offline_resolution_fails_fast_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PATHSEGMENTOR_HOME", str(tmp_path))
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError(f"offline resolution opened a connection: {args}")

    # fails fast: no connection is even attempted (so no retries or timeouts to wait for)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(WeightsNotFoundError) as e:
        from_pretrained("pathsegmentor-vit-l")
    msg = str(e.value)
    assert "pathsegmentor-vit-l" in msg
    assert str(tmp_path / "pathsegmentor-vit-l") in msg  # the cache dir looked at
    assert str(tmp_path / "sam_vit_l_0b3195.pth") in msg  # the official checkpoint looked for
    assert "offline" in msg and "Fix" in msg and "PATHSEGMENTOR_HOME" in msg
    assert "sam_vit_l_0b3195.pth" in msg.split("Fix", 1)[1]  # how to provide the SAM weights


def test_cache_dir_resolution(tmp_path, monkeypatch, test_model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PATHSEGMENTOR_HOME", str(tmp_path))
    test_model.save_pretrained(tmp_path / "pathsegmentor-test")
    loaded = from_pretrained("pathsegmentor-test")
    a, b = test_model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    cfg = json.loads((tmp_path / "pathsegmentor-test" / "config.json").read_text())
    assert cfg["preprocess"]["mpp"] == test_model.config.preprocess.mpp  # preprocessing travels with weights
