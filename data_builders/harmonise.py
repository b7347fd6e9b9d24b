"""The harmonising step: one source sample -> corpus rows.

A source's mapping table gives its class map and exhaustive categories (:func:`_resolve_mapping`); per sample,
source classes become categories (classes mapped to null become ignored pixels), specialised to the image's organ
where the ontology has an organ variant, with every ancestor category given the union of its descendants' masks;
then optional resampling to ``mpp``, tiling, labels present and true negatives per tile, lossless PNGs, empty
tiles dropped (:func:`sample_rows`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .base import SourceFormatError, SourceSample
from pathsegmentor.ontology import ANY_REGION, Ontology
from .recipe import BuildError, SourceSpec
from .splits import normalize_split


@dataclass
class _Context:
    """Everything a worker needs to turn samples into rows (picklable)."""

    source: str
    adapter: str
    root: str
    adapter_options: dict
    class_map: dict            # source class -> category (None: ignored pixels)
    exhaustive: list
    mapping_source: str        # name of the ontology mapping table (organ_map, default region)
    ontology_path: str
    options: dict
    staging: str


def _category_masks(sample: SourceSample, ctx: _Context, onto: Ontology, item: str):
    """Source classes -> ``{category: (int32 map, has_instances, [source labels])}`` and the ignore mask."""
    img = sample.image
    if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8):
        raise SourceFormatError(item, f"sample '{sample.sample_id}': image must be uint8 [H, W, 3], got "
                                      f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}")
    h, w = img.shape[:2]
    ignore = None if sample.ignore is None else np.asarray(sample.ignore, bool)
    if ignore is not None and ignore.shape != (h, w):
        raise SourceFormatError(item, f"sample '{sample.sample_id}': ignore mask {ignore.shape} != image {(h, w)}")
    cats: dict[str, tuple[np.ndarray, bool, list[str]]] = {}
    for cls in sorted(sample.masks):
        m = np.asarray(sample.masks[cls])
        if m.shape != (h, w):
            raise SourceFormatError(item, f"sample '{sample.sample_id}': mask of class '{cls}' is "
                                          f"{m.shape[1]}x{m.shape[0]} but the image is {w}x{h} (WxH)")
        if cls not in ctx.class_map:
            raise SourceFormatError(item, f"sample '{sample.sample_id}': unknown source class '{cls}'; the mapping "
                                          f"table knows {sorted(ctx.class_map)}")
        cat = ctx.class_map[cls]
        if cat is None:
            sel = m > 0
            ignore = sel if ignore is None else (ignore | sel)
            continue
        has = bool(sample.has_instances.get(cls, False))
        m = m.astype(np.int32) if has else (m > 0).astype(np.int32)
        if cat in cats:
            cats[cat] = _merge(cats[cat], (m, has, [cls]))
        else:
            cats[cat] = (m, has, [cls])
    return cats, ignore


def _merge(a, b):
    ma, ha, la = a
    mb, hb, lb = b
    if ha and hb:
        k = int(ma.max(initial=0))
        out = np.where(mb > 0, mb + k, ma).astype(np.int32)
    else:
        out = ((ma > 0) | (mb > 0)).astype(np.int32)
    return out, ha and hb, sorted(set(la) | set(lb))


def _relabel(m: np.ndarray) -> tuple[np.ndarray, int]:
    ids, inv = np.unique(m, return_inverse=True)
    inv = inv.reshape(m.shape)
    if ids[0] == 0:
        return inv.astype(np.int32), int(ids.size - 1)
    return (inv + 1).astype(np.int32), int(ids.size)


def _resampled(sample: SourceSample, cats: dict, ignore, target_mpp) -> tuple[np.ndarray, dict, object, float, float]:
    """``(image, cats, ignore, mpp, scale)`` of a sample resampled to ``target_mpp`` (unchanged, scale 1, when
    ``target_mpp`` is None or within 0.1% of the sample's)."""
    from .tiling import resample_image, resample_labels

    image = sample.image
    h0, w0 = image.shape[:2]
    mpp = float(sample.mpp)
    scale = 1.0
    if target_mpp:
        scale = mpp / float(target_mpp)
        if abs(scale - 1.0) > 1e-3:
            size = (max(1, int(round(h0 * scale))), max(1, int(round(w0 * scale))))
            image = resample_image(image, size)
            cats = {c: (resample_labels(m, size), hi, lb) for c, (m, hi, lb) in cats.items()}
            ignore = None if ignore is None else resample_labels(ignore, size)
            mpp = float(target_mpp)
        else:
            scale = 1.0
    return image, cats, ignore, mpp, scale


def _chains(cats: dict, onto: Ontology, region: str, variants: bool) -> dict[str, list[str]]:
    """Per category: the category, its ancestors, and (with ``variants``) the ancestors' organ variants."""
    chains = {}
    for c in cats:
        chain = [c, *onto.ancestors(c)]
        if variants:
            chain += [v for a in chain[1:] for v in [onto.variant(a, region)] if v is not None and v not in chain]
        chains[c] = chain
    return chains


def _triple_rows(emit: dict, onto: Ontology, common: dict) -> list[dict]:
    """One triple row per emitted category of a tile (instance maps relabelled 1..n, else binary PNGs);
    ``common`` holds the tile's shared fields (image_id, region, source, ignore, split, patient_id, mpp)."""
    from .masks import encode_png

    triples = []
    for c in sorted(emit):
        m, has, lbs = emit[c]
        cat = onto.categories[c]
        if has:
            m, n = _relabel(m)
            png = encode_png(m.astype(np.uint16))
        else:
            n = -1
            png = encode_png((m > 0).astype(np.uint8))
        triples.append({
            "image_id": common["image_id"], "label": c, "region": common["region"], "structure": cat.structure,
            "object_type": cat.object_type, "source": common["source"], "source_label": "+".join(lbs),
            "mask": png, "ignore": common["ignore"], "instance_count": n, "split": common["split"],
            "patient_id": common["patient_id"], "mpp": common["mpp"], "pixels": int((m > 0).sum())})
    return triples


def sample_rows(sample: SourceSample, ctx: _Context, onto: Ontology, item: str) -> Iterator[tuple[dict, list]]:
    """``(image_row, triple_rows)`` for every kept tile of one sample."""
    from .masks import encode_png
    from .tiling import tile_boxes, tissue_fraction

    o = ctx.options
    cats, ignore = _category_masks(sample, ctx, onto, item)
    region = onto.region(sample.organ, ctx.mapping_source) if sample.organ or ctx.mapping_source else ANY_REGION
    if o["region_variants"]:
        spec: dict[str, tuple] = {}
        for c, v in cats.items():
            s = onto.specialize(c, region)
            spec[s] = _merge(spec[s], v) if s in spec else v
        cats = spec
    exhaustive = sample.exhaustive if sample.exhaustive is not None else ctx.exhaustive
    exhaustive = [onto.resolve(e) for e in exhaustive]
    h0, w0 = sample.image.shape[:2]
    image, cats, ignore, mpp, scale = _resampled(sample, cats, ignore, o["mpp"])
    H, W = image.shape[:2]
    chains = _chains(cats, onto, region, o["region_variants"])
    split = normalize_split(sample.split)
    for (x0, y0, x1, y1) in tile_boxes(H, W, int(o["tile"]), int(o["overlap"])):
        fine: dict[str, tuple[np.ndarray, bool, list[str]]] = {}
        for c, (m, has, lbs) in cats.items():
            t = m[y0:y1, x0:x1]
            if t.any():
                fine[c] = (t, has, lbs)
        present = set()
        for c in fine:
            present.update(chains[c])
        negatives = onto.negatives(present, exhaustive, region) if exhaustive else []
        tile_img = image[y0:y1, x0:x1]
        if not fine and o["drop_empty"]:
            if not negatives or tissue_fraction(tile_img) < float(o["min_tissue"]):
                continue
        emit: dict[str, tuple[np.ndarray, bool, list[str]]] = dict(fine)
        if o["emit_ancestors"]:
            for c in sorted(fine):
                for a in chains[c][1:]:
                    emit[a] = _merge(emit[a], fine[c]) if a in emit else fine[c]
        ign = None if ignore is None else ignore[y0:y1, x0:x1]
        ign_png = encode_png(ign.astype(np.uint8)) if ign is not None and ign.any() else None
        box = [int(round(x0 / scale)), int(round(y0 / scale)), min(w0, int(round(x1 / scale))),
               min(h0, int(round(y1 / scale)))]
        image_id = f"{ctx.source}/{sample.sample_id}/{box[0]}_{box[1]}"
        triples = _triple_rows(emit, onto, {"image_id": image_id, "region": region, "source": ctx.source,
                                            "ignore": ign_png, "split": split,
                                            "patient_id": str(sample.patient_id), "mpp": mpp})
        row = {
            "image_id": image_id, "image": encode_png(np.ascontiguousarray(tile_img)), "source": ctx.source,
            "sample_id": str(sample.sample_id), "patient_id": str(sample.patient_id), "split": split, "mpp": mpp,
            "tile_box": box, "height": int(y1 - y0), "width": int(x1 - x0), "region": region,
            "labels": sorted(emit if o["emit_ancestors"] else fine), "negative_labels": negatives}
        yield row, triples


def _resolve_mapping(spec: SourceSpec, onto: Ontology, adapter) -> tuple[dict, list, str]:
    """(class_map, exhaustive categories, mapping-table name) of a source."""
    table = spec.adapter
    m = onto.sources.get(table)
    if m is not None and m.identity:
        classes = list(getattr(adapter, "source_classes", []) or [])
        class_map = {}
        for c in classes:
            try:
                class_map[c] = onto.resolve(c)
            except KeyError as e:
                raise BuildError(f"source '{spec.name}': label map category: {e.args[0]}") from None
        ex = spec.options.get("exhaustive", True)
        if ex is True:
            exhaustive = sorted(set(class_map.values()))
        elif not ex:
            exhaustive = []
        else:
            exhaustive = [onto.resolve(e) for e in ex]
        return class_map, exhaustive, table
    if m is None:
        raise BuildError(f"source '{spec.name}': no mapping table configs/ontology/sources/{table}.yaml")
    class_map = dict(m.classes)
    for c in getattr(adapter, "classes", ()):
        if c not in class_map:
            raise BuildError(f"source '{spec.name}': adapter class '{c}' is not mapped in {m.path}")
    ex = spec.options.get("exhaustive")
    exhaustive = list(m.exhaustive) if ex in (None, True) else ([] if not ex else [onto.resolve(e) for e in ex])
    return class_map, exhaustive, table
