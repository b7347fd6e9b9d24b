"""A faster forward for segment_anything's ViT attention, identical outputs and parameters.

Upstream materialises ``softmax(q k^T + rel_pos)`` with separate matmul, add and softmax passes;
for the global-attention blocks (4096 tokens at 1024²) that is several 800 MB tensors per block.
Here the decomposed relative-position bias is built once and handed to PyTorch's fused
``scaled_dot_product_attention``. Parameters and state-dict keys are untouched, so official
checkpoints load as before.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
    from segment_anything.modeling.image_encoder import get_rel_pos

    B, H, W, _ = x.shape
    nh = self.num_heads
    qkv = self.qkv(x).reshape(B, H * W, 3, nh, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B, nh, N, hd]
    bias = None
    if self.use_rel_pos:
        hd = q.shape[-1]
        Rh = get_rel_pos(H, H, self.rel_pos_h)  # [H, H, hd]
        Rw = get_rel_pos(W, W, self.rel_pos_w)  # [W, W, hd]
        r_q = q.reshape(B * nh, H, W, hd)
        # contiguous first: the einsum outputs are strided, and the broadcast add below is memory-bound
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh).contiguous()
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw).contiguous()
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(B, nh, H * W, H * W)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    out = out.view(B, nh, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
    return self.proj(out)


def use_fast_attention(encoder: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every ``Attention`` block of a SAM ``ImageEncoderViT`` to the fused forward (or back)."""
    from segment_anything.modeling.image_encoder import Attention

    for module in encoder.modules():
        if isinstance(module, Attention):
            if enabled:
                module.forward = _fast_forward.__get__(module, type(module))
            elif "forward" in module.__dict__:
                del module.forward
    return encoder
