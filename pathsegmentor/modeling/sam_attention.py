"""A faster forward for segment_anything's ViT blocks: identical outputs, parameters and keys.

Upstream ``Block`` / ``Attention`` spend most of their non-matmul time on memory traffic:

* ``softmax(q k^T + rel_pos)`` is materialised with separate matmul, add and softmax passes; for the
  global-attention blocks (4096 tokens at 1024²) that is several 800 MB tensors per block, each a
  fresh allocation whose pages the kernel must fault in.
* windowed blocks pad the *normalised tokens* to a multiple of the window size and then run the
  ``qkv`` and ``proj`` linears on the padding too (4900 instead of 4096 tokens at 1024²).

Here the decomposed relative-position bias is built into a scratch buffer that is reused by every
block of one encoder forward and handed to PyTorch's fused ``scaled_dot_product_attention``; global
attention on inputs beyond 1024² runs in query chunks so that buffer stays bounded. ``qkv`` runs on
the real tokens only and its output is written straight into window order, the padded keys/values
filled with what upstream computes for them (``qkv(0) = qkv.bias``); ``proj`` runs after the windows
are merged and cropped. Parameters and state-dict keys are untouched, so official checkpoints load
as before, and with autograd on (training) the scratch buffer is not used.
"""
from __future__ import annotations

import math
import mmap
import threading

import torch
import torch.nn.functional as F
from torch import nn


_HUGE_PAGE_MIN_BYTES = 32 * 2**20


def _empty_cpu(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(numel)`` on the CPU; a large buffer is mapped with transparent huge pages where the
    OS allows it (Linux ``madvise``), so first touch faults in 2 MB pages instead of 4 KB ones."""
    nbytes = numel * dtype.itemsize
    if nbytes < _HUGE_PAGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(numel, dtype=dtype)
    try:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        region.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # no mapping or no madvise here: an ordinary allocation does the same job
        return torch.empty(numel, dtype=dtype)
    return torch.frombuffer(region, dtype=dtype, count=numel)  # the tensor keeps the mapping alive


class _Scratch:
    """Named float buffers reused by every block of one encoder forward, dropped with :meth:`release`.

    Large fresh allocations are not free on CPU: each one is mapped anew and its pages faulted in on
    first touch (about 0.3 s for the 800 MB bias of a global block at 1024², five times the time of
    the add that fills it). Reusing a handful of buffers across blocks pays that once per forward
    instead of once per block, and huge pages (:func:`_empty_cpu`) make the once cheaper.
    """

    def __init__(self) -> None:
        self._local = threading.local()  # per thread: encoders may run in several threads at once

    def __deepcopy__(self, memo) -> "_Scratch":
        return _Scratch()  # buffers are per forward: a copied encoder starts with none

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._local = threading.local()

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        if not hasattr(self._local, "buffers"):
            self._local.buffers = {}
        return self._local.buffers

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            self.buffers.pop(name, None)  # free the old one before allocating the new one
            buf = (_empty_cpu(numel, like.dtype) if like.device.type == "cpu"
                   else torch.empty(numel, dtype=like.dtype, device=like.device))
            self.buffers[name] = buf
        return buf[:numel].view(shape)

    def release(self) -> None:
        self.buffers.clear()


def _active(scratch: _Scratch | None, *tensors: torch.Tensor) -> _Scratch | None:
    """The scratch pool, unless autograd needs the intermediates (training): then ``None``."""
    if scratch is None or torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return None
    return scratch


def _linear(layer: nn.Linear, x: torch.Tensor, scratch: _Scratch | None, name: str) -> torch.Tensor:
    """``layer(x)`` for ``x [..., in]``, written into a scratch buffer when one is active."""
    if scratch is None or layer.bias is None:
        return layer(x)
    x2 = x.reshape(-1, x.shape[-1])
    out = scratch.get(name, (x2.shape[0], layer.out_features), x2)
    torch.addmm(layer.bias, x2, layer.weight.t(), out=out)
    return out.view(*x.shape[:-1], layer.out_features)


_BIAS_CHUNK_NUMEL = 2**28
"""Inference builds the relative-position bias for at most this many logits at a time (1 GiB in fp32).
ViT-B/L/H at 1024² (up to 16 heads x 4096² logits) fit in one piece, which is fastest (query chunks
re-read the keys and values and cost ~15 % more per block); larger inputs run global attention in
query chunks of whole token rows so the bias never outgrows this."""


def _rel_pos_terms(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                   hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's decomposed relative-position terms for ``q [B, nh, H*W, hd]``: ``rel_h [B*nh, H, W, H, 1]``
    and ``rel_w [B*nh, H, W, 1, W]``; their broadcast sum is the bias ``[B*nh, H, W, H, W]``."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    B, nh, N, hd = q.shape
    H, W = hw
    Rh = get_rel_pos(H, H, rel_pos_h)  # [H, H, hd]
    Rw = get_rel_pos(W, W, rel_pos_w)  # [W, W, hd]
    r_q = q.reshape(B * nh, H, W, hd)
    # contiguous first: the einsum outputs are strided, and the broadcast add of the bias is memory-bound
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh).contiguous()[:, :, :, :, None]
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw).contiguous()[:, :, :, None, :]
    return rel_h, rel_w


def _attend_heads(attn: nn.Module, qkv: torch.Tensor, scratch: _Scratch | None) -> torch.Tensor:
    """``qkv [B, h, w, 3C]`` (already through ``attn.qkv``) -> attention output per head ``[B, nh, h*w, hd]``."""
    B, H, W, _ = qkv.shape
    nh = attn.num_heads
    q, k, v = qkv.reshape(B, H * W, 3, nh, -1).permute(2, 0, 3, 1, 4).unbind(0)  # [B, nh, N, hd]
    N = H * W
    if not attn.use_rel_pos:
        return F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    rel_h, rel_w = _rel_pos_terms(q, attn.rel_pos_h, attn.rel_pos_w, (H, W))
    scratch = _active(scratch, q, attn.rel_pos_h, attn.rel_pos_w)
    if scratch is None:  # autograd: one bias, as upstream
        bias = (rel_h + rel_w).reshape(B, nh, N, N)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    def rows_attention(r0: int, r1: int) -> torch.Tensor:  # queries of token rows r0..r1-1
        bias = scratch.get("bias", (B * nh, r1 - r0, W, H, W), q)
        torch.add(rel_h[:, r0:r1], rel_w[:, r0:r1], out=bias)
        return F.scaled_dot_product_attention(q[:, :, r0 * W:r1 * W], k, v, scale=attn.scale,
                                              attn_mask=bias.view(B, nh, (r1 - r0) * W, N))

    rows = max(1, _BIAS_CHUNK_NUMEL // (B * nh * W * N))  # query rows per chunk
    if rows >= H:
        return rows_attention(0, H)
    out = q.new_empty(B, nh, N, q.shape[-1])
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        out[:, :, r0 * W:r1 * W] = rows_attention(r0, r1)
    return out


def _attend(attn: nn.Module, qkv: torch.Tensor, scratch: _Scratch | None) -> torch.Tensor:
    """``qkv [B, h, w, 3C]`` -> attention output ``[B, h, w, C]`` before ``proj`` (heads merged)."""
    B, H, W, _ = qkv.shape
    out = _attend_heads(attn, qkv, scratch)
    return out.view(B, attn.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)


def _parts(n: int, ws: int) -> list[tuple[slice, slice, slice, int, int]]:
    """Split ``n`` tokens into whole windows and a remainder: (image slice, window slice, offset slice, #windows, len)."""
    full, rem = divmod(n, ws)
    parts = [(slice(0, full * ws), slice(0, full), slice(0, ws), full, ws)] if full else []
    if rem:
        parts.append((slice(full * ws, n), slice(full, full + 1), slice(0, rem), 1, rem))
    return parts


def _to_windows(x: torch.Tensor, windows: torch.Tensor, fill: torch.Tensor) -> None:
    """Write ``x [B, H, W, C]`` into ``windows [B*nwh*nww, ws, ws, C]`` (SAM's ``window_partition``
    order), padding positions set to ``fill [C]``: one pass over ``x``, no padded intermediate."""
    B, H, W, C = x.shape
    ws = windows.shape[1]
    nwh, nww = -(-H // ws), -(-W // ws)
    # grid[b, i, r, j, c] = padded token (i*ws + r, j*ws + c)
    grid = windows.view(B, nwh, nww, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    for ys, yi, yo, ny, ly in _parts(H, ws):
        for xs, xi, xo, nx, lx in _parts(W, ws):
            grid[:, yi, yo, xi, xo] = x[:, ys, xs].view(B, ny, ly, nx, lx, C)
    if H % ws:
        grid[:, nwh - 1, H % ws:] = fill
    if W % ws:
        grid[:, :, :, nww - 1, W % ws:] = fill


def _from_windows(heads: torch.Tensor, H: int, W: int, ws: int) -> torch.Tensor:
    """Windowed attention output per head ``[B*nwh*nww, nh, ws*ws, hd]`` -> a contiguous ``[B, H, W, nh*hd]``:
    heads merged, SAM's ``window_unpartition`` and crop, in one pass."""
    n, nh, _, hd = heads.shape
    nwh, nww = -(-H // ws), -(-W // ws)
    B = n // (nwh * nww)
    # grid[b, i, r, j, c, head] = padded token (i*ws + r, j*ws + c)
    grid = heads.view(B, nwh, nww, nh, ws, ws, hd).permute(0, 1, 4, 2, 5, 3, 6)
    out = heads.new_empty(B, H, W, nh, hd)
    for ys, yi, yo, ny, ly in _parts(H, ws):
        for xs, xi, xo, nx, lx in _parts(W, ws):
            out[:, ys, xs] = grid[:, yi, yo, xi, xo].reshape(B, ny * ly, nx * lx, nh, hd)
    return out.view(B, H, W, nh * hd)


def _fast_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Drop-in ``Attention.forward`` (``x [B, H, W, C]``)."""
    return self.proj(_attend(self, self.qkv(x), getattr(self, "_pathseg_scratch", None)))


def _fast_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Drop-in ``Block.forward`` (``x [B, H, W, C]``), same result as upstream's."""
    attn = self.attn
    scratch = _active(getattr(self, "_pathseg_scratch", None), x, attn.qkv.weight, self.mlp.lin1.weight)
    shortcut = x
    qkv = _linear(attn.qkv, self.norm1(x), scratch, "qkv")  # real tokens only
    ws = self.window_size
    if ws > 0:
        B, H, W, C3 = qkv.shape
        nwh, nww = -(-H // ws), -(-W // ws)
        shape = (B * nwh * nww, ws, ws, C3)
        windows = qkv.new_empty(shape) if scratch is None else scratch.get("win", shape, qkv)
        # upstream pads the normalised tokens with zeros before qkv: padding tokens become qkv(0)
        fill = attn.qkv.bias if attn.qkv.bias is not None else qkv.new_zeros(C3)
        _to_windows(qkv, windows, fill.to(qkv.dtype))
        out = _from_windows(_attend_heads(attn, windows, scratch), H, W, ws)
    else:
        out = _attend(attn, qkv, scratch)
    mlp = self.mlp
    if scratch is None or not isinstance(mlp.act, nn.GELU):
        x = shortcut + attn.proj(out)
        return x + mlp(self.norm2(x))
    # inference: residual sums in place into the fresh projection outputs (fewer new buffers)
    x = attn.proj(out).add_(shortcut)
    hidden = _linear(mlp.lin1, self.norm2(x), scratch, "hidden")
    torch.ops.aten.gelu_(hidden, approximate=mlp.act.approximate)
    return mlp.lin2(hidden).add_(x)


class _ReleaseScratch:
    """Forward hook on the last block: drop the shared scratch buffer once the blocks are done."""

    def __init__(self, scratch: _Scratch) -> None:
        self.scratch = scratch

    def __call__(self, module, args, output):
        self.scratch.release()


def use_fast_attention(encoder: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every ``Block`` / ``Attention`` of a SAM ``ImageEncoderViT`` to the fast forward (or back)."""
    from segment_anything.modeling.image_encoder import Attention, Block

    handle = encoder.__dict__.pop("_pathseg_scratch_hook", None)
    if handle is not None:
        handle.remove()
    scratch = _Scratch() if enabled else None
    last_block = None
    for module in encoder.modules():
        if isinstance(module, (Block, Attention)):
            if enabled:
                fast = _fast_block_forward if isinstance(module, Block) else _fast_attention_forward
                module.forward = fast.__get__(module, type(module))
                module._pathseg_scratch = scratch
                last_block = module if isinstance(module, Block) else last_block
            else:
                module.__dict__.pop("forward", None)
                module.__dict__.pop("_pathseg_scratch", None)
    if last_block is not None:  # blocks are called through __call__, so their hooks run
        encoder.__dict__["_pathseg_scratch_hook"] = last_block.register_forward_hook(_ReleaseScratch(scratch))
    return encoder
