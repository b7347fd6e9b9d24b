"""The fast SAM ViT block forward (:mod:`pathsegmentor.modeling.sam_attention`) against upstream's, on a small
encoder whose token grid is not a multiple of the window size (so the padding path runs)."""
from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

from pathsegmentor._compat import ensure_torchvision
from pathsegmentor.modeling import sam_attention
from pathsegmentor.modeling.sam_attention import use_fast_attention


def _small_encoder(img_size: int = 160) -> nn.Module:
    ensure_torchvision()
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    torch.manual_seed(0)
    enc = ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=96, depth=4, num_heads=4, mlp_ratio=4,
                          out_chans=32, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                          use_rel_pos=True, window_size=4, global_attn_indexes=(1, 3))
    with torch.no_grad():  # zero at init upstream: make the relative-position path matter
        for name, p in enc.named_parameters():
            if "rel_pos" in name or name.endswith("pos_embed"):
                p.normal_(0.0, 0.2)
    return enc.eval()


@pytest.mark.parametrize("img_size,chunked", [(160, False), (160, True), (128, False)])
def test_fast_forward_equals_upstream_in_inference(img_size, chunked, monkeypatch):
    # 10x10 tokens (padded windows) and 8x8 (no padding); chunked: global attention one query row at a time
    if chunked:
        monkeypatch.setattr(sam_attention, "_BIAS_CHUNK_NUMEL", 1)
    upstream = _small_encoder(img_size)
    fast = use_fast_attention(copy.deepcopy(upstream))
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        ref = upstream(x)
        out = fast(x)
        again = fast(x)  # the scratch buffers are reused across calls without leaking state
    assert out.shape == ref.shape == (2, 32, img_size // 16, img_size // 16)
    assert (out - ref).abs().max().item() <= 1e-5
    assert torch.equal(out, again)
    assert fast.state_dict().keys() == upstream.state_dict().keys()
    assert not fast.blocks[0]._pathseg_scratch.buffers, "scratch buffers must be released after the forward"


def test_fast_forward_gradients_equal_upstream():
    # float64: in float32 the first layers' gradients differ by summation-order noise of a few percent
    upstream = _small_encoder(160).train().double()
    fast = use_fast_attention(copy.deepcopy(upstream)).train()
    x = torch.randn(1, 3, 160, 160, dtype=torch.float64)
    upstream(x).square().sum().backward()
    fast(x).square().sum().backward()
    grads = dict(upstream.named_parameters())
    for name, p in fast.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert torch.allclose(p.grad, grads[name].grad, rtol=1e-8, atol=1e-12), name


def test_fast_forward_can_be_switched_off():
    upstream = _small_encoder(160)
    enc = use_fast_attention(copy.deepcopy(upstream))
    use_fast_attention(enc, enabled=False)
    assert all("forward" not in m.__dict__ for m in enc.modules())
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(enc(x), upstream(x))


def test_large_scratch_buffers_are_plain_writable_tensors(monkeypatch):
    monkeypatch.setattr(sam_attention, "_HUGE_PAGE_MIN_BYTES", 1024)  # take the huge-page path at a small size
    buf = sam_attention._empty_cpu(4096, torch.float32)
    small = sam_attention._empty_cpu(16, torch.float32)
    assert buf.shape == (4096,) and buf.dtype == torch.float32 and small.shape == (16,)
    buf.fill_(3.0)
    assert buf.sum().item() == 3.0 * 4096
    scratch = sam_attention._Scratch()
    like = torch.zeros(1)
    a = scratch.get("x", (8, 512), like)
    b = scratch.get("x", (4, 512), like)  # smaller request: same storage, no new allocation
    assert b.data_ptr() == a.data_ptr()
    scratch.release()
    assert not scratch.buffers


def test_fast_encoder_deepcopies_and_runs_in_threads():
    import threading

    fast = use_fast_attention(_small_encoder(160))
    clone = copy.deepcopy(fast)
    xs = [torch.randn(1, 3, 160, 160) for _ in range(4)]
    with torch.no_grad():
        expected = [fast(x) for x in xs]
        assert torch.equal(clone(xs[0]), expected[0])
    results: dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        with torch.no_grad():
            for _ in range(3):
                results[i] = fast(xs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, ref in enumerate(expected):  # one shared encoder, concurrent forwards: no buffer clobbering
        assert torch.equal(results[i], ref), i
