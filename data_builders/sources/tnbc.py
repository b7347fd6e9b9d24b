"""TNBC nuclei (Naylor et al., IEEE TMI 2019): 50 H&E 512x512 tiles (40x) of 11 triple-negative breast cancer
patients, every nucleus annotated.

Layout read (the official archive, ``TNBC_NucleiSegmentation/``)::

    Slide_01/01_1.png  ...      (RGB or RGBA)
    GT_01/01_1.png     ...      (binary mask, 0 / 255)

``XX`` in ``Slide_XX`` is the patient. Masks are binary (touching nuclei may merge); the option
``instances=True`` labels their 8-connected components instead.
"""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, read_mask, read_rgb

_SLIDE = re.compile(r"^slide_(\w+)$", re.I)


@register_source
class TNBC(SourceAdapter):
    name = "tnbc"
    classes = ("nucleus",)
    default_mpp = 0.25
    licence = "CC BY 4.0 (Zenodo); cite Naylor et al. 2019"
    citation = ("Naylor et al., Segmentation of Nuclei in Histopathology Images by Deep Regression of the "
                "Distance Map, IEEE TMI 2019")

    def list_items(self) -> list[str]:
        items = []
        for d in [self.root, *self.root.rglob("*")]:
            if d.is_dir() and _SLIDE.match(d.name):
                items += [str(p.relative_to(self.root)) for p in d.iterdir()
                          if p.is_file() and p.suffix.lower() in (".png", ".tif", ".jpg")]
        if not items:
            raise SourceFormatError(self.root, "no Slide_XX/*.png images found; expected Slide_XX/ + GT_XX/ folders "
                                               "as in TNBC_NucleiSegmentation")
        return sorted(items)

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        patient = _SLIDE.match(img_path.parent.name).group(1)
        gt_dir = img_path.parent.parent / f"GT_{patient}"
        gt = gt_dir / img_path.name
        if not gt.is_file():
            cands = list(gt_dir.glob(f"{img_path.stem}.*")) if gt_dir.is_dir() else []
            if not cands:
                raise SourceFormatError(img_path, f"no ground truth: expected {gt}")
            gt = cands[0]
        image = read_rgb(img_path)
        m = read_mask(gt)
        if m.ndim == 3:
            m = m.max(axis=-1)
        check_size(m, image, gt)
        binary = m > 0
        if self.options.get("instances"):
            from scipy import ndimage

            mask, _ = ndimage.label(binary, structure=np.ones((3, 3), bool))
            mask = mask.astype(np.int32)
        else:
            mask = binary.astype(np.int32)
        inst = bool(self.options.get("instances"))
        yield SourceSample(
            sample_id=img_path.stem if img_path.stem.startswith(patient) else f"{patient}_{img_path.stem}",
            patient_id=f"tnbc_{patient}", image=image, masks={"nucleus": mask} if binary.any() else {},
            has_instances={"nucleus": inst}, mpp=float(self.options.get("mpp") or self.default_mpp),
            organ="breast", split=self.options.get("split"), meta={"mask_file": str(gt)})
