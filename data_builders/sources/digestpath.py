"""DigestPath 2019, task 2 (Da et al., MedIA 2022): colonoscopy biopsy tissue images (H&E, 20x), malignant lesions
outlined on the positive images; the negative images contain no lesion.

Layout read (the challenge release)::

    tissue-train-pos-v1/18-00530A_2019-05-07 21_52_25-lv1-13176-14321-5297-5598.jpg
    tissue-train-pos-v1/18-00530A_2019-05-07 21_52_25-lv1-13176-14321-5297-5598_mask.jpg  (JPEG: > 127 = lesion)
    tissue-train-neg/D20190xxxxx_2019-...jpg                                                (no mask)

Negative images yield samples with no mask: the lesion category is exhaustive for the source, so the builder
records them as true negatives. Patient: the slide id before the first ``_``.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, read_mask, read_rgb

EXTS = (".jpg", ".jpeg", ".png")


@register_source
class DigestPath(SourceAdapter):
    name = "digestpath"
    classes = ("lesion",)
    default_mpp = 0.475
    licence = "research use (DigestPath 2019 challenge terms)"
    citation = ("Da et al., DigestPath: A benchmark dataset with challenge review for the pathological detection and "
                "segmentation of digestive-system, MedIA 2022")

    def list_items(self) -> list[str]:
        items = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                       if p.is_file() and p.suffix.lower() in EXTS and not p.stem.endswith("_mask")
                       and "tissue" in str(p).lower())
        if not items:
            raise SourceFormatError(self.root, "no images found; expected tissue-train-pos-v1/*.jpg (+ *_mask.jpg) and "
                                               "tissue-train-neg/*.jpg")
        return items

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        mask_path = next((img_path.with_name(f"{img_path.stem}_mask{e}") for e in EXTS
                          if img_path.with_name(f"{img_path.stem}_mask{e}").is_file()), None)
        negative = "neg" in img_path.parent.name.lower()
        if mask_path is None and not negative:
            raise SourceFormatError(img_path, f"no mask: expected {img_path.stem}_mask.jpg beside this positive image "
                                              f"(images without a lesion belong in tissue-train-neg/)")
        image = read_rgb(img_path)
        masks = {}
        if mask_path is not None:
            m = read_mask(mask_path)
            if m.ndim == 3:
                m = m.max(axis=-1)
            check_size(m, image, mask_path)
            binary = (m > 127).astype(np.int32)
            if binary.any():
                masks["lesion"] = binary
        stem = img_path.stem
        yield SourceSample(
            sample_id=stem, patient_id=stem.split("_")[0], image=image, masks=masks,
            has_instances={"lesion": False}, mpp=float(self.options.get("mpp") or self.default_mpp), organ="colon",
            split=self.options.get("split"),
            meta={"mask_file": str(mask_path) if mask_path else "", "negative_image": negative})
