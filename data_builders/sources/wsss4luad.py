"""WSSS4LUAD (Han et al., 2022, arXiv:2204.06455): lung adenocarcinoma H&E patches (GDPH and TCGA slides, 10x) with
pixel-level labels for the validation and test sets (the training set has patch-level labels only and is not read).

Layout read (the challenge release)::

    2.validation/img/00.png   2.validation/mask/00.png   2.validation/background-mask/00.png
    3.testing/img/...         3.testing/mask/...          3.testing/background-mask/...

``mask`` is a palette PNG whose indices are 0 tumour epithelium, 1 tumour-associated stroma, 2 normal tissue,
3 background (RGB copies with the palette colours are accepted too). Background (index 3) and the white pixels of
``background-mask`` are not annotated tissue: they become the ``ignore`` mask. Split: validation / test.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, read_mask, read_rgb

CODES = {0: "tumor", 1: "stroma", 2: "normal"}
BACKGROUND = 3
NAME_BG = "background"
PALETTE = {(0, 64, 128): 0, (64, 128, 0): 1, (243, 152, 0): 2, (255, 255, 255): 3}


def _split(rel: Path) -> str | None:
    for part in rel.parts:
        p = part.lower()
        if "valid" in p:
            return "validation"
        if "test" in p:
            return "test"
        if "train" in p:
            return "train"
    return None


@register_source
class WSSS4LUAD(SourceAdapter):
    name = "wsss4luad"
    classes = tuple(CODES.values())
    default_mpp = 1.0
    licence = "CC BY-NC-SA 4.0 (challenge data)"
    citation = ("Han et al., WSSS4LUAD: Grand Challenge on Weakly-supervised Tissue Semantic Segmentation for Lung "
                "Adenocarcinoma, arXiv:2204.06455")

    def list_items(self) -> list[str]:
        items = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.png")
                       if p.parent.name.lower() == "img" and (p.parent.parent / "mask").is_dir())
        if not items:
            raise SourceFormatError(self.root, "no <split>/img/*.png with a <split>/mask folder found; expected "
                                               "2.validation/img + mask and 3.testing/img + mask")
        return items

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        mask_path = img_path.parent.parent / "mask" / img_path.name
        if not mask_path.is_file():
            raise SourceFormatError(img_path, f"no mask: expected {mask_path}")
        image = read_rgb(img_path)
        m = read_mask(mask_path)
        if m.ndim == 3:
            code = np.full(m.shape[:2], 255, np.int32)
            for rgb, c in PALETTE.items():
                code[(m[..., :3] == rgb).all(-1)] = c
            if (code == 255).any():
                bad = np.unique(m[code == 255].reshape(-1, m.shape[-1]), axis=0)[:5].tolist()
                raise SourceFormatError(mask_path, f"unknown mask colour(s) {bad}; valid: "
                                                   f"{', '.join(f'{k}={CODES.get(v, NAME_BG)}' for k, v in PALETTE.items())}")
            m = code
        check_size(m, image, mask_path)
        bad = sorted(set(np.unique(m).tolist()) - set(CODES) - {BACKGROUND})
        if bad:
            raise SourceFormatError(mask_path, f"unknown class code(s) {bad}; valid codes: 0=tumor, 1=stroma, "
                                               f"2=normal, 3=background")
        masks = {name: (m == c).astype(np.int32) for c, name in CODES.items() if (m == c).any()}
        ignore = m == BACKGROUND
        bg_path = img_path.parent.parent / "background-mask" / img_path.name
        if bg_path.is_file():
            bg = read_mask(bg_path)
            if bg.ndim == 3:
                bg = bg.min(axis=-1)
            check_size(bg, image, bg_path)
            ignore |= bg > 127
        split = _split(Path(item))
        sid = f"{split or 'wsss4luad'}_{img_path.stem}"
        yield SourceSample(
            sample_id=sid, patient_id=sid, image=image, masks=masks, has_instances={c: False for c in self.classes},
            mpp=float(self.options.get("mpp") or self.default_mpp), organ="lung",
            split=self.options.get("split", split), ignore=ignore if ignore.any() else None,
            meta={"mask_file": str(mask_path)})
