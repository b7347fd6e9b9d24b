"""Inference copies of convolutional backbones: BatchNorm folded into the convolutions, channels-last.

In eval mode a BatchNorm that follows a convolution is a fixed per-channel affine map, so it can be
folded into the convolution's weight and bias (``torch.fx``'s ``fuse``), and oneDNN's CPU
convolutions run faster on channels-last (NHWC) tensors. Neither changes the maths (outputs agree to
float rounding), but both change the module, so the module being trained or saved is left as it is
and a folded copy serves no-grad inference. The copy is rebuilt whenever a parameter or buffer of the
source changes: the key is each tensor's storage and version counter, which ``load_state_dict``,
optimiser steps and ``.to()`` all change.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def fold_for_inference(module: nn.Module) -> nn.Module:
    """A frozen eval-mode copy of ``module`` with Conv+BatchNorm pairs folded, in channels-last.

    Modules that ``torch.fx`` cannot trace keep their BatchNorms (a warning says so); the copy is
    still channels-last. Inputs should be channels-last too (``x.contiguous(memory_format=
    torch.channels_last)``); outputs are channels-last ``[B, C, H, W]`` tensors.
    """
    from torch.fx.experimental.optimization import fuse

    source = module if not module.training else copy.deepcopy(module).eval()
    try:
        folded = fuse(source)  # a traced copy; the source is not modified
    except Exception as e:  # fx raises TraceError, TypeError, ... on data-dependent control flow
        warnings.warn(f"{type(module).__name__} could not be traced by torch.fx ({type(e).__name__}: {e}); "
                      "its BatchNorms are kept in the inference copy", stacklevel=2)
        folded = copy.deepcopy(source)
    folded.eval().requires_grad_(False)
    return folded.to(memory_format=torch.channels_last)


class FoldedInferenceCopy:
    """Holds :func:`fold_for_inference` of a module, rebuilt when the module's tensors change.

    A plain object (not an ``nn.Module``), so the copy never shows up in ``state_dict()`` or
    ``parameters()`` of the module that owns this holder.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._copy: nn.Module | None = None

    @staticmethod
    def _state_key(module: nn.Module) -> tuple:
        tensors = list(module.parameters()) + list(module.buffers())
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def get(self, module: nn.Module) -> nn.Module:
        """The folded copy of ``module`` (eval mode required: BatchNorm folding uses running stats)."""
        if module.training:
            raise RuntimeError("FoldedInferenceCopy.get needs the module in eval mode (call .eval() first)")
        key = self._state_key(module)
        if key != self._key:
            self._copy = None  # release the stale copy before building the new one
            self._copy = fold_for_inference(module)
            self._key = key
        return self._copy

    def __deepcopy__(self, memo) -> "FoldedInferenceCopy":
        return FoldedInferenceCopy()  # a copied model rebuilds its own on first use
