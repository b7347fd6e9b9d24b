"""Hand-made instance maps shared by the separation tests."""
from __future__ import annotations

import numpy as np

YY, XX = np.mgrid[:64, :96]


def discs(*discs: tuple[int, int, int]) -> np.ndarray:
    """Instance map of discs (cy, cx, r); a later disc does not overwrite an earlier one."""
    inst = np.zeros((64, 96), np.int32)
    for k, (cy, cx, r) in enumerate(discs, start=1):
        d = (YY - cy) ** 2 + (XX - cx) ** 2 <= r * r
        inst[d & (inst == 0)] = k
    return inst
