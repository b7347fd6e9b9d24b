"""The torchvision shim: nms works, matches a brute-force NMS, and a second call changes nothing."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from pathsegmentor import _compat
from pathsegmentor._compat import ensure_torchvision, nms_cpu


def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
            a_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            a_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            if inter / (a_i + a_j - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def _random_boxes(n, seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(5, 40, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32), rng.random(n).astype(np.float32)


@pytest.mark.parametrize("seed,thr", [(0, 0.5), (1, 0.3), (2, 0.7), (3, 0.0)])
def test_torchvision_nms_matches_brute_force(seed, thr):
    ensure_torchvision()
    import torchvision

    boxes, scores = _random_boxes(150, seed)
    keep = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr)
    expected = brute_force_nms(boxes, scores, thr)
    assert keep.dtype == torch.int64
    assert keep.tolist() == expected
    assert nms_cpu(torch.from_numpy(boxes), torch.from_numpy(scores), thr).tolist() == expected
    # batched_nms (used by SAM's automatic mask generator) runs through it too
    idx = torch.from_numpy(np.arange(150) % 3)
    kept = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), idx, thr)
    for c in range(3):
        sel = np.nonzero(np.arange(150) % 3 == c)[0]
        exp_c = sel[brute_force_nms(boxes[sel], scores[sel], thr)]
        assert sorted(k for k in kept.tolist() if k % 3 == c) == sorted(exp_c.tolist())


def test_empty_input():
    ensure_torchvision()
    import torchvision

    assert torchvision.ops.nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).numel() == 0


def test_second_call_is_a_no_op():
    first = ensure_torchvision()
    lib = _compat._LIB
    assert ensure_torchvision() == first
    assert _compat._LIB is lib


def test_fresh_interpreter():
    code = ("from pathsegmentor._compat import ensure_torchvision as e; a = e(); b = e(); import torch, torchvision; "
            "k = torchvision.ops.nms(torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]]), "
            "torch.tensor([0.9, 0.8, 0.7]), 0.5); assert k.tolist() == [0, 2], k; assert a == b; "
            "import segment_anything, timm; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
