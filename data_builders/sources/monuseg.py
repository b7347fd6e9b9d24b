"""MoNuSeg 2018 (Kumar et al., IEEE TMI 2017): every nucleus of 1000x1000 H&E TCGA tiles, 40x.

Layouts read (``root`` may hold either, both, or their parent folders):

- official training download: ``MoNuSegTrainingData/Tissue_Images/<TCGA barcode>.tif`` with
  ``Annotations/<barcode>.xml`` (Aperio ImageScope XML: ``<Annotations><Annotation><Regions><Region>
  <Vertices><Vertex X= Y=/>``, one Region per nucleus); where an XML is missing, ``Color_masks/<barcode>.png``
  (one RGB colour per nucleus) is used instead. Training images get no split (the builder groups them by patient).
- official test download: ``MoNuSegTestData/<barcode>.tif`` + ``<barcode>.xml`` side by side -> split "test".

Polygons are rasterised in order (later regions overwrite earlier ones). Organ: the TCGA tissue-source-site
code (barcode characters 6-7, mapped in ``configs/ontology/sources/monuseg.yaml``); patient: first 12 characters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..aperio_xml import microns_per_pixel, read_annotations, region_polygon
from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, colour_instances, rasterize_polygons, read_mask, read_rgb

IMAGE_EXTS = (".tif", ".tiff")


def parse_aperio_xml(path: str | Path) -> tuple[list[np.ndarray], float | None]:
    """Polygons (``float [N, 2]`` x, y per Region) and the header's MicronsPerPixel (or None)."""
    root = read_annotations(path)
    polys = [p for p in (region_polygon(path, r) for r in root.iter("Region")) if p is not None]
    return polys, microns_per_pixel(root)


def tcga_patient(stem: str) -> str:
    return stem[:12]


def tcga_site(stem: str) -> str:
    """Tissue-source-site code: characters 6-7 of ``TCGA-XX-YYYY``."""
    return stem[5:7] if stem.startswith("TCGA-") else ""


@register_source
class MoNuSeg(SourceAdapter):
    name = "monuseg"
    classes = ("nucleus",)
    default_mpp = 0.25
    licence = "CC BY-NC-SA 4.0"
    citation = "Kumar et al., A Multi-Organ Nucleus Segmentation Challenge, IEEE TMI 2020; IEEE TMI 2017"

    def list_items(self) -> list[str]:
        items = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                       if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if not items:
            raise SourceFormatError(self.root, "no .tif images found; expected MoNuSegTrainingData/Tissue_Images/"
                                               "*.tif (+ Annotations/*.xml) or MoNuSegTestData/*.tif + *.xml")
        return items

    def _annotation(self, img: Path) -> tuple[str, Path] | None:
        side = img.with_suffix(".xml")
        if side.is_file():
            return "xml", side
        if img.parent.name == "Tissue_Images":
            xml = img.parent.parent / "Annotations" / f"{img.stem}.xml"
            if xml.is_file():
                return "xml", xml
            col = img.parent.parent / "Color_masks" / f"{img.stem}.png"
            if col.is_file():
                return "colour", col
        return None

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        ann = self._annotation(img_path)
        if ann is None:
            raise SourceFormatError(img_path, "no annotation: expected ../Annotations/<name>.xml, <name>.xml beside "
                                              "the image, or ../Color_masks/<name>.png")
        kind, ann_path = ann
        image = read_rgb(img_path)
        mpp = float(self.options.get("mpp") or self.default_mpp)
        if kind == "xml":
            polys, xml_mpp = parse_aperio_xml(ann_path)
            if xml_mpp and not self.options.get("mpp"):
                mpp = xml_mpp
            inst = rasterize_polygons(polys, image.shape[:2])
        else:
            rgb = read_mask(ann_path)
            if rgb.ndim != 3:
                raise SourceFormatError(ann_path, f"colour mask must be RGB, got shape {rgb.shape}")
            check_size(rgb, image, ann_path)
            inst = colour_instances(rgb)
        stem = img_path.stem
        test_layout = img_path.parent.name != "Tissue_Images" and ann_path.parent == img_path.parent
        split = self.options.get("split", "test" if test_layout and "test" in str(item).lower() else None)
        masks = {"nucleus": inst} if inst.any() else {}
        yield SourceSample(
            sample_id=stem, patient_id=tcga_patient(stem), image=image, masks=masks,
            has_instances={"nucleus": True}, mpp=mpp, organ=tcga_site(stem), split=split,
            meta={"annotation": kind, "annotation_file": str(ann_path)})
