"""One window through the network, numpy in and out: the building block the inference layer
(:class:`~pathsegmentor.inference.predictor.Predictor`) calls for ``segment()``, tiles, whole slides and the viewer.
:class:`WindowMixin` is part of :class:`~pathsegmentor.modeling.model.PathSegmentorNetwork`."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .outputs import EncodedWindow, WindowPrediction


class WindowMixin:
    """``encode_window`` (the prompt-independent part, cacheable) and ``decode_window`` (N prompts) of one window at
    the model's µm/px; needs the network's ``config``, ``device``, ``normalize``, ``encode_image``, ``decode`` and
    ``pixel_embedding``."""

    def _window_size(self, h: int, w: int) -> tuple[int, int]:
        pp = self.config.preprocess
        if pp.fixed_input:
            return pp.input_size, pp.input_size
        d = pp.size_divisor
        return max(d, math.ceil(h / d) * d), max(d, math.ceil(w / d) * d)

    @torch.no_grad()
    def encode_window(self, window: np.ndarray) -> EncodedWindow:
        """One window ``uint8 [h, w, 3]`` (h, w <= input_size) at the model's µm/px -> :class:`EncodedWindow`: the
        normalised, zero-padded input and its image features (the part of a window's prediction that does not depend
        on the prompts; :class:`~pathsegmentor.inference.predictor.Predictor` caches it)."""
        h, w = window.shape[:2]
        ph, pw = self._window_size(h, w)
        x = torch.from_numpy(np.ascontiguousarray(window)).to(self.device).permute(2, 0, 1)[None]
        x = self.normalize(x)
        x = F.pad(x, (0, pw - w, 0, ph - h))  # bottom-right zero padding after normalisation, as SAM
        features = self.encode_image(x)
        self.pixel_embedding(features, x)  # dense mode: computed once here, read by every prompt
        return EncodedWindow(x, features, (h, w))

    @torch.no_grad()
    def decode_window(self, encoded: EncodedWindow, text_emb: torch.Tensor | None, points, boxes,
                      hires: bool | None, separation: bool = False) -> WindowPrediction:
        """N prompts over one :class:`EncodedWindow` -> :class:`WindowPrediction` at the window's size.
        ``text_emb [N, D]`` from :meth:`encode_text`; ``points`` (coords ``[N, P, 2]`` XY, labels ``[N, P]``)
        and ``boxes [N, 4]`` XYXY in window pixels, or None; ``separation`` adds the separation maps (models with a
        separation head)."""
        x, (h, w) = encoded.pixels, encoded.size
        ph, pw = x.shape[-2:]
        out = self.decode(encoded.features, x, text_embeddings=text_emb, points=points, boxes=boxes, hires=hires,
                          separation=separation)
        logits = F.interpolate(out.mask_logits[:, None], size=(ph, pw), mode="bilinear", align_corners=False)
        probs = torch.sigmoid(logits[:, 0, :h, :w]).float().cpu().numpy()
        presence = torch.sigmoid(out.presence_logits).float().cpu().numpy()
        sep = None
        if separation:
            raw = F.interpolate(out.separation, size=(ph, pw), mode="bilinear", align_corners=False)[:, :, :h, :w]
            sep = torch.cat([torch.tanh(raw[:, :2]), torch.sigmoid(raw[:, 2:])], dim=1).float().cpu().numpy()
        return WindowPrediction(probs, presence, sep)

    def predict_window_maps(self, window: np.ndarray, text_emb: torch.Tensor | None, points, boxes,
                            hires: bool | None, separation: bool = False) -> WindowPrediction:
        """:meth:`encode_window` then :meth:`decode_window` (one image encoding serves all N prompts)."""
        return self.decode_window(self.encode_window(window), text_emb, points, boxes, hires, separation)

    @property
    def has_separation(self) -> bool:
        """Whether the decoder predicts instance separation maps."""
        dec = self.mask_decoder
        if getattr(dec, "dense", False):
            return getattr(dec, "separation_channels", 0) > 0
        return getattr(dec, "separation_head", None) is not None
