"""A user's own image/mask folders: ``<root>/<images>/<stem><ext>`` + ``<root>/<masks>/<mask_pattern>``.

Options (keyword arguments or keys of the source's entry in a recipe YAML):
    images: image folder under root (default "images"); image_glob: default "*.png" (also a list).
    masks: mask folder under root (default "masks"); mask_pattern: mask file name from the image stem,
        default "{stem}.png" (e.g. "{stem}_anno.bmp").
    label_map: {mask value: category} (value 0 is background unless mapped); a value mapped to null
        marks ignored pixels. Or binary: category -> every non-zero pixel is that category.
    instances: "none" (semantic masks, default), "components" (4-connected components per category)
        or "ids" (binary mode only: mask values are instance ids).
    mpp (required), region (organ, default "any"), patient_regex (regex on the stem; group 1 or the match
        is the patient id; default: the stem), split (fixed official split, default none),
    exhaustive: true (all label-map categories, default), false, or a list of categories.
Source classes are the label map's category names (identity mapping, ``sources/folder.yaml``).
"""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, connected_components, read_mask, read_rgb, relabel

INSTANCE_MODES = ("none", "components", "connected_components", "ids")


@register_source
class Folder(SourceAdapter):
    name = "folder"
    classes = ()  # dynamic: the label map's categories
    default_mpp = 0.5
    licence = "the user's"

    def __init__(self, root, **options):
        super().__init__(root, **options)
        o = self.options
        self.images_dir = self.root / str(o.get("images", "images"))
        self.masks_dir = self.root / str(o.get("masks", "masks"))
        globs = o.get("image_glob", "*.png")
        self.globs = [globs] if isinstance(globs, str) else list(globs)
        self.mask_pattern = str(o.get("mask_pattern", "{stem}.png"))
        self.binary = o.get("binary")
        lm = o.get("label_map")
        if (self.binary is None) == (lm is None):
            raise ValueError(f"folder source '{root}': give exactly one of `label_map` (mask value -> category) or "
                             f"`binary: <category>`")
        if lm is not None:
            try:
                self.label_map = {int(k): (None if v is None else str(v)) for k, v in dict(lm).items()}
            except (TypeError, ValueError):
                raise ValueError(f"folder source '{root}': label_map keys must be integer mask values, got "
                                 f"{list(dict(lm))}") from None
        else:
            self.label_map = {}
        self.instances = str(o.get("instances", "none"))
        if self.instances not in INSTANCE_MODES:
            raise ValueError(f"folder source '{root}': unknown instances mode '{self.instances}'. "
                             f"Available: {list(INSTANCE_MODES)}")
        if self.instances == "ids" and self.binary is None:
            raise ValueError("instances: ids needs `binary: <category>` (a label map's values are classes)")
        self.patient_re = re.compile(o["patient_regex"]) if o.get("patient_regex") else None

    @property
    def source_classes(self) -> list[str]:
        if self.binary is not None:
            return [str(self.binary)]
        return sorted({v for v in self.label_map.values() if v is not None})

    def list_items(self) -> list[str]:
        if not self.images_dir.is_dir():
            raise SourceFormatError(self.images_dir, "image folder does not exist (option `images`)")
        items = sorted({str(p.relative_to(self.root)) for g in self.globs for p in self.images_dir.glob(g)
                        if p.is_file()})
        if not items:
            raise SourceFormatError(self.images_dir, f"no images matching {self.globs}")
        return items

    def _patient(self, stem: str) -> str:
        if self.patient_re is None:
            return stem
        m = self.patient_re.search(stem)
        if not m:
            return stem
        return m.group(1) if m.groups() else m.group(0)

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        stem = img_path.stem
        mask_path = self.masks_dir / self.mask_pattern.format(stem=stem)
        if not mask_path.is_file():
            raise SourceFormatError(img_path, f"no mask {mask_path} (option `mask_pattern` "
                                              f"'{self.mask_pattern}')")
        image = read_rgb(img_path)
        mask = read_mask(mask_path)
        if mask.ndim == 3:
            if not (mask == mask[..., :1]).all():
                raise SourceFormatError(mask_path, "mask is a colour image; expected one integer value per pixel")
            mask = mask[..., 0]
        check_size(mask, image, mask_path)
        masks, has = {}, {}
        ignore = None
        if self.binary is not None:
            cat = str(self.binary)
            if self.instances == "ids":
                m, _ = relabel(mask.astype(np.int64))
            elif self.instances == "none":
                m = (mask > 0).astype(np.int32)
            else:
                m = connected_components(mask > 0)
            if m.any():
                masks[cat] = m
            has[cat] = self.instances != "none"
        else:
            values = set(np.unique(mask).astype(int).tolist())
            unknown = sorted(values - set(self.label_map) - {0})
            if unknown:
                raise SourceFormatError(mask_path, f"unknown class code(s) {unknown}; the label map knows "
                                                   f"{dict(sorted(self.label_map.items()))} (0 = background)")
            for v in sorted(values):
                if v not in self.label_map:
                    continue
                cat = self.label_map[v]
                sel = mask == v
                if cat is None:
                    ignore = sel if ignore is None else ignore | sel
                    continue
                if cat in masks:  # several values -> one category
                    sel = sel | (masks[cat] > 0)
                masks[cat] = connected_components(sel) if self.instances != "none" else sel.astype(np.int32)
                has[cat] = self.instances != "none"
        split = self.options.get("split")
        yield SourceSample(sample_id=stem, patient_id=self._patient(stem), image=image, masks=masks,
                           has_instances=has, mpp=float(self.options.get("mpp") or self.default_mpp),
                           organ=str(self.options.get("region", "")), split=split, ignore=ignore,
                           meta={"mask_file": str(mask_path)})
