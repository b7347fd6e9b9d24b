"""Segment a view (or a drawn region) of an opened image at the model's working resolution.

The region, in level-0 pixels, is read from the pyramid level nearest the model's µm/px (not finer
than needed) and resampled to it, then run through the model's
:class:`~pathsegmentor.inference.predictor.Predictor` over the server's image-encoding cache (keyed by the window's
pixels): the same predictor as ``segment()`` and whole slides (presence gate, instance concepts and decoder, size
limit). A
:class:`ViewResult` keeps the working pixels, the masks, the instance labels ``segment()`` decoded for instance
prompts and the mapping back to level 0, for overlays and exports.
"""
from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..inference.predictor import as_predictor
from ..slide.geojson import prompt_color
from .cache import EmbeddingCache
from .dzi import pick_level
from .files import ServeError
from .sources import OpenedImage

MAX_VIEW_SIDE = 2048  # working pixels; larger views are refused (zoom in, or run the whole slide)


@dataclass(frozen=True)
class Region:
    """A level-0 rectangle ``x, y, w, h`` (pixels), clipped to the image by :meth:`clip`."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, value: Any, width: int, height: int) -> "Region":
        """From ``{"x", "y", "w", "h"}`` (None: the whole image), clipped to ``width x height``."""
        if value is None:
            return cls(0, 0, width, height)
        try:
            x, y, w, h = (float(value[k]) for k in ("x", "y", "w", "h"))
        except (KeyError, TypeError, ValueError):
            raise ServeError(422, f"region={value!r}: expected an object with numbers x, y, w, h "
                                  f"(level-0 pixels).") from None
        x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
        x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise ServeError(422, f"region {value!r} does not overlap the {width}x{height} image; pan back "
                                  f"onto the image.")
        return cls(x0, y0, x1 - x0, y1 - y0)


@dataclass
class ViewResult:
    """One segmented region: ``rgb`` (working pixels), the ``result``, instance ``labels`` per prompt
    (None for region prompts), and ``scale`` = level-0 pixels per working pixel."""

    id: str
    image: OpenedImage
    region: Region
    scale: float
    rgb: np.ndarray
    result: Any
    labels: list[np.ndarray | None]
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def to_level0(self, geom):
        """A shapely geometry in working corner coordinates -> level-0 pixels."""
        from shapely.affinity import affine_transform

        s = self.scale
        return affine_transform(geom, [s, 0, 0, s, self.region.x, self.region.y])

    def summary(self) -> dict:
        res = self.result
        prompts = []
        for i, row in enumerate(res.summary()["prompts"]):
            r = res.resolutions[i] if res.resolutions else None
            prompts.append({**row, "index": i, "label": res.labels[i], "color": prompt_color(i),
                            "answered": r.answered if r else True,
                            "substituted": bool(r.substituted) if r else False,
                            "reason": r.reason if r else "", "suggestions": list(getattr(r, "suggestions", []) or []),
                            "instances": res.instance_counts[i],
                            "overlay": f"/api/results/{self.id}/overlay/{i}.png"})
        r = self.region
        return {"id": self.id, "image": self.image.id, "region": {"x": r.x, "y": r.y, "w": r.w, "h": r.h},
                "work_size": {"width": self.rgb.shape[1], "height": self.rgb.shape[0]}, "scale": self.scale,
                "mpp": self.image.reader.mpp, "prompts": prompts, "warnings": res.warnings,
                "timings": self.timings, "cache": self.cache, "note": self.note}

    def overlay_png(self, index: int) -> bytes:
        """RGBA PNG at working resolution: the mask filled (alpha 110), instance outlines opaque."""
        from PIL import Image

        if not 0 <= index < len(self.result.prompts):
            raise ServeError(404, f"prompt index {index} does not exist; this result has "
                                  f"{len(self.result.prompts)} prompt(s) (0..{len(self.result.prompts) - 1}).")
        mask = self.result.masks[index]
        out = np.zeros((*mask.shape, 4), np.uint8)
        out[..., :3] = prompt_color(index)
        out[..., 3] = np.where(mask, 110, 0)
        lab = self.labels[index]
        if lab is not None:
            edge = np.zeros(mask.shape, bool)
            edge[:-1] |= lab[:-1] != lab[1:]
            edge[1:] |= lab[:-1] != lab[1:]
            edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
            edge[:, 1:] |= lab[:, :-1] != lab[:, 1:]
            out[edge & (lab > 0), 3] = 255
        buf = io.BytesIO()
        Image.fromarray(out, "RGBA").save(buf, format="PNG", compress_level=1)
        return buf.getvalue()


def _working(image: OpenedImage, model_mpp: float, region: Region) -> tuple[np.ndarray, float, int, str]:
    """The region's pixels at the model's µm/px: (rgb, level-0 px per working px, pyramid level, note)."""
    from PIL import Image

    reader = image.reader
    note = ""
    if reader.mpp is None:
        target, note = 1.0, ("mpp unknown: segmented at the image's own pixels (start the server with --mpp "
                             "to rescale to the model's resolution)")
    else:
        target = model_mpp / reader.mpp
    wh = (max(1, round(region.w / target)), max(1, round(region.h / target)))
    if max(wh) > MAX_VIEW_SIDE:
        raise ServeError(413, f"the region is {wh[0]}x{wh[1]} px at the model's {model_mpp:g} µm/px, more than "
                              f"{MAX_VIEW_SIDE} px a side: zoom in or draw a smaller region, or segment the "
                              f"whole slide as a job.")
    lv = pick_level(reader.levels, target)
    fx, fy = lv.width / reader.levels[0].width, lv.height / reader.levels[0].height
    sx0, sy0, sx1, sy1 = region.x * fx, region.y * fy, (region.x + region.w) * fx, (region.y + region.h) * fy
    ix0, iy0 = int(math.floor(sx0)), int(math.floor(sy0))
    ix1, iy1 = int(math.ceil(sx1)), int(math.ceil(sy1))
    rgb = image.read(lv.index, iy0, ix0, iy1 - iy0, ix1 - ix0)
    if rgb.shape[:2] != (wh[1], wh[0]) or (sx0, sy0) != (ix0, iy0):
        im = Image.fromarray(rgb)
        rs = Image.Resampling.BOX if (ix1 - ix0) > wh[0] else Image.Resampling.BILINEAR
        rgb = np.asarray(im.resize(wh, rs, box=(sx0 - ix0, sy0 - iy0, sx1 - ix0, sy1 - iy0)))
    return rgb, region.w / wh[0], lv.index, note


def segment_view(model: Any, cache: EmbeddingCache, image: OpenedImage, result_id: str, *,
                 prompts: Sequence[str], region: Region, box: Sequence[float] | None = None,
                 points: Sequence[Sequence[float]] | None = None) -> ViewResult:
    """Segment ``region`` of ``image`` for ``prompts`` (and/or a level-0 XYXY ``box`` / ``points`` as
    ``[x, y, label]``) at the model's working resolution."""
    t0 = time.perf_counter()
    pp = model.config.preprocess
    fine = float(min([pp.mpp, *pp.structure_mpp.values()]))  # e.g. nuclei at 0.25
    rgb, scale, level, note = _working(image, fine, region)
    t_read = time.perf_counter()
    kwargs: dict[str, Any] = {}
    if box is not None:
        b = np.asarray(box, np.float32).reshape(4)
        kwargs["boxes"] = ((b - [region.x, region.y, region.x, region.y]) / scale)[None]
    if points:
        p = np.asarray(points, np.float32).reshape(-1, 3)
        kwargs["points"] = ((p[:, :2] - [region.x, region.y]) / scale)[None]
        kwargs["point_labels"] = p[:, 2].astype(np.int64)[None]
    predictor = as_predictor(model).with_cache(cache)  # the model's settings and resolver, the server's cache
    try:
        # read at the finest working µm/px; segment() brings each prompt group to its own from there
        res = predictor.segment(rgb, list(prompts) or None, mpp=fine if image.reader.mpp is not None else None,
                                **kwargs)
    except ValueError as e:
        raise ServeError(422, str(e)) from None
    t_seg = time.perf_counter()
    # the instances segment() decoded, for the prompts segment() decodes (wants_instances); None for the others
    labels = [res.instances[i] if res.instances is not None and res.instance_counts[i] is not None else None
              for i in range(len(res.prompts))]
    t_inst = time.perf_counter()
    return ViewResult(result_id, image, region, scale, rgb, res, labels,
                      timings={"read_s": t_read - t0, "segment_s": t_seg - t_read, "instances_s": t_inst - t_seg},
                      cache={"encoded": predictor.encoded, "reused": predictor.reused}, note=note)
