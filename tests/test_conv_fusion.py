"""Inference copies of timm backbones (BatchNorm folded, channels-last) and the channel LayerNorm."""
from __future__ import annotations

import copy

import pytest
import torch

from pathsegmentor import create_model
from pathsegmentor.modeling.conv_fusion import FoldedInferenceCopy, fold_for_inference
from pathsegmentor.modeling.image_encoder import LayerNorm2d


def _timm_encoder():
    torch.manual_seed(0)
    enc = create_model("pathsegmentor-test").image_encoder
    for m in enc.modules():  # non-trivial running statistics, so folding really is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return enc.eval()


def test_folded_copy_has_no_batchnorm_and_matches():
    enc = _timm_encoder()
    folded = fold_for_inference(enc.backbone)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert not any(p.requires_grad for p in folded.parameters())
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        ref = enc.backbone(x)
        out = folded(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref, out):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-4 * max(1.0, a.abs().max().item())


def test_encoder_inference_path_matches_training_path_and_tracks_weight_changes():
    enc = _timm_encoder()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        fast = enc.forward_features(x)
    with torch.enable_grad():
        slow = enc.forward_features(x)  # eval mode, grad on: the module itself runs
    assert (fast.embedding - slow.embedding).abs().max().item() <= 1e-4
    for s in slow.skips:
        assert (fast.skips[s] - slow.skips[s]).abs().max().item() <= 1e-4
    first = enc._folded._copy

    with torch.no_grad():  # an in-place weight change (as an optimiser step) invalidates the copy
        next(enc.backbone.parameters()).mul_(1.5)
        changed = enc.forward_features(x)
    assert enc._folded._copy is not first
    with torch.enable_grad():
        expected = enc.forward_features(x)
    assert (changed.embedding - expected.embedding).abs().max().item() <= 1e-4

    state = copy.deepcopy(enc.state_dict())
    assert not any("_folded" in k for k in state)
    enc.load_state_dict(state)  # same values, new versions: rebuilt, same output
    with torch.no_grad():
        again = enc.forward_features(x)
    assert torch.allclose(again.embedding, changed.embedding, atol=1e-6)


def test_holder_refuses_training_mode_and_is_not_shared_by_deepcopy():
    enc = _timm_encoder()
    holder = FoldedInferenceCopy()
    enc.backbone.train()
    with pytest.raises(RuntimeError, match="eval"):
        holder.get(enc.backbone)
    enc.eval()
    with torch.no_grad():
        enc.forward_features(torch.randn(1, 3, 64, 64))
    clone = copy.deepcopy(enc)
    assert clone._folded is not enc._folded and clone._folded._copy is None


def test_layernorm2d_matches_segment_anything_on_both_memory_formats():
    from pathsegmentor._compat import ensure_torchvision

    ensure_torchvision()
    from segment_anything.modeling.common import LayerNorm2d as SamLayerNorm2d

    torch.manual_seed(0)
    ours, theirs = LayerNorm2d(16), SamLayerNorm2d(16)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, 9, 7) * 3 + 1
    ref = theirs(x)
    assert (ours(x) - ref).abs().max().item() <= 1e-5
    assert (ours(x.contiguous(memory_format=torch.channels_last)) - ref).abs().max().item() <= 1e-5
