"""PanNuke (Gamper et al., ECDP 2019; arXiv:2003.10778): 7901 H&E 256x256 patches (40x) of 19 tissues in three folds,
every nucleus outlined with one of five types.

Layouts read (``root`` holds the three fold folders)::

    Fold 1/images/fold1/images.npy   float64 [N, 256, 256, 3], 0-255
    Fold 1/images/fold1/types.npy    str [N] tissue names ("Breast", "Adrenal_gland", ...)
    Fold 1/masks/fold1/masks.npy     float64 [N, 256, 256, 6]: neoplastic, inflammatory, connective, dead,
                                     epithelial, background; instance ids per channel
    (also flat: ``fold1/images.npy`` + ``masks.npy`` + ``types.npy`` in one folder)

One item is one fold; its rows are memory-mapped and streamed. Split: the official 3-fold protocol, by default
fold 1 train / fold 2 validation / fold 3 test; option ``fold_splits`` (e.g. ``{1: test, 2: train, 3: validation}``)
picks another rotation, ``fold_splits: null`` leaves splitting to the builder.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import relabel

CHANNELS = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")  # channel 5: background
DEFAULT_FOLD_SPLITS = {1: "train", 2: "validation", 3: "test"}
_FOLD = re.compile(r"fold[ _-]?(\d+)", re.I)


def _fold_number(rel: Path) -> int | None:
    for part in reversed(rel.parts):
        m = _FOLD.search(part)
        if m:
            return int(m.group(1))
    return None


def _load(path: Path, what: str):
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:
        if what != "types":
            raise SourceFormatError(path, f"{what}.npy holds Python objects; expected a numeric array") from None
        return np.load(path, allow_pickle=True)  # types.npy of some copies is an object array of str
    except Exception as e:
        raise SourceFormatError(path, f"cannot read .npy ({type(e).__name__}: {e}); the file is truncated or "
                                      f"corrupt") from None


def _sibling(images: Path, name: str) -> Path | None:
    """``masks.npy`` / ``types.npy`` of a fold: beside images.npy, or the ``images`` -> ``masks`` mirror folder."""
    cands = [images.parent / f"{name}.npy"]
    parts = list(images.parent.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].lower() == "images":
            mirror = Path(*parts[:i], "masks", *parts[i + 1:])
            cands.append(mirror / f"{name}.npy")
            break
    return next((c for c in cands if c.is_file()), None)


@register_source
class PanNuke(SourceAdapter):
    name = "pannuke"
    classes = CHANNELS
    default_mpp = 0.25
    licence = "CC BY-NC-SA 4.0"
    citation = ("Gamper et al., PanNuke: an open pan-cancer histology dataset for nuclei instance segmentation and "
                "classification, ECDP 2019; PanNuke Dataset Extension, Insights and Baselines, arXiv:2003.10778")

    def list_items(self) -> list[str]:
        items = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("images.npy") if p.is_file())
        if not items:
            raise SourceFormatError(self.root, "no images.npy found; expected 'Fold 1/images/fold1/images.npy' and "
                                               "'Fold 1/masks/fold1/masks.npy' (and folds 2, 3)")
        return items

    def _split(self, fold: int | None) -> str | None:
        fs = self.options.get("fold_splits", DEFAULT_FOLD_SPLITS)
        if fs is None or fold is None:
            return None
        return {int(k): v for k, v in fs.items()}.get(fold)

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        mask_path = _sibling(img_path, "masks")
        if mask_path is None:
            raise SourceFormatError(img_path, "no masks.npy for this fold (looked beside images.npy and in the "
                                              "'masks/' mirror folder)")
        types_path = _sibling(img_path, "types")
        images = _load(img_path, "images")
        masks = _load(mask_path, "masks")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise SourceFormatError(img_path, f"expected an array [N, H, W, 3], got shape {images.shape}")
        if masks.ndim != 4 or masks.shape[-1] != 6 or masks.shape[:3] != images.shape[:3]:
            raise SourceFormatError(mask_path, f"expected an array [N, H, W, 6] (neoplastic, inflammatory, connective, "
                                               f"dead, epithelial, background) matching images {images.shape[:3]}, "
                                               f"got shape {masks.shape}")
        n = images.shape[0]
        types = None
        if types_path is not None:
            types = np.asarray(_load(types_path, "types")).reshape(-1)
            if types.shape[0] != n:
                raise SourceFormatError(types_path, f"{types.shape[0]} tissue types for {n} patches; they must align")
        fold = _fold_number(Path(item))
        split = self._split(fold)
        mpp = float(self.options.get("mpp") or self.default_mpp)
        prefix = f"fold{fold}" if fold is not None else Path(item).parent.as_posix().replace("/", "_")
        for i in range(n):
            img = np.asarray(images[i])
            if img.dtype != np.uint8:
                img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
            row = np.asarray(masks[i])
            out = {}
            for c, name in enumerate(CHANNELS):
                ch = row[..., c]
                if ch.any():
                    out[name] = relabel(ch.astype(np.int64))[0]
            sid = f"{prefix}_{i:05d}"
            yield SourceSample(
                sample_id=sid, patient_id=sid, image=np.ascontiguousarray(img), masks=out,
                has_instances={c: True for c in CHANNELS}, mpp=mpp,
                organ=str(types[i]) if types is not None else "", split=split, meta={"fold": fold, "index": i})
