"""Render segmentation masks over an image: coloured semi-transparent fills, contours and a legend.

Only PIL and numpy; used by the CLI (``segment``, ``demo``) and usable on any
:class:`~pathsegmentor.inference.result.SegmentationResult`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# distinct, colour-blind-friendly hues (Okabe-Ito, then Tableau), RGB uint8
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
    (204, 121, 167), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


def prompt_colour(i: int) -> tuple[int, int, int]:
    """The colour of the ``i``-th prompt (cycles through :data:`PALETTE`)."""
    return PALETTE[i % len(PALETTE)]


def erode(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """4-neighbour binary erosion of ``bool [H, W]``; pixels outside the image count as background."""
    m = mask.astype(bool)
    for _ in range(iterations):
        p = np.pad(m, 1, constant_values=False)
        m = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m


def contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """``bool [H, W]``: the inner boundary of ``mask``, ``width`` pixels thick."""
    m = mask.astype(bool)
    return m & ~erode(m, width)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def render_overlay(image: np.ndarray, masks: np.ndarray, labels: Sequence[str], *,
                   presence: Sequence[float] | None = None, alpha: float = 0.4,
                   legend: bool = True, instances: np.ndarray | None = None,
                   counts: Sequence[int | None] | None = None) -> Image.Image:
    """Draw ``masks`` over ``image``.

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        masks: ``bool [N, H, W]``, one per label.
        labels: N prompt names for the legend.
        presence: N presence probabilities shown in the legend (optional).
        alpha: opacity of the mask fill; contours are opaque.
        legend: append a legend panel below the image (the image itself is not covered).
        instances: ``int32 [N, H, W]`` instance label maps (0 background) or None: each object of a
            row gets its own outline (touching objects are told apart), in a darker shade of its colour.
        counts: N object counts for the legend (None entries: not counted).

    Returns:
        RGB ``PIL.Image`` of width ``max(W, legend width)`` and height ``H`` plus the legend panel.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {img.dtype} {img.shape}")
    masks = np.asarray(masks).astype(bool)
    if masks.ndim == 2:
        masks = masks[None]
    h, w = img.shape[:2]
    if masks.shape[1:] != (h, w):
        raise ValueError(f"masks {masks.shape[1:]} do not match the image {(h, w)}")
    if len(labels) != masks.shape[0]:
        raise ValueError(f"{len(labels)} labels for {masks.shape[0]} masks")
    out = img.astype(np.float32)
    edge_width = max(1, round(min(h, w) / 512))
    edges = []
    for i, m in enumerate(masks):
        if not m.any():
            continue
        colour = np.array(prompt_colour(i), np.float32)
        out[m] = (1.0 - alpha) * out[m] + alpha * colour
        edges.append((i, contour(m, edge_width)))
    for i, e in edges:  # contours after all fills so that none is washed out by a later fill
        out[e] = prompt_colour(i)
    if instances is not None:
        from skimage.segmentation import find_boundaries

        for i, lab in enumerate(np.asarray(instances)):
            if lab.any() and masks[i].any():
                out[find_boundaries(lab, mode="inner")] = np.array(prompt_colour(i), np.float32) * 0.55
    canvas = Image.fromarray(out.round().clip(0, 255).astype(np.uint8), "RGB")
    if not legend:
        return canvas
    return _with_legend(canvas, labels, presence, masks, counts)


def _with_legend(canvas: Image.Image, labels: Sequence[str], presence, masks: np.ndarray,
                 counts: Sequence[int | None] | None = None) -> Image.Image:
    w, h = canvas.size
    size = int(np.clip(min(w, h) / 32, 11, 20))
    font = _font(size)
    pad = max(4, size // 2)
    swatch = size
    lines = []
    for i, label in enumerate(labels):
        text = str(label)
        if presence is not None:
            text += f"  presence {float(presence[i]):.2f}"
        text += f"  area {100.0 * float(masks[i].mean()):.1f}%"
        if counts is not None and counts[i] is not None:
            text += f"  {counts[i]} objects"
        lines.append(text)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((probe.textlength(t, font=font) for t in lines), default=0)
    line_h = size + pad // 2
    panel_w = int(pad * 3 + swatch + text_w)
    panel_h = pad * 2 + line_h * len(lines)
    out = Image.new("RGB", (max(w, panel_w), h + panel_h), (255, 255, 255))
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(lines):
        y = h + pad + i * line_h
        draw.rectangle([pad, y, pad + swatch, y + swatch], fill=prompt_colour(i), outline=(0, 0, 0))
        draw.text((pad * 2 + swatch, y), text, fill=(0, 0, 0), font=font)
    return out


def render_result(image: np.ndarray, result, **kwargs) -> Image.Image:
    """:func:`render_overlay` for a :class:`~pathsegmentor.inference.result.SegmentationResult`."""
    return render_overlay(image, result.masks, result.labels, presence=result.presence,
                          instances=getattr(result, "instances", None), counts=getattr(result, "instance_counts", None),
                          **kwargs)
