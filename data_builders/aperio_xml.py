"""Aperio ImageScope XML annotations, the polygon format MoNuSeg and MoNuSAC ship.

Layout: ``<Annotations MicronsPerPixel=...><Annotation Id=...><Attributes><Attribute Name=.../>
</Attributes><Regions><Region Id=...><Vertices><Vertex X=... Y=.../>...`` with vertex coordinates
in level-0 pixels (x right, y down).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .base import SourceFormatError


def read_annotations(path: str | Path) -> ET.Element:
    """The ``<Annotations>`` root of an ImageScope file; :class:`SourceFormatError` if it is not one."""
    try:
        root = ET.parse(str(path)).getroot()
    except ET.ParseError as e:
        raise SourceFormatError(path, f"malformed XML ({e}); expected an Aperio ImageScope <Annotations> file") from None
    if root.tag != "Annotations":
        raise SourceFormatError(path, f"root element is <{root.tag}>, expected <Annotations> (Aperio ImageScope XML)")
    return root


def region_polygon(path: str | Path, region: ET.Element) -> np.ndarray | None:
    """A ``<Region>``'s vertices as ``float64 [N, 2]`` (x, y), or ``None`` below three vertices."""
    pts = []
    for v in region.iter("Vertex"):
        try:
            pts.append((float(v.attrib["X"]), float(v.attrib["Y"])))
        except (KeyError, ValueError):
            raise SourceFormatError(path, f"Region {region.attrib.get('Id', '?')}: a <Vertex> lacks numeric "
                                          f"X/Y attributes ({v.attrib})") from None
    return np.asarray(pts, np.float64) if len(pts) >= 3 else None


def microns_per_pixel(root: ET.Element) -> float | None:
    """The header's ``MicronsPerPixel`` when it is a positive number, else ``None``."""
    try:
        mpp = float(root.attrib.get("MicronsPerPixel") or "nan")
    except ValueError:
        return None
    return mpp if mpp > 0 else None
