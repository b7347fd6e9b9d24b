"""MoNuSAC 2020 (Verma et al., IEEE TMI 2021): H&E sub-images of 71 TCGA patients (breast, kidney, lung, prostate),
40x, every epithelial / lymphocyte / neutrophil / macrophage nucleus outlined; the test set also marks ambiguous regions.

Layout read (training and testing downloads), one folder per patient::

    TCGA-55-1594-01Z-00-DX1/TCGA-55-1594-01Z-00-DX1_001.svs   (and/or .tif: the same image)
    TCGA-55-1594-01Z-00-DX1/TCGA-55-1594-01Z-00-DX1_001.xml

XML (Aperio ImageScope layout): ``<Annotations><Annotation><Attributes><Attribute Name="Epithelial"/></Attributes>
<Regions><Region><Vertices><Vertex X= Y=/>...``; one ``<Annotation>`` per class, one ``<Region>`` per nucleus.
``Ambiguous`` regions become the ``ignore`` mask. Split: "test" when a folder of the path names the test download
("MoNuSAC Testing Data and Annotations"), else "train" (the training download, "MoNuSAC_images_and_annotations"). Patient: the TCGA barcode (first 12 characters).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..aperio_xml import read_annotations, region_polygon
from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import read_rgb, to_rgb

CLASS_NAMES = {"epithelial": "epithelial", "lymphocyte": "lymphocyte", "neutrophil": "neutrophil",
               "macrophage": "macrophage"}
IGNORE_NAMES = ("ambiguous",)


def parse_monusac_xml(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """``(class name, float [N, 2] x/y polygon)`` for every Region, in file order."""
    root = read_annotations(path)
    out = []
    for ann in root.iter("Annotation"):
        names = [a.attrib.get("Name", "") for a in ann.iter("Attribute")]
        if not names or not names[0]:
            raise SourceFormatError(path, f"<Annotation Id={ann.attrib.get('Id', '?')}> has no <Attribute Name=...> "
                                          f"naming its class")
        cls = names[0].strip().lower()
        if cls not in CLASS_NAMES and cls not in IGNORE_NAMES:
            raise SourceFormatError(path, f"unknown class '{names[0]}'; valid: Epithelial, Lymphocyte, Neutrophil, "
                                          f"Macrophage, Ambiguous")
        for region in ann.iter("Region"):
            poly = region_polygon(path, region)
            if poly is not None:
                out.append((cls, poly))
    return out


def read_slide_image(path: Path) -> np.ndarray:
    """Level 0 of a small .svs / .tif as ``uint8 [H, W, 3]``."""
    if path.suffix.lower() != ".svs":
        return read_rgb(path)
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tf:
            arr = tf.series[0].levels[0].asarray()
    except Exception as e:
        raise SourceFormatError(path, f"cannot decode .svs ({type(e).__name__}: {e}); the file is truncated or "
                                      f"corrupt") from None
    return to_rgb(arr, path)


@register_source
class MoNuSAC(SourceAdapter):
    name = "monusac"
    classes = tuple(CLASS_NAMES.values())
    default_mpp = 0.25
    licence = "CC BY-NC-SA 4.0"
    citation = ("Verma et al., MoNuSAC2020: A Multi-organ Nuclei Segmentation and Classification Challenge, "
                "IEEE TMI 2021")

    def list_items(self) -> list[str]:
        items = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.xml") if p.is_file())
        if not items:
            raise SourceFormatError(self.root, "no .xml annotations found; expected <patient>/<image>.xml beside "
                                               "<image>.svs or <image>.tif")
        return items

    def load_item(self, item: str) -> Iterator[SourceSample]:
        from skimage.draw import polygon as draw_polygon

        xml = self.root / item
        img_path = next((xml.with_suffix(e) for e in (".tif", ".tiff", ".png", ".svs")
                         if xml.with_suffix(e).is_file()), None)
        if img_path is None:
            raise SourceFormatError(xml, "no image beside the annotation (expected the same name with .svs or .tif)")
        regions = parse_monusac_xml(xml)
        image = read_slide_image(img_path)
        shape = image.shape[:2]
        maps = {c: np.zeros(shape, np.int32) for c in self.classes}
        counts = dict.fromkeys(self.classes, 0)
        ignore = np.zeros(shape, bool)
        for cls, pts in regions:
            rr, cc = draw_polygon(pts[:, 1], pts[:, 0], shape=shape)
            if rr.size == 0:
                continue
            if cls in IGNORE_NAMES:
                ignore[rr, cc] = True
                continue
            name = CLASS_NAMES[cls]
            counts[name] += 1
            maps[name][rr, cc] = counts[name]
        masks = {c: m for c, m in maps.items() if m.any()}
        parts = [p.lower() for p in Path(item).parts[:-1]]
        split = "test" if any("test" in p for p in parts) else "train"
        stem = xml.stem
        yield SourceSample(
            sample_id=stem, patient_id=stem[:12] if stem.startswith("TCGA-") else xml.parent.name,
            image=image, masks=masks, has_instances={c: True for c in self.classes},
            mpp=float(self.options.get("mpp") or self.default_mpp), organ=self.options.get("organ", ""),
            split=self.options.get("split", split), ignore=ignore if ignore.any() else None,
            meta={"annotation_file": str(xml), "image_file": str(img_path)})
