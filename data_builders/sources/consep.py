"""CoNSeP (Graham et al., HoVer-Net, MedIA 2019): colorectal nuclei with 7 types, 1000x1000 tiles at 40x.

Official layout: ``Train/Images/train_N.png`` + ``Train/Labels/train_N.mat`` and ``Test/Images/test_N.png`` +
``Test/Labels/test_N.mat`` (``root`` may also be one of ``Train``/``Test``). Each ``.mat`` holds ``inst_map``
(H x W, 0..N), ``type_map`` (H x W, codes 0..7) and ``inst_type`` (N x 1, the type of each instance in id order;
when absent the majority of ``type_map`` over the instance is used). Codes: 1 other, 2 inflammatory, 3 healthy
epithelial, 4 dysplastic/malignant epithelial, 5 fibroblast, 6 muscle, 7 endothelial. One instance map per type
is yielded; the paper's 4-class merge is the ontology's hierarchy (see ``sources/consep.yaml``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import read_rgb, relabel

TYPE_CODES = {1: "other", 2: "inflammatory", 3: "healthy epithelial", 4: "malignant epithelial",
              5: "fibroblast", 6: "muscle", 7: "endothelial"}


def load_mat(path: Path, keys: tuple[str, ...]) -> dict:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as e:
        raise SourceFormatError(path, f"cannot read .mat file ({type(e).__name__}: {e})") from None
    missing = [k for k in keys if k not in mat]
    if missing:
        have = sorted(k for k in mat if not k.startswith("__"))
        raise SourceFormatError(path, f"missing key(s) {missing} (has {have}); expected the official CoNSeP "
                                      f"label file with {list(keys)}")
    return mat


def instance_types(inst: np.ndarray, type_map: np.ndarray, inst_type: np.ndarray | None, n: int) -> np.ndarray:
    """Type code of each instance 1..n (index 0 unused)."""
    if inst_type is not None:
        t = np.asarray(inst_type).reshape(-1).astype(np.int64)
        if t.size >= n:
            return np.concatenate([[0], t[:n]])
    types = np.zeros(n + 1, np.int64)
    flat_i, flat_t = inst.reshape(-1), type_map.reshape(-1).astype(np.int64)
    sel = flat_i > 0
    counts = np.zeros((n + 1, 8 + int(flat_t.max(initial=0))), np.int64)
    np.add.at(counts, (flat_i[sel], flat_t[sel]), 1)
    counts[:, 0] = 0
    types[1:] = counts[1:].argmax(axis=1)
    return types


@register_source
class CoNSeP(SourceAdapter):
    name = "consep"
    classes = tuple(TYPE_CODES.values())
    default_mpp = 0.25
    licence = "research use; cite the HoVer-Net paper"
    citation = "Graham et al., HoVer-Net, Medical Image Analysis 2019"

    def list_items(self) -> list[str]:
        items = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.png") if p.parent.name == "Images")
        if not items:
            raise SourceFormatError(self.root, "no Images/*.png found; expected the official layout "
                                               "Train/Images/*.png + Train/Labels/*.mat (and Test/...)")
        return items

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        label = img_path.parent.parent / "Labels" / f"{img_path.stem}.mat"
        if not label.is_file():
            raise SourceFormatError(img_path, f"label file {label} is missing")
        image = read_rgb(img_path)
        mat = load_mat(label, ("inst_map", "type_map"))
        inst = np.asarray(mat["inst_map"])
        type_map = np.asarray(mat["type_map"])
        for key, arr in (("inst_map", inst), ("type_map", type_map)):
            if arr.shape != image.shape[:2]:
                raise SourceFormatError(label, f"{key} is {arr.shape[1]}x{arr.shape[0]} but the image is "
                                               f"{image.shape[1]}x{image.shape[0]} (WxH)")
        bad = sorted(set(np.unique(type_map).astype(int).tolist()) - set(TYPE_CODES) - {0})
        if bad:
            raise SourceFormatError(label, f"unknown type code(s) {bad} in type_map; valid codes: 0 (background) "
                                           f"and {TYPE_CODES}")
        inst, n = relabel(inst.astype(np.int64))
        types = instance_types(inst, type_map, mat.get("inst_type"), n)
        bad = sorted(set(types[1:].tolist()) - set(TYPE_CODES))
        if bad:
            raise SourceFormatError(label, f"unknown instance type code(s) {bad} in inst_type; valid: {TYPE_CODES}")
        masks, has = {}, {}
        for code, cls in TYPE_CODES.items():
            keep = types == code
            keep[0] = False
            if keep[1:].any():
                m = np.where(keep[inst], inst, 0)
                masks[cls] = relabel(m)[0]
                has[cls] = True
        parts = Path(item).parts
        split = "test" if parts and parts[0].lower() == "test" else ("train" if parts and parts[0].lower() == "train"
                                                                      else None)
        yield SourceSample(sample_id=str(Path(item).with_suffix("")).replace("/Images/", "/"),
                           patient_id=img_path.stem, image=image, masks=masks, has_instances=has,
                           mpp=float(self.options.get("mpp") or self.default_mpp), organ="colon",
                           split=self.options.get("split", split))
