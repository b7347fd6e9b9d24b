"""Lizard (Graham et al., ICCV Workshops 2021): 291 colon H&E regions at 20x (0.5 mpp) from six sources (CoNSeP,
CRAG, DigestPath, GlaS, PanNuke, TCGA), ~495k nuclei with one of six types.

Layout read (the official download)::

    Lizard_Images1/consep_1.png ...   Lizard_Images2/...          (RGB)
    Lizard_Labels/Labels/consep_1.mat                             (inst_map [H, W], id [N, 1], classes [N, 1], ...)
    Lizard_Labels/info.csv                                        (Filename, Source, Split)

``classes[k]`` is the type of instance ``id[k]``: 1 neutrophil, 2 epithelial, 3 lymphocyte, 4 plasma, 5 eosinophil,
6 connective. ``Split`` in info.csv is the cross-validation fold (1-3) of the Lizard paper, kept in ``meta``;
samples get no official split.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

import numpy as np

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, read_rgb
from .cpm17 import instance_map, load_mat

TYPE_CODES = {1: "neutrophil", 2: "epithelial", 3: "lymphocyte", 4: "plasma", 5: "eosinophil", 6: "connective"}
CITATION = ("Graham et al., Lizard: A Large-Scale Dataset for Colonic Nuclear Instance Segmentation and "
            "Classification, ICCV Workshops 2021")


def split_by_type(inst: np.ndarray, type_of: dict[int, int], path) -> dict[str, np.ndarray]:
    """Instance map + {instance id: type code} -> {type name: int32 instance map renumbered 1..K}."""
    bad = sorted({c for c in type_of.values() if c not in TYPE_CODES})
    if bad:
        raise SourceFormatError(path, f"unknown class code(s) {bad}; valid codes: "
                                      f"{', '.join(f'{k}={v}' for k, v in TYPE_CODES.items())}")
    out = {}
    for code, name in TYPE_CODES.items():
        ids = np.array(sorted(i for i, c in type_of.items() if c == code), dtype=np.int64)
        if ids.size == 0:
            continue
        lut = np.zeros(int(max(inst.max(), ids.max())) + 1, np.int32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
        m = lut[inst]
        if m.any():
            out[name] = m
    return out


@register_source
class Lizard(SourceAdapter):
    name = "lizard"
    classes = tuple(TYPE_CODES.values())
    default_mpp = 0.5
    licence = "CC BY-NC-SA 4.0"
    citation = CITATION

    def list_items(self) -> list[str]:
        items = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.png")
                       if p.is_file() and "label" not in p.parent.name.lower() and "overlay" not in str(p).lower())
        if not items:
            raise SourceFormatError(self.root, "no images found; expected Lizard_Images1/*.png (+ Lizard_Images2) and "
                                               "Lizard_Labels/Labels/*.mat")
        return items

    def _labels(self) -> dict[str, Path]:
        if getattr(self, "_mats", None) is None:
            self._mats = {p.stem: p for p in self.root.rglob("*.mat")}
        return self._mats

    def _info(self) -> dict[str, dict]:
        if getattr(self, "_info_rows", None) is None:
            self._info_rows = {}
            for f in self.root.rglob("info.csv"):
                with open(f, newline="") as fh:
                    rows = list(csv.DictReader(fh))
                if rows and not {"Filename", "Source", "Split"} <= set(rows[0]):
                    raise SourceFormatError(f, f"columns {list(rows[0])}; expected Filename, Source, Split")
                self._info_rows.update({r["Filename"]: r for r in rows})
        return self._info_rows

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        mat = self._labels().get(img_path.stem)
        if mat is None:
            raise SourceFormatError(img_path, f"no label file {img_path.stem}.mat under {self.root} "
                                              f"(expected Lizard_Labels/Labels/{img_path.stem}.mat)")
        d = load_mat(mat, ("inst_map", "classes", "id"))
        inst = instance_map(d["inst_map"], mat).astype(np.int64)
        raw = np.asarray(d["inst_map"]).astype(np.int64)
        ids, cls = d["id"].ravel().astype(np.int64), d["classes"].ravel().astype(np.int64)
        if ids.shape != cls.shape:
            raise SourceFormatError(mat, f"`id` has {ids.size} entries but `classes` has {cls.size}; they must align")
        # instance_map renumbered the ids; carry the types over to the new numbering
        lut = dict(zip(raw[raw > 0].tolist(), inst[raw > 0].tolist()))
        type_of = {lut[i]: c for i, c in zip(ids.tolist(), cls.tolist()) if i in lut}
        image = read_rgb(img_path)
        check_size(inst, image, mat)
        masks = split_by_type(inst, type_of, mat)
        info = self._info().get(img_path.stem, {})
        yield SourceSample(
            sample_id=img_path.stem, patient_id=img_path.stem, image=image, masks=masks,
            has_instances={c: True for c in self.classes}, mpp=float(self.options.get("mpp") or self.default_mpp),
            organ="colon", split=self.options.get("split"),
            meta={"label_file": str(mat), "origin": info.get("Source", ""), "fold": info.get("Split", "")})
