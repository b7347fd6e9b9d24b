"""CRAG (Graham et al., MILD-Net, MedIA 2019): 213 colorectal adenocarcinoma H&E images (1512x1516, 20x), every
gland outlined with its own id.

Layout read (the official download)::

    train/Images/train_1.png   train/Annotation/train_1.png   (instance ids, 8/16-bit grey)
    valid/Images/test_1.png    valid/Annotation/test_1.png

Split: ``train`` -> "train"; ``valid`` is the held-out set the MILD-Net paper reports on -> "test" (option
``valid_split`` changes it, e.g. to "validation").
"""
from __future__ import annotations

from typing import Iterator

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, read_mask, read_rgb, relabel
from .cpm17 import IMAGE_EXTS, find_dirs


@register_source
class CRAG(SourceAdapter):
    name = "crag"
    classes = ("gland",)
    default_mpp = 0.55
    licence = "research use; cite Graham et al. 2019"
    citation = "Graham et al., MILD-Net: Minimal information loss dilated network for gland instance segmentation " \
               "in colon histology images, MedIA 2019"

    def list_items(self) -> list[str]:
        items = [str(p.relative_to(self.root)) for d in find_dirs(self.root, "Images") for p in d.iterdir()
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
        if not items:
            raise SourceFormatError(self.root, "no images found; expected train/Images/*.png + train/Annotation/*.png "
                                               "and valid/Images + valid/Annotation")
        return sorted(items)

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        ann_dir = next((d for d in img_path.parent.parent.iterdir() if d.is_dir() and d.name.lower() in
                        ("annotation", "annotations")), None)
        ann = next((p for p in ann_dir.glob(f"{img_path.stem}.*")), None) if ann_dir else None
        if ann is None:
            raise SourceFormatError(img_path, f"no annotation: expected {img_path.parent.parent / 'Annotation' / img_path.name}")
        image = read_rgb(img_path)
        lab = read_mask(ann)
        if lab.ndim != 2:
            raise SourceFormatError(ann, f"annotation must be a grey instance-id image, got shape {lab.shape}")
        check_size(lab, image, ann)
        inst = relabel(lab.astype("int64"))[0]
        folder = img_path.parent.parent.name.lower()
        split = {"train": "train", "training": "train"}.get(folder)
        if folder in ("valid", "validation", "test"):
            split = self.options.get("valid_split", "test")
        sid = f"{folder}_{img_path.stem}" if not img_path.stem.lower().startswith(folder) else img_path.stem
        yield SourceSample(
            sample_id=sid, patient_id=sid, image=image, masks={"gland": inst} if inst.any() else {},
            has_instances={"gland": True}, mpp=float(self.options.get("mpp") or self.default_mpp), organ="colon",
            split=self.options.get("split", split), meta={"annotation_file": str(ann)})
