"""What the network returns: training outputs (:class:`PathSegOutput`) and single-window inference
(:class:`EncodedWindow` -> :class:`WindowPrediction`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .image_encoder import ImageFeatures


@dataclass
class PathSegOutput:
    """Training-time output. ``mask_logits [B, P, H, W]`` at the input resolution (or the decoder
    grid with ``full_resolution=False``), ``presence_logits [B, P]``; ``separation [B, P, K, H, W]`` raw
    separation maps when asked for (else None)."""

    mask_logits: torch.Tensor
    presence_logits: torch.Tensor
    separation: torch.Tensor | None = None


@dataclass
class EncodedWindow:
    """One window ready for decoding: ``pixels [1, 3, H', W']`` normalised and zero-padded to the encoder's size,
    its :class:`ImageFeatures` (with the pixel embedding in dense mode), and ``size = (h, w)`` of the window before
    padding."""

    pixels: torch.Tensor
    features: ImageFeatures
    size: tuple[int, int]


@dataclass
class WindowPrediction:
    """One window's prediction: ``probs float32 [N, h, w]`` in [0, 1], ``presence float32 [N]``, and
    ``separation float32 [N, K, h, w]`` activated separation maps (offsets in [-1, 1], distance in
    [0, 1]) when asked for, else None."""

    probs: np.ndarray
    presence: np.ndarray
    separation: np.ndarray | None = None
