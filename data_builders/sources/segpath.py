"""SegPath (Komura et al., Cancer Cell 2023): ~158k H&E 984x984 patches (0.22 mpp) whose masks come from
immunofluorescence restaining of the same section, one cell/tissue type per antibody.

Layout read (one extracted archive per antibody)::

    PanCK_Epithelium/PanCK_Epithelium_<...>_HE.png     +  ..._mask.png   (0 / 1)
    aSMA_SmoothMuscle/...   CD235a_RBC/...   CD45RB_Leukocyte/...   CD3CD20_Lymphocyte/...
    ERG_Endothelium/...     MIST1_PlasmaCell/...   MNDA_MyeloidCell/...

The source class is the antibody folder. Each image is annotated for its own antibody only: an empty mask is a
true negative for that class and says nothing about the others, so the mapping table lists no source-wide
exhaustive category; each sample's ``exhaustive`` names the one category (from ``sources/segpath.yaml``) its
mask is complete for, and ``meta["annotated"]`` its antibody. Where a
``*.csv`` beside the images has ``filename`` and ``train_val_test`` (or ``split``) columns, that split is used.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

import numpy as np

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, read_mask, read_rgb

ANTIBODIES = ("PanCK_Epithelium", "aSMA_SmoothMuscle", "CD235a_RBC", "CD45RB_Leukocyte", "CD3CD20_Lymphocyte",
              "ERG_Endothelium", "MIST1_PlasmaCell", "MNDA_MyeloidCell")
_SPLITS = {"train": "train", "val": "validation", "valid": "validation", "validation": "validation", "test": "test"}


def category_of(antibody: str) -> str:
    """The ontology category ``sources/segpath.yaml`` maps an antibody to (the antibody name when unmapped)."""
    global _CATEGORIES
    if _CATEGORIES is None:
        import yaml

        from pathsegmentor.ontology import DEFAULT_DIR

        try:
            _CATEGORIES = dict((yaml.safe_load((DEFAULT_DIR / "sources" / "segpath.yaml").read_text()) or {})
                               .get("classes") or {})
        except OSError:
            _CATEGORIES = {}
    return _CATEGORIES.get(antibody) or antibody


_CATEGORIES: dict | None = None


def antibody_of(path: Path) -> str | None:
    for part in reversed(path.parts):
        for a in ANTIBODIES:
            if part.lower().startswith(a.lower()):
                return a
    return None


@register_source
class SegPath(SourceAdapter):
    name = "segpath"
    classes = ANTIBODIES
    default_mpp = 0.22
    licence = "CC BY 4.0"
    citation = ("Komura et al., Restaining-based annotation for cancer histology segmentation to overcome annotation-"
                "related limitations among pathologists, Patterns 2023")

    def list_items(self) -> list[str]:
        items = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*_HE.png")
                       if antibody_of(p.relative_to(self.root)) is not None)
        if not items:
            raise SourceFormatError(self.root, f"no <antibody>/*_HE.png found; expected folders {list(ANTIBODIES)} "
                                               f"with *_HE.png + *_mask.png pairs")
        return items

    def _splits(self, folder: Path) -> dict[str, str]:
        cache = self.__dict__.setdefault("_split_cache", {})
        if folder not in cache:
            table = {}
            for f in sorted(folder.glob("*.csv")):
                with open(f, newline="") as fh:
                    rows = list(csv.DictReader(fh))
                col = next((c for c in ("train_val_test", "split") if rows and c in rows[0]), None)
                if col and "filename" in rows[0]:
                    table.update({Path(r["filename"]).name: _SPLITS.get(r[col].strip().lower()) for r in rows})
            cache[folder] = table
        return cache[folder]

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        cls = antibody_of(Path(item))
        mask_path = img_path.with_name(img_path.name[: -len("_HE.png")] + "_mask.png")
        if not mask_path.is_file():
            raise SourceFormatError(img_path, f"no mask: expected {mask_path.name} beside the image")
        image = read_rgb(img_path)
        m = read_mask(mask_path)
        if m.ndim != 2:
            raise SourceFormatError(mask_path, f"mask must be a grey 0/1 image, got shape {m.shape}")
        check_size(m, image, mask_path)
        vals = set(np.unique(m).tolist())
        if not vals <= {0, 1, 255}:
            raise SourceFormatError(mask_path, f"mask values {sorted(vals)[:10]}; expected a binary mask (0/1 or 0/255)")
        binary = (m > 0).astype(np.int32)
        stem = img_path.name[: -len("_HE.png")]
        table = self._splits(img_path.parent)
        split = table.get(img_path.name) or table.get(mask_path.name)
        yield SourceSample(
            sample_id=stem, patient_id=stem, image=image, masks={cls: binary} if binary.any() else {},
            has_instances={c: False for c in self.classes}, mpp=float(self.options.get("mpp") or self.default_mpp),
            split=self.options.get("split", split), exhaustive=[category_of(cls)],
            meta={"annotated": [cls], "antibody": cls})
