"""CryoNuSeg (Mahbod et al., Comput. Biol. Med. 2021): 30 H&E 512x512 tiles (40x) of frozen sections from 10 human
organs (TCGA), every nucleus outlined by two annotators (one of them twice).

Layout read (the Kaggle / Zenodo release)::

    tissue images/Human_AdrenalGland_01.tif ...
    Annotator 1 (biologist second round of manual marks up)/Annotator 1 (biologist second round of manual marks up)/
        label masks modify/Human_AdrenalGland_01.tif      (instance ids)
    Annotator 2 (bioinformatician)/.../label masks modify/*.tif
    ...

Option ``annotator``: a substring of the annotator folder name (default ``"Annotator 1 (biologist second round"``,
the reference annotation of the paper). Instance labels come from ``label masks modify`` (falling back to
``label masks``). Organ: the name between ``Human_`` and the index.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, read_mask, read_rgb, relabel

DEFAULT_ANNOTATOR = "Annotator 1 (biologist second round"
_NAME = re.compile(r"^(?:human|mouse)?_?([A-Za-z]+)_\d+$", re.I)


def _norm(name: str) -> str:
    return name.lower().replace("_", " ").strip()


@register_source
class CryoNuSeg(SourceAdapter):
    name = "cryonuseg"
    classes = ("nucleus",)
    default_mpp = 0.25
    licence = "CC BY-NC-SA 4.0; cite Mahbod et al. 2021"
    citation = ("Mahbod et al., CryoNuSeg: A dataset for nuclei instance segmentation of cryosectioned H&E-stained "
                "histological images, Comput. Biol. Med. 2021")

    def _image_dirs(self) -> list[Path]:
        return sorted(d for d in [self.root, *self.root.rglob("*")] if d.is_dir() and _norm(d.name) == "tissue images")

    def list_items(self) -> list[str]:
        items = [str(p.relative_to(self.root)) for d in self._image_dirs() for p in d.iterdir()
                 if p.is_file() and p.suffix.lower() in (".tif", ".tiff", ".png")]
        if not items:
            raise SourceFormatError(self.root, "no images in a 'tissue images' folder; expected 'tissue images/*.tif' "
                                               "and 'Annotator .../label masks modify/*.tif'")
        return sorted(items)

    def _label_index(self) -> dict[str, Path]:
        if getattr(self, "_labels", None) is None:
            annotator = str(self.options.get("annotator", DEFAULT_ANNOTATOR)).lower()
            found: dict[str, tuple[int, Path]] = {}
            for d in self.root.rglob("*"):
                if not d.is_dir() or _norm(d.name) not in ("label masks modify", "label masks"):
                    continue
                if annotator not in str(d.relative_to(self.root)).lower():
                    continue
                rank = 0 if _norm(d.name) == "label masks modify" else 1
                for f in d.iterdir():
                    if f.suffix.lower() in (".tif", ".tiff", ".png") and (f.stem not in found or rank < found[f.stem][0]):
                        found[f.stem] = (rank, f)
            self._labels = {k: v[1] for k, v in found.items()}
        return self._labels

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        labels = self._label_index()
        if img_path.stem not in labels:
            raise SourceFormatError(img_path, f"no instance label for this image from annotator "
                                              f"'{self.options.get('annotator', DEFAULT_ANNOTATOR)}' (looked for "
                                              f".../label masks modify/{img_path.stem}.tif); set the `annotator` option")
        lab_path = labels[img_path.stem]
        image = read_rgb(img_path)
        lab = read_mask(lab_path)
        if lab.ndim != 2:
            raise SourceFormatError(lab_path, f"instance label must be a 2-D label image, got shape {lab.shape}")
        check_size(lab, image, lab_path)
        inst = relabel(lab.astype("int64"))[0]
        m = _NAME.match(img_path.stem)
        organ = m.group(1) if m else ""
        yield SourceSample(
            sample_id=img_path.stem, patient_id=img_path.stem, image=image,
            masks={"nucleus": inst} if inst.any() else {}, has_instances={"nucleus": True},
            mpp=float(self.options.get("mpp") or self.default_mpp), organ=organ, split=self.options.get("split"),
            meta={"label_file": str(lab_path), "preparation": "frozen section"})
