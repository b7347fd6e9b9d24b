"""BCSS (Amgad et al., Bioinformatics 2019): 151 breast cancer H&E regions of interest from TCGA, every pixel of the
ROI labelled with one of 21 tissue classes by pathologists.

Layout read (the official Google-Drive download)::

    images/TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500.png      (or rgbs_colorNormalized/)
    masks/TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500.png       (grey, codes 0-21)
    gtruth_codes.tsv                                                 (label <TAB> GT_code)

Code 0 (``outside_roi``) becomes the ``ignore`` mask; other codes are emitted as binary masks named by their
``gtruth_codes.tsv`` label (``exclude`` and ``undetermined`` map to no category: the builder ignores those pixels).
mpp: from the ``MPP-`` tag of the name. Patient: the TCGA barcode (first 12 characters).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, read_mask, read_rgb

DEFAULT_CODES = {
    0: "outside_roi", 1: "tumor", 2: "stroma", 3: "lymphocytic_infiltrate", 4: "necrosis_or_debris",
    5: "glandular_secretions", 6: "blood", 7: "exclude", 8: "metaplasia_NOS", 9: "fat", 10: "plasma_cells",
    11: "other_immune_infiltrate", 12: "mucoid_material", 13: "normal_acinus_or_duct", 14: "lymphatics",
    15: "undetermined", 16: "nerve", 17: "skin_adnexa", 18: "blood_vessel", 19: "angioinvasion", 20: "dcis",
    21: "other",
}
IGNORE_LABEL = "outside_roi"
_MPP = re.compile(r"MPP-([0-9.]+)", re.I)


def read_codes(path: Path) -> dict[int, str]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if not rows or [c.strip() for c in rows[0][:2]] != ["label", "GT_code"]:
        raise SourceFormatError(path, f"header {rows[0] if rows else '(empty)'}; expected 'label<TAB>GT_code'")
    codes = {}
    for r in rows[1:]:
        if not r or not r[0].strip():
            continue
        try:
            codes[int(r[1])] = r[0].strip()
        except (IndexError, ValueError):
            raise SourceFormatError(path, f"bad row {r}; expected '<label><TAB><integer code>'") from None
    return codes


@register_source
class BCSS(SourceAdapter):
    name = "bcss"
    classes = tuple(v for k, v in sorted(DEFAULT_CODES.items()) if v != IGNORE_LABEL)
    default_mpp = 0.25
    licence = "CC0 1.0"
    citation = ("Amgad et al., Structured crowdsourcing enables convolutional segmentation of histology images, "
                "Bioinformatics 2019")

    def _codes(self) -> dict[int, str]:
        if getattr(self, "_code_table", None) is None:
            tsv = next(iter(sorted(self.root.rglob("gtruth_codes.tsv"))), None)
            codes = read_codes(tsv) if tsv else dict(DEFAULT_CODES)
            unknown = [v for v in codes.values() if v != IGNORE_LABEL and v not in self.classes]
            if unknown:
                raise SourceFormatError(tsv, f"unknown label(s) {unknown}; known: {list(self.classes)}")
            self._code_table = codes
        return self._code_table

    def list_items(self) -> list[str]:
        items = []
        for d in [self.root, *self.root.rglob("*")]:
            if d.is_dir() and d.name.lower() in ("images", "rgbs_colornormalized"):
                items += [str(p.relative_to(self.root)) for p in d.glob("*.png")]
        if not items:
            raise SourceFormatError(self.root, "no images/*.png found; expected images/ (or rgbs_colorNormalized/), "
                                               "masks/ and gtruth_codes.tsv")
        return sorted(items)

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        mask_path = img_path.parent.parent / "masks" / img_path.name
        if not mask_path.is_file():
            raise SourceFormatError(img_path, f"no mask: expected {mask_path}")
        codes = self._codes()
        image = read_rgb(img_path)
        m = read_mask(mask_path)
        if m.ndim != 2:
            raise SourceFormatError(mask_path, f"mask must be a grey code image, got shape {m.shape}")
        check_size(m, image, mask_path)
        present = np.unique(m).tolist()
        bad = [c for c in present if c not in codes]
        if bad:
            raise SourceFormatError(mask_path, f"unknown class code(s) {bad}; valid codes: "
                                               f"{', '.join(f'{k}={v}' for k, v in sorted(codes.items()))}")
        masks, ignore = {}, None
        for c in present:
            label = codes[c]
            if label == IGNORE_LABEL:
                ignore = m == c
            else:
                masks[label] = (m == c).astype(np.int32)
        mm = _MPP.search(img_path.stem)
        mpp = float(self.options.get("mpp") or (mm and float(mm.group(1).rstrip("."))) or self.default_mpp)
        stem = img_path.stem
        yield SourceSample(
            sample_id=stem, patient_id=stem[:12] if stem.startswith("TCGA-") else stem, image=image, masks=masks,
            has_instances={c: False for c in self.classes}, mpp=mpp, organ="breast",
            split=self.options.get("split"), ignore=ignore, meta={"mask_file": str(mask_path)})
