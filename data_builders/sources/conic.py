"""CoNIC 2022 challenge data (Graham et al., 2021): 4981 non-overlapping 256x256 patches of the Lizard colon images,
20x (0.5 mpp), every nucleus with one of six types.

Layout read (the challenge release)::

    data/images.npy       uint8 [N, 256, 256, 3]
    data/labels.npy       [N, 256, 256, 2]: channel 0 instance ids, channel 1 type (0 background, 1-6)
    data/patch_info.csv   one row per patch, e.g. ``consep_1-0000`` (Lizard image name - patch index)
    data/counts.csv       (not used)

Types: 1 neutrophil, 2 epithelial, 3 lymphocyte, 4 plasma, 5 eosinophil, 6 connective. The arrays are memory-mapped
and streamed row by row. Patient: the Lizard image of the patch (the ``patch_info`` prefix), so patches of one image
never straddle splits.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import relabel
from .lizard import TYPE_CODES, split_by_type

_PATCH = re.compile(r"^(.+)-(\d+)$")


def read_patch_info(path: Path, n: int) -> list[str]:
    with open(path, newline="") as fh:
        rows = [r[0].strip() for r in csv.reader(fh) if r and r[0].strip()]
    if rows and not _PATCH.match(rows[0]):
        rows = rows[1:]  # header
    if len(rows) != n:
        raise SourceFormatError(path, f"{len(rows)} patch names for {n} patches in images.npy; they must align")
    return rows


@register_source
class CoNIC(SourceAdapter):
    name = "conic"
    classes = tuple(TYPE_CODES.values())
    default_mpp = 0.5
    licence = "CC BY-NC-SA 4.0"
    citation = ("Graham et al., CoNIC: Colon Nuclei Identification and Counting Challenge 2022, arXiv:2111.14485; "
                "Lizard, ICCV Workshops 2021")

    def list_items(self) -> list[str]:
        items = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("images.npy")
                       if (p.parent / "labels.npy").is_file())
        if not items:
            raise SourceFormatError(self.root, "no images.npy with labels.npy beside it; expected data/images.npy, "
                                               "data/labels.npy, data/patch_info.csv")
        return items

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        lab_path = img_path.parent / "labels.npy"
        try:
            images = np.load(img_path, mmap_mode="r")
            labels = np.load(lab_path, mmap_mode="r")
        except Exception as e:
            raise SourceFormatError(img_path, f"cannot read .npy ({type(e).__name__}: {e})") from None
        if images.ndim != 4 or images.shape[-1] != 3:
            raise SourceFormatError(img_path, f"expected an array [N, H, W, 3], got shape {images.shape}")
        if labels.ndim != 4 or labels.shape[-1] != 2 or labels.shape[:3] != images.shape[:3]:
            raise SourceFormatError(lab_path, f"expected an array [N, H, W, 2] matching images {images.shape[:3]}, "
                                              f"got shape {labels.shape}")
        n = images.shape[0]
        info = img_path.parent / "patch_info.csv"
        names = read_patch_info(info, n) if info.is_file() else [f"conic_{i:05d}" for i in range(n)]
        mpp = float(self.options.get("mpp") or self.default_mpp)
        for i in range(n):
            inst, _ = relabel(np.asarray(labels[i, ..., 0]).astype(np.int64))
            typ = np.asarray(labels[i, ..., 1]).astype(np.int64)
            bad = sorted(set(np.unique(typ).tolist()) - set(TYPE_CODES) - {0})
            if bad:
                raise SourceFormatError(lab_path, f"patch {i}: unknown class code(s) {bad}; valid codes: 0=background, "
                                                  f"{', '.join(f'{k}={v}' for k, v in TYPE_CODES.items())}")
            fg = inst > 0
            # type of an instance: the majority type code over its pixels
            type_of = {}
            if fg.any():
                pairs = np.stack([inst[fg], typ[fg]], 1)
                uniq, cnt = np.unique(pairs, axis=0, return_counts=True)
                best: dict[int, tuple[int, int]] = {}
                for (iid, t), c in zip(uniq.tolist(), cnt.tolist()):
                    if t and (iid not in best or c > best[iid][1]):
                        best[iid] = (t, c)
                type_of = {k: v[0] for k, v in best.items()}
            masks = split_by_type(inst, type_of, lab_path)
            img = np.asarray(images[i])
            if img.dtype != np.uint8:
                img = np.clip(img, 0, 255).astype(np.uint8)
            m = _PATCH.match(names[i])
            yield SourceSample(
                sample_id=names[i], patient_id=m.group(1) if m else names[i], image=np.ascontiguousarray(img),
                masks=masks, has_instances={c: True for c in self.classes}, mpp=mpp, organ="colon",
                split=self.options.get("split"), meta={"index": i})
