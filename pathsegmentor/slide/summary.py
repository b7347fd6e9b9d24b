"""Slide-level summary: per prompt area fraction of tissue, objects per mm² of tissue, and the
tumour–stroma ratio when both a tumour prompt and a stroma prompt were given."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PromptStats:
    prompt: str
    instances: bool
    mask_pixels: int = 0
    mask_in_tissue_pixels: int = 0
    objects: int = 0
    presence_max: float = 0.0
    regions: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _is_tumour(p: str) -> bool:
    p = p.lower()
    return ("tumor" in p or "tumour" in p or "carcinoma" in p) and "nucle" not in p and "cell" not in p


def _is_stroma(p: str) -> bool:
    p = p.lower()
    return "stroma" in p and "nucle" not in p and "cell" not in p


def slide_summary(*, stats: list[PromptStats], tissue_pixels: int, work_pixels: int, pixel_area_um2: float,
                  info: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready summary. Areas use working-grid pixels of ``pixel_area_um2`` each."""
    tissue_mm2 = tissue_pixels * pixel_area_um2 / 1e6
    prompts = []
    for s in stats:
        d = {"prompt": s.prompt, "instances": s.instances,
             "area_mm2": round(s.mask_pixels * pixel_area_um2 / 1e6, 6),
             "area_fraction_of_tissue": round(s.mask_in_tissue_pixels / tissue_pixels, 6) if tissue_pixels else None,
             "presence_max": round(float(s.presence_max), 6)}
        if s.instances:
            d["objects"] = s.objects
            d["objects_per_mm2_tissue"] = round(s.objects / tissue_mm2, 3) if tissue_mm2 > 0 else None
        else:
            d["regions"] = s.regions
        d.update(s.extra)
        prompts.append(d)
    out: dict[str, Any] = {"pathsegmentor_slide": 1, **info,
                           "tissue": {"area_mm2": round(tissue_mm2, 6),
                                      "fraction_of_slide": round(tissue_pixels / work_pixels, 6) if work_pixels else 0.0},
                           "prompts": prompts}
    tum = [s for s in stats if _is_tumour(s.prompt)]
    stro = [s for s in stats if _is_stroma(s.prompt)]
    if tum and stro:
        t = sum(s.mask_in_tissue_pixels for s in tum)
        st = sum(s.mask_in_tissue_pixels for s in stro)
        out["tumor_stroma"] = {"tumor_prompts": [s.prompt for s in tum], "stroma_prompts": [s.prompt for s in stro],
                               "tumor_stroma_ratio": round(t / st, 6) if st else None,
                               "stroma_fraction": round(st / (t + st), 6) if t + st else None}
    return out
