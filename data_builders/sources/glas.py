"""GlaS@MICCAI2015 (Sirinukunwattana et al., MedIA 2017): colon glands, one id per gland, 20x.

Official download layout (``Warwick QU Dataset (Released 2016_07_08)``), all in one folder:
``train_N.bmp`` + ``train_N_anno.bmp`` (gland instance ids, 0 background), ``testA_N`` / ``testB_N`` likewise,
and ``Grade.csv`` with columns ``name, patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)``.
Official splits: train -> "train", testA/testB -> "test". The GlaS grade (benign / malignant) picks the source
class; an image missing from Grade.csv yields ungraded "gland". patient_id comes from Grade.csv.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, read_mask, read_rgb, relabel

_NAME = re.compile(r"^(train|testA|testB)_(\d+)$")


def read_grades(path: Path) -> dict[str, tuple[str, str]]:
    """``name -> (patient ID, GlaS grade)`` from ``Grade.csv`` (header names matched loosely)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise SourceFormatError(path, "empty Grade.csv")
    header = [h.strip().lower() for h in rows[0]]
    try:
        i_name = header.index("name")
        i_pat = next(i for i, h in enumerate(header) if h.startswith("patient"))
        i_grade = header.index("grade (glas)")
    except (ValueError, StopIteration):
        raise SourceFormatError(path, f"header {rows[0]} lacks 'name', 'patient ID', 'grade (GlaS)'") from None
    out = {}
    for r in rows[1:]:
        if len(r) <= max(i_name, i_pat, i_grade):
            continue
        grade = r[i_grade].strip().lower()
        if grade not in ("benign", "malignant"):
            raise SourceFormatError(path, f"row {r}: grade '{r[i_grade].strip()}' is not benign/malignant")
        out[r[i_name].strip()] = (r[i_pat].strip(), grade)
    return out


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@register_source
class GlaS(SourceAdapter):
    name = "glas"
    classes = ("benign", "malignant", "gland")
    default_mpp = 0.5
    licence = "research use only, no commercial use"
    citation = "Sirinukunwattana et al., Gland segmentation in colon histology images: The GlaS challenge contest, MedIA 2017"

    def __init__(self, root, **options):
        super().__init__(root, **options)
        grade = self.root / "Grade.csv"
        self.grades = read_grades(grade) if grade.is_file() else {}

    def list_items(self) -> list[str]:
        items = [p.name for p in self.root.glob("*.bmp") if _NAME.match(p.stem)]
        if not items:
            raise SourceFormatError(self.root, "no train_N.bmp / testA_N.bmp / testB_N.bmp images found (official "
                                               "GlaS layout: images, *_anno.bmp masks and Grade.csv in one folder)")
        return sorted(items, key=_natural)

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        stem = img_path.stem
        anno = img_path.with_name(f"{stem}_anno.bmp")
        if not anno.is_file():
            raise SourceFormatError(img_path, f"annotation {anno.name} is missing")
        image = read_rgb(img_path)
        inst = read_mask(anno)
        if inst.ndim == 3:  # saved as RGB with equal channels
            inst = inst[..., 0]
        check_size(inst, image, anno)
        inst, _ = relabel(inst)
        patient, grade = self.grades.get(stem, (f"{stem}", "gland"))
        cls = grade if grade in ("benign", "malignant") else "gland"
        split = "train" if stem.startswith("train") else "test"
        yield SourceSample(
            sample_id=stem, patient_id=f"glas-{patient}", image=image,
            masks={cls: inst} if inst.any() else {}, has_instances={cls: True},
            mpp=float(self.options.get("mpp") or self.default_mpp), organ="colon", split=split,
            exhaustive=None if cls != "gland" else ["gland"],
            meta={"grade": grade, "testset": stem.split("_")[0]})
