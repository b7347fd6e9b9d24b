"""Compatibility shim for torchvision's compiled ops on CPU-only torch builds.

The only torchvision wheel for torch 2.13.0 on the package registry is a CUDA build whose ``_C``
extension cannot load beside the CPU torch; ``import torchvision`` then fails with
``operator torchvision::nms does not exist``, which breaks segment_anything, open_clip and timm.

:func:`ensure_torchvision` defines the two op schemas torchvision registers fake kernels for at import
(``nms`` and ``qnms``), gives ``nms`` a pure-PyTorch CPU kernel, imports torchvision and marks its
extension as loaded. It does nothing when the compiled ops load normally.
"""
from __future__ import annotations

import importlib.util
import sys

import torch

_LIB: torch.library.Library | None = None
_PATCHED = False


def _native_ops_available() -> bool:
    """True when torchvision's compiled extension loads (or torchvision is not installed)."""
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "nms"):
        try:
            torch.ops.torchvision.nms  # noqa: B018 -- attribute lookup raises if the op is missing
            return True
        except (AttributeError, RuntimeError):
            pass
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # nothing to patch
    import os

    so_dir = list(spec.submodule_search_locations)[0]
    candidates = [f for f in os.listdir(so_dir) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    for name in candidates:
        try:
            torch.ops.load_library(os.path.join(so_dir, name))
            return True
        except (OSError, RuntimeError):
            continue
    return False


def nms_cpu(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, same contract as ``torchvision.ops.nms``.

    Args:
        dets: ``[K, 4]`` boxes in ``XYXY``.
        scores: ``[K]`` scores.
        iou_threshold: boxes overlapping a kept box with IoU above this are dropped.

    Returns:
        ``int64 [M]`` indices of kept boxes, by decreasing score.
    """
    if dets.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=dets.device)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(descending=True)
    keep: list[int] = []
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool)
    for idx in order.tolist():
        if suppressed[idx]:
            continue
        keep.append(idx)
        xx1 = torch.maximum(x1[idx], x1)
        yy1 = torch.maximum(y1[idx], y1)
        xx2 = torch.minimum(x2[idx], x2)
        yy2 = torch.minimum(y2[idx], y2)
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[idx] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def ensure_torchvision() -> bool:
    """Make ``import torchvision`` work; returns True if the shim had to act.

    Safe to call many times. Call it before anything imports torchvision (segment_anything, timm,
    open_clip): once torchvision failed to import, Python caches nothing, so a later call still fixes it.
    """
    global _LIB, _PATCHED
    if _PATCHED:
        return True
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "ops"):
        return False
    if _native_ops_available():
        return False
    _LIB = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - schema definition
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.impl("nms", nms_cpu, "CPU")
    import torchvision.extension

    torchvision.extension._has_ops = lambda: True  # nms now has a kernel
    _PATCHED = True
    return True
