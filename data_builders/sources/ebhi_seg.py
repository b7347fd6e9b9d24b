"""EBHI-Seg (Shi et al., Frontiers in Medicine 2023): 224x224 H&E crops of colorectal endoscopic biopsies
photographed through a light microscope ("400x"), one folder per diagnosis class, one greyscale label per image.

Layout read (the release)::

    EBHI-SEG/<class>/image/GT2012149-2-400-001.png     uint8 RGB
    EBHI-SEG/<class>/label/GT2012149-2-400-001.png     uint8 grey, 255 = annotated glands / lesion epithelium

``<class>`` is one of ``Normal``, ``Polyp``, ``Low-grade IN``, ``High-grade IN``, ``Serrated adenoma``,
``Adenocarcinoma`` (names with spaces; a missing or empty class folder is skipped). Labels are thresholded at
127: about 5 % of the pixels, on edges, hold in-between values from the release's encoding. The same file name
can occur under two classes (different crops), so ``sample_id`` is ``<class slug>/<stem>``. Case id: the digits
after ``GT`` and an optional letter prefix (``xc``, ``XC``, ``DC``; the same digits occur with different prefixes
and classes) up to the first ``-`` (``GT2012149-2-400-001.png`` -> ``2012149``); it is the ``patient_id``, so the
builder's grouped split keeps a case (which can appear under several classes) in one split.

The source class is the folder (kept in the corpus as each triple's ``source_label``), mapped in
``configs/ontology/sources/ebhi_seg.yaml``; what "label 255" means depends on it:

* Normal -> ``benign gland`` (normal crypts; rolls up to ``gland``);
* Polyp -> ``gland`` (ungraded: the release separates adenomas by dysplasia grade, and a polyp crop's glands are
  hyperplastic-looking; whether they are dysplastic is not given, so neither benign nor dysplastic is claimed);
* Low-grade IN, High-grade IN, Serrated adenoma -> ``dysplastic gland`` (intraepithelial neoplasia = dysplasia;
  rolls up to ``gland``);
* Adenocarcinoma -> ``tumor`` only: some crops are solid tumour from edge to edge with no gland structure, so the
  mask is not a set of glands and is not mapped to ``malignant gland`` (which would also make it a ``gland``).

Certain negatives (per sample ``exhaustive``, from ``exhaustive_by_class`` in the same YAML): every class's own
category is exhaustively outlined; a Normal crop also holds no ``tumor``, ``malignant gland`` or ``dysplastic
gland`` (the builder turns absent exhaustive categories, with their descendants, into the tile's
``negative_labels``). The pixel size is not published; ``default_mpp`` is the estimate of
``bench/ebhi_pixel_size.py`` (see the YAML).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, read_mask, read_rgb

CLASSES = ("Normal", "Polyp", "Low-grade IN", "High-grade IN", "Serrated adenoma", "Adenocarcinoma")
THRESHOLD = 127  # label > 127 is annotated
_CASE = re.compile(r"^GT[A-Za-z]*(\d+)-")


def case_id(stem: str) -> str:
    """The case number of an EBHI-Seg file stem (``GTxc2110176-3-400-006`` -> ``2110176``)."""
    m = _CASE.match(stem)
    if not m:
        raise ValueError(f"file name '{stem}' does not start with GT<digits>- (e.g. GT2012149-2-400-001); "
                         f"rename it as in the release or drop it")
    return m.group(1)


def slug(cls: str) -> str:
    """``Low-grade IN`` -> ``low-grade-in`` (the class part of ``sample_id``)."""
    return "-".join(cls.lower().split())


def exhaustive_by_class() -> dict[str, list[str]]:
    """``exhaustive_by_class`` of ``configs/ontology/sources/ebhi_seg.yaml``: class -> certain categories."""
    global _EXHAUSTIVE
    if _EXHAUSTIVE is None:
        import yaml

        from pathsegmentor.ontology import DEFAULT_DIR

        path = DEFAULT_DIR / "sources" / "ebhi_seg.yaml"
        table = (yaml.safe_load(path.read_text()) or {}).get("exhaustive_by_class") or {}
        missing = [c for c in CLASSES if c not in table]
        if missing:
            raise ValueError(f"{path}: `exhaustive_by_class` lacks {missing}; give each class its list of "
                             f"categories that are certain (present and outlined, or certainly absent)")
        _EXHAUSTIVE = {str(k): [str(e) for e in (v or [])] for k, v in table.items()}
    return _EXHAUSTIVE


_EXHAUSTIVE: dict[str, list[str]] | None = None


@register_source
class EBHISeg(SourceAdapter):
    name = "ebhi_seg"
    classes = CLASSES
    default_mpp = 1.4  # estimated, not published: bench/ebhi_pixel_size.py (configs/ontology/sources/ebhi_seg.yaml)
    licence = "CC BY 4.0"
    citation = ("Shi et al., EBHI-Seg: A novel enteroscope biopsy histopathological hematoxylin and eosin image "
                "dataset for image segmentation tasks, Frontiers in Medicine 2023")

    def _base(self) -> Path:
        """``root`` itself or its ``EBHI-SEG`` folder (the folder holding the class folders)."""
        inner = self.root / "EBHI-SEG"
        return inner if inner.is_dir() and not any((self.root / c).is_dir() for c in CLASSES) else self.root

    def list_items(self) -> list[str]:
        base = self._base()
        items = [str(p.relative_to(self.root)) for c in CLASSES if (base / c / "image").is_dir()
                 for p in (base / c / "image").glob("*.png") if p.is_file()]
        if not items:
            raise SourceFormatError(self.root, f"no <class>/image/*.png found; expected the release layout "
                                               f"EBHI-SEG/<class>/image/*.png + <class>/label/*.png with classes "
                                               f"{list(CLASSES)} (pass the EBHI-SEG folder or its parent)")
        return sorted(items)

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        cls = img_path.parent.parent.name
        if cls not in CLASSES:
            raise SourceFormatError(img_path, f"class folder '{cls}' is not one of {list(CLASSES)}")
        lab_path = img_path.parent.parent / "label" / img_path.name
        if not lab_path.is_file():
            raise SourceFormatError(img_path, f"no label {lab_path} (every image needs <class>/label/<same name>)")
        try:
            case = case_id(img_path.stem)
        except ValueError as e:
            raise SourceFormatError(img_path, str(e)) from None
        image = read_rgb(img_path)
        lab = read_mask(lab_path)
        if lab.ndim == 3:  # grey saved as RGB
            if not (lab == lab[..., :1]).all():
                raise SourceFormatError(lab_path, "label is a colour image; expected a greyscale 0/255 label")
            lab = lab[..., 0]
        check_size(lab, image, lab_path)
        mask = (lab > THRESHOLD).astype(np.int32)
        yield SourceSample(
            sample_id=f"{slug(cls)}/{img_path.stem}", patient_id=case, image=image,
            masks={cls: mask} if mask.any() else {}, has_instances={cls: False},
            mpp=float(self.options.get("mpp") or self.default_mpp), organ=str(self.options.get("region", "colon")),
            split=self.options.get("split"), exhaustive=list(exhaustive_by_class()[cls]),
            meta={"diagnosis": cls, "label_file": str(lab_path)})
