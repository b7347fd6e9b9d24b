"""NuInsSeg (Mahbod et al., Sci. Data 2024): 665 H&E 512x512 tiles (40x) of 31 human and mouse organs, every
nucleus outlined, with ambiguous ("vague") areas marked.

Layout read (the Kaggle / Zenodo release), one folder per organ::

    human bladder/tissue images/human_bladder_01.png
    human bladder/label masks modify/human_bladder_01.tif     (instance ids)
    human bladder/vague areas/mask binary/human_bladder_01.png  (ambiguous areas, optional; 0 / 255)
    mouse muscle/...

Ambiguous pixels become the sample's ``ignore`` mask. Organ: the folder name without the species
("human bladder" -> "bladder"; the species is kept in ``meta``), mapped in ``sources/nuinsseg.yaml``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, read_mask, read_rgb, relabel

_SPECIES = re.compile(r"^(human|mouse)[ _]+(.+)$", re.I)


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def _child(d: Path, *names: str) -> Path | None:
    """The subfolder of ``d`` whose normalised name is one of ``names``."""
    for c in d.iterdir() if d.is_dir() else ():
        if c.is_dir() and _norm(c.name) in names:
            return c
    return None


def _find(d: Path | None, stem: str) -> Path | None:
    if d is None:
        return None
    for ext in (".tif", ".tiff", ".png"):
        if (d / f"{stem}{ext}").is_file():
            return d / f"{stem}{ext}"
    return None


@register_source
class NuInsSeg(SourceAdapter):
    name = "nuinsseg"
    classes = ("nucleus",)
    default_mpp = 0.25
    licence = "CC BY 4.0; cite Mahbod et al. 2024"
    citation = ("Mahbod et al., NuInsSeg: A fully annotated dataset for nuclei instance segmentation in H&E-stained "
                "histological images, Sci. Data 2024")

    def list_items(self) -> list[str]:
        items = []
        for d in [self.root, *self.root.rglob("*")]:
            if d.is_dir() and _norm(d.name) == "tissue images":
                items += [str(p.relative_to(self.root)) for p in d.iterdir()
                          if p.is_file() and p.suffix.lower() in (".png", ".tif", ".tiff", ".jpg")]
        if not items:
            raise SourceFormatError(self.root, "no '<organ>/tissue images/*.png' found; expected one folder per organ "
                                               "with 'tissue images', 'label masks modify', 'vague areas/mask binary'")
        return sorted(items)

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        organ_dir = img_path.parent.parent
        lab = _find(_child(organ_dir, "label masks modify"), img_path.stem) or \
            _find(_child(organ_dir, "label masks"), img_path.stem)
        if lab is None:
            raise SourceFormatError(img_path, f"no instance label: expected {organ_dir / 'label masks modify' / (img_path.stem + '.tif')}")
        image = read_rgb(img_path)
        arr = read_mask(lab)
        if arr.ndim != 2:
            raise SourceFormatError(lab, f"instance label must be a 2-D label image, got shape {arr.shape}")
        check_size(arr, image, lab)
        inst = relabel(arr.astype("int64"))[0]
        vague_dir = _child(organ_dir, "vague areas")
        vague = _find(_child(vague_dir, "mask binary") if vague_dir else None, img_path.stem)
        ignore = None
        if vague is not None:
            v = read_mask(vague)
            if v.ndim == 3:
                v = v.max(axis=-1)
            check_size(v, image, vague)
            ignore = v > 0
        m = _SPECIES.match(_norm(organ_dir.name))
        species, organ = (m.group(1), m.group(2)) if m else ("", _norm(organ_dir.name))
        sid = img_path.stem
        if not sid.lower().replace(" ", "_").startswith(_norm(organ_dir.name).replace(" ", "_")):
            sid = f"{_norm(organ_dir.name).replace(' ', '_')}_{sid}"
        yield SourceSample(
            sample_id=sid, patient_id=sid, image=image, masks={"nucleus": inst} if inst.any() else {},
            has_instances={"nucleus": True}, mpp=float(self.options.get("mpp") or self.default_mpp), organ=organ,
            split=self.options.get("split"), ignore=ignore,
            meta={"species": species, "label_file": str(lab), "vague_file": str(vague) if vague else ""})
