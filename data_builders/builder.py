"""The PathSeg builder: sources (adapters) -> ontology categories -> tiles -> splits -> corpus on disk.

Pipeline, per source and per item (file) of the source, streamed (one item decoded at a time per process):

1. the adapter decodes the item into :class:`~data_builders.base.SourceSample` objects;
2. source classes are mapped to categories (``configs/ontology/sources/<source>.yaml``; classes mapped to null
   become ignored pixels), specialised to the image's organ where the ontology has an organ variant, and, with
   ``emit_ancestors``, every ancestor category gets the union of its descendants' masks;
3. optional resampling to ``mpp``; tiling to ``tile`` with ``overlap``; per tile: labels present, true
   negatives (from the source's exhaustive list), lossless PNGs; empty tiles dropped;
4. rows go to per-item parquet shards in the staging folder ``OUT/.tmp-<key>/`` (an item's shards appear
   atomically with a ``.json`` marker, so an interrupted build resumes where it stopped);
5. when every source is done: patient-grouped splits, the two ``DatasetDict`` folders (``images``, ``triples``),
   the report, ``ontology.yaml`` and ``manifest.json`` are written in staging and moved into ``OUT``.

See ``docs/PATHSEG.md`` for the schema.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .base import SourceFormatError, SourceSample, get_source
from .ontology import ANY_REGION, Ontology
from .splits import SPLITS, assign_groups, normalize_split

FORMAT = "pathseg-corpus"
FORMAT_VERSION = 1
CORPUS_ENTRIES = ("images", "triples", "report", "ontology.yaml", "manifest.json")
DEFAULTS: dict[str, Any] = dict(tile=1024, overlap=0, mpp=None, val_fraction=0.2, test_fraction=0.0, seed=0,
                                emit_ancestors=True, region_variants=True, drop_empty=True, min_tissue=0.05,
                                limit=None)
ROWS_PER_ROW_GROUP = 8  # image rows are ~1 MB: small row groups keep memory flat


class BuildError(RuntimeError):
    """The build cannot proceed (bad output folder, a source that yields nothing, bad options)."""


@dataclass
class SourceSpec:
    """One source of a build: ``name`` in the corpus, the ``adapter`` that reads it, its ``root`` and options."""

    name: str
    adapter: str
    root: str
    options: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, value: Any, base: Path | None = None) -> "SourceSpec":
        if isinstance(value, (str, os.PathLike)):
            value = {"root": str(value)}
        if not isinstance(value, dict) or "root" not in value:
            raise BuildError(f"source '{name}': expected a path or a mapping with `root`, got {value!r}")
        value = dict(value)
        root = Path(os.path.expanduser(str(value.pop("root"))))
        if base is not None and not root.is_absolute():
            root = base / root
        adapter = str(value.pop("adapter", name))
        return cls(name=name, adapter=adapter, root=str(root.resolve()), options=value)


# ---------------------------------------------------------------------------------------------- per-sample work
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


def sample_rows(sample: SourceSample, ctx: _Context, onto: Ontology, item: str) -> Iterator[tuple[dict, list]]:
    """``(image_row, triple_rows)`` for every kept tile of one sample."""
    from .masks import encode_png
    from .tiling import resample_image, resample_labels, tile_boxes, tissue_fraction

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
    image = sample.image
    h0, w0 = image.shape[:2]
    mpp = float(sample.mpp)
    scale = 1.0
    if o["mpp"]:
        scale = mpp / float(o["mpp"])
        if abs(scale - 1.0) > 1e-3:
            size = (max(1, int(round(h0 * scale))), max(1, int(round(w0 * scale))))
            image = resample_image(image, size)
            cats = {c: (resample_labels(m, size), hi, lb) for c, (m, hi, lb) in cats.items()}
            ignore = None if ignore is None else resample_labels(ignore, size)
            mpp = float(o["mpp"])
        else:
            scale = 1.0
    H, W = image.shape[:2]
    chains = {}
    for c in cats:  # the category, its ancestors, and (with region_variants) the ancestors' organ variants
        chain = [c, *onto.ancestors(c)]
        if o["region_variants"]:
            chain += [v for a in chain[1:] for v in [onto.variant(a, region)] if v is not None and v not in chain]
        chains[c] = chain
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
                "image_id": image_id, "label": c, "region": region, "structure": cat.structure,
                "object_type": cat.object_type, "source": ctx.source, "source_label": "+".join(lbs),
                "mask": png, "ignore": ign_png, "instance_count": n, "split": split,
                "patient_id": str(sample.patient_id), "mpp": mpp, "pixels": int((m > 0).sum())})
        row = {
            "image_id": image_id, "image": encode_png(np.ascontiguousarray(tile_img)), "source": ctx.source,
            "sample_id": str(sample.sample_id), "patient_id": str(sample.patient_id), "split": split, "mpp": mpp,
            "tile_box": box, "height": int(y1 - y0), "width": int(x1 - x0), "region": region,
            "labels": sorted(emit if o["emit_ancestors"] else fine), "negative_labels": negatives}
        yield row, triples


# ---------------------------------------------------------------------------------------------- staging shards
def _schemas():
    import pyarrow as pa

    images = pa.schema([("image_id", pa.string()), ("image", pa.binary()), ("source", pa.string()),
                        ("sample_id", pa.string()), ("patient_id", pa.string()), ("split", pa.string()),
                        ("mpp", pa.float32()), ("tile_box", pa.list_(pa.int32())), ("height", pa.int32()),
                        ("width", pa.int32()), ("region", pa.string()), ("labels", pa.list_(pa.string())),
                        ("negative_labels", pa.list_(pa.string()))])
    triples = pa.schema([("image_id", pa.string()), ("label", pa.string()), ("region", pa.string()),
                         ("structure", pa.string()), ("object_type", pa.string()), ("source", pa.string()),
                         ("source_label", pa.string()), ("mask", pa.binary()), ("ignore", pa.binary()),
                         ("instance_count", pa.int32()), ("split", pa.string()), ("patient_id", pa.string()),
                         ("mpp", pa.float32()), ("pixels", pa.int64())])
    return images, triples


class _ShardWriter:
    """Rows -> one parquet file, a row group every ``ROWS_PER_ROW_GROUP`` rows (memory stays bounded)."""

    def __init__(self, path: Path, schema):
        self.path, self.schema = path, schema
        self.rows: list[dict] = []
        self.writer = None
        self.count = 0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= ROWS_PER_ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(str(self.path), self.schema, compression="none")
        self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
        self.rows = []

    def close(self) -> None:
        self.flush()
        if self.writer is None:  # no rows: still write an empty file with the schema
            import pyarrow.parquet as pq

            self.writer = pq.ParquetWriter(str(self.path), self.schema, compression="none")
        self.writer.close()


_WORKER: dict[str, Any] = {}


def _flat_memory_allocators() -> None:
    """Keep peak memory flat as the corpus grows: multi-MB PNG buffers are allocated and freed per tile, and
    arena allocators (glibc's dynamic mmap threshold, Arrow's mimalloc pool) keep the freed space, so the
    process grows with the number of tiles. Large blocks go straight to mmap (freed at once) and Arrow uses
    the system allocator. Process-wide, harmless for other users; Linux/glibc only, ignored elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD = 128 KiB, fixed
    except (OSError, AttributeError):
        pass
    try:
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())
    except Exception:  # noqa: BLE001  (pyarrow built without it)
        pass


def _worker_init(ctx: _Context) -> None:
    _flat_memory_allocators()
    _WORKER.clear()
    _WORKER["ctx"] = ctx
    _WORKER["onto"] = Ontology.load(ctx.ontology_path)
    _WORKER["adapter"] = get_source(ctx.adapter)(ctx.root, **ctx.adapter_options)


def _process_item(args: tuple[int, str]) -> dict:
    """Decode item ``idx``, write its shards atomically, return its stats (also saved as ``<idx>.json``)."""
    idx, item = args
    ctx: _Context = _WORKER["ctx"]
    onto: Ontology = _WORKER["onto"]
    adapter = _WORKER["adapter"]
    d = Path(ctx.staging) / "sources" / ctx.source / "items"
    d.mkdir(parents=True, exist_ok=True)
    stem = f"{idx:06d}"
    s_img, s_tri = _schemas()
    tmp_img, tmp_tri = d / f"{stem}.images.parquet.partial", d / f"{stem}.triples.parquet.partial"
    wi, wt = _ShardWriter(tmp_img, s_img), _ShardWriter(tmp_tri, s_tri)
    stats: dict[str, Any] = {"item": item, "samples": 0, "tiles": 0, "triples": 0, "patients": {},
                             "rejects": [], "bytes_in": 0}
    try:
        try:
            stats["bytes_in"] = (Path(ctx.root) / item).stat().st_size if (Path(ctx.root) / item).is_file() else 0
        except OSError:
            pass
        for sample in adapter.load_item(item):
            stats["samples"] += 1
            split = normalize_split(sample.split)
            stats["patients"].setdefault(str(sample.patient_id), split)
            for row, triples in sample_rows(sample, ctx, onto, item):
                wi.add(row)
                stats["tiles"] += 1
                for t in triples:
                    wt.add(t)
                    stats["triples"] += 1
    except SourceFormatError as e:
        for w in (wi, wt):
            w.rows = []
        stats = {**stats, "samples": 0, "tiles": 0, "triples": 0, "patients": {},
                 "rejects": [{"file": e.path, "source": ctx.source, "reason": e.reason}]}
        wi.rows, wt.rows = [], []
    finally:
        wi.close()
        wt.close()
    if stats["rejects"]:
        tmp_img.unlink(missing_ok=True)
        tmp_tri.unlink(missing_ok=True)
    else:
        os.replace(tmp_img, d / f"{stem}.images.parquet")
        os.replace(tmp_tri, d / f"{stem}.triples.parquet")
    _atomic_write(d / f"{stem}.json", json.dumps(stats))
    return stats


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{uuid.uuid4().hex[:8]}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- build
def _ontology_digest(onto: Ontology) -> str:
    return hashlib.sha256(json.dumps(onto.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


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


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BuildError(f"output '{out}' exists and is not a directory")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in CORPUS_ENTRIES and not p.name.startswith(".tmp-"))
        if other:
            raise BuildError(f"output folder '{out}' holds other content ({other[:5]}{' ...' if len(other) > 5 else ''}); "
                             f"refusing to write a corpus there. Choose an empty or new folder, or a previous "
                             f"PathSeg corpus to rebuild it.")
        if (out / "images").exists() and not (out / "manifest.json").is_file():
            raise BuildError(f"output folder '{out}' has an images/ folder but no manifest.json: not a PathSeg "
                             f"corpus; refusing to overwrite it")


def build(sources: dict[str, Any], out: str | Path, *, num_proc: int = 1, progress: bool = True,
          force: bool = False, ontology: str | Path | Ontology | None = None, base_dir: str | Path | None = None,
          **options) -> Path:
    """Build a PathSeg corpus into ``out`` and return its path.

    Args:
        sources: corpus source name -> root path, or a mapping ``{root, adapter?, **adapter options}``
            (``adapter`` defaults to the name; e.g. ``{"glas": {"adapter": "folder", "root": ..., "binary": "gland"}}``).
        out: the corpus folder: new, empty, or a previous corpus (rebuilt; unchanged inputs and options -> no-op
            unless ``force``). Anything else is refused.
        num_proc: worker processes over items (files) of a source.
        ontology: ``categories.yaml`` path / folder or an :class:`Ontology` (default: the repository's).
        base_dir: relative source roots are resolved against it (a recipe's folder).
        options: ``tile`` (1024), ``overlap`` (0), ``mpp`` (None: keep), ``val_fraction`` (0.2),
            ``test_fraction`` (0), ``seed`` (0), ``emit_ancestors`` (True), ``region_variants`` (True),
            ``drop_empty`` (True), ``min_tissue`` (0.05), ``limit`` (None: items per source).
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise BuildError(f"unknown build option(s) {unknown}. Available: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None or k == "mpp"}}
    if not sources:
        raise BuildError("no sources given (e.g. --source monuseg=/data/MoNuSegTrainingData)")
    if int(opts["tile"]) <= 0 or not 0 <= int(opts["overlap"]) < int(opts["tile"]):
        raise BuildError(f"need tile > 0 and 0 <= overlap < tile, got tile={opts['tile']} overlap={opts['overlap']}")
    onto = ontology if isinstance(ontology, Ontology) else Ontology.load(ontology)
    _flat_memory_allocators()
    base = Path(base_dir) if base_dir is not None else None
    specs = [SourceSpec.parse(n, v, base) for n, v in sources.items()]
    out = Path(out).resolve()
    _check_out(out)

    # adapters, mappings, items: refuse the build before writing anything if a source is unusable
    adapters, problems = {}, []
    for s in specs:
        try:
            adapters[s.name] = get_source(s.adapter)(s.root, **s.options)
        except (KeyError, FileNotFoundError, ValueError) as e:
            problems.append(f"source '{s.name}': {e.args[0] if e.args else e}")
    items: dict[str, list[str]] = {}
    for s in specs:
        if s.name not in adapters:
            continue
        try:
            _resolve_mapping(s, onto, adapters[s.name])
            items[s.name] = adapters[s.name].list_items()
            if not items[s.name]:
                problems.append(f"source '{s.name}': no items found under '{s.root}'")
        except SourceFormatError as e:
            problems.append(f"source '{s.name}': {e}")
        except BuildError as e:
            problems.append(str(e))
    if problems:
        raise BuildError("build refused:\n  " + "\n  ".join(problems))

    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "options": opts,
              "sources": [asdict(s) for s in specs], "ontology": _ontology_digest(onto)}
    key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and not force:
        try:
            old = json.loads(manifest_path.read_text())
        except ValueError:
            old = {}
        if old.get("config_key") == key and old.get("complete"):
            _log(progress, f"pathseg-build: '{out}' is up to date (same sources and options); nothing to do")
            return out
    staging = out / f".tmp-{key}"
    staging.mkdir(parents=True, exist_ok=True)
    ont_work = staging / "ontology-work.yaml"
    if not ont_work.is_file():
        onto.save(ont_work.with_suffix(".partial"))
        os.replace(ont_work.with_suffix(".partial"), ont_work)
    _atomic_write(staging / "config.json", json.dumps(config, indent=2, default=str))

    summaries = {}
    for s in specs:
        summaries[s.name] = _build_source(s, adapters[s.name], items[s.name], onto, opts, staging, str(ont_work),
                                          num_proc, progress)
    _finalize(specs, summaries, onto, opts, config, key, staging, out, progress)
    return out


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _build_source(spec: SourceSpec, adapter, items: list[str], onto: Ontology, opts: dict, staging: Path,
                  ont_work: str, num_proc: int, progress: bool) -> dict:
    """Process every item of one source into staging shards (resuming finished items); return its summary."""
    sdir = staging / "sources" / spec.name
    done = sdir / "done.json"
    if done.is_file():
        _log(progress, f"pathseg-build: {spec.name}: already built in staging, skipped (resume)")
        return json.loads(done.read_text())
    class_map, exhaustive, table = _resolve_mapping(spec, onto, adapter)
    if opts["limit"]:
        items = items[: int(opts["limit"])]
    ctx = _Context(source=spec.name, adapter=spec.adapter, root=spec.root, adapter_options=dict(spec.options),
                   class_map=class_map, exhaustive=exhaustive, mapping_source=table, ontology_path=ont_work,
                   options=opts, staging=str(staging))
    (sdir / "items").mkdir(parents=True, exist_ok=True)
    todo = [(i, it) for i, it in enumerate(items) if not (sdir / "items" / f"{i:06d}.json").is_file()]
    from tqdm.auto import tqdm

    t0 = time.time()
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"{spec.name}", unit="item",
               disable=not progress, file=sys.stderr)
    try:
        if num_proc > 1 and len(todo) > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(min(num_proc, len(todo)), initializer=_worker_init,
                                              initargs=(ctx,)) as pool:
                for _ in pool.imap_unordered(_process_item, todo, chunksize=1):
                    bar.update(1)
        else:
            _worker_init(ctx)
            _WORKER["adapter"] = adapter
            for t in todo:
                _process_item(t)
                bar.update(1)
    finally:
        bar.close()
        _WORKER.clear()
    summary = {"source": spec.name, "adapter": spec.adapter, "root": spec.root, "items": len(items),
               "exhaustive": exhaustive, "class_map": class_map, "mapping_table": table,
               "seconds": round(time.time() - t0, 2), "status": "done"}
    _atomic_write(done, json.dumps(summary, indent=2))
    return summary


def _item_stats(staging: Path, source: str) -> Iterator[tuple[Path, dict]]:
    d = staging / "sources" / source / "items"
    for j in sorted(d.glob("*.json")):
        yield j, json.loads(j.read_text())


def _features():
    import datasets as hf

    images = hf.Features({
        "image_id": hf.Value("string"), "image": hf.Image(), "source": hf.Value("string"),
        "sample_id": hf.Value("string"), "patient_id": hf.Value("string"), "split": hf.Value("string"),
        "mpp": hf.Value("float32"), "tile_box": hf.Sequence(hf.Value("int32")), "height": hf.Value("int32"),
        "width": hf.Value("int32"), "region": hf.Value("string"), "labels": hf.Sequence(hf.Value("string")),
        "negative_labels": hf.Sequence(hf.Value("string"))})
    triples = hf.Features({
        "image_id": hf.Value("string"), "label": hf.Value("string"), "region": hf.Value("string"),
        "structure": hf.Value("string"), "object_type": hf.Value("string"), "source": hf.Value("string"),
        "source_label": hf.Value("string"), "mask": hf.Image(), "ignore": hf.Image(),
        "instance_count": hf.Value("int32"), "split": hf.Value("string"), "patient_id": hf.Value("string"),
        "mpp": hf.Value("float32")})
    return images, triples


class _SplitWriter:
    """Rows of one split -> ``save_to_disk``-layout arrow shards (datasets' own ``ArrowWriter``), size-rotated."""

    def __init__(self, folder: Path, split: str, features, batch: int, max_bytes: int = 500 << 20):
        self.folder, self.split, self.features, self.batch, self.max_bytes = folder, split, features, batch, max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards: list[Path] = []
        self.writer = None
        self.bytes = 0
        self.rows = 0
        self.digest = hashlib.sha256()

    def write(self, row: dict, nbytes: int, key: str) -> None:
        from datasets.arrow_writer import ArrowWriter

        if self.writer is None or self.bytes >= self.max_bytes:
            self._close_shard()
            p = self.folder / f"part-{len(self.shards):05d}.arrow"
            self.shards.append(p)
            self.writer = ArrowWriter(features=self.features, path=str(p), writer_batch_size=self.batch)
            self.bytes = 0
        self.writer.write(row)
        self.bytes += nbytes
        self.rows += 1
        self.digest.update(key.encode())

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()
            self.writer = None

    def close(self) -> None:
        from datasets import DatasetInfo

        if self.writer is None and not self.shards:  # an empty split still gets a valid (empty) shard
            from datasets.arrow_writer import ArrowWriter

            p = self.folder / "part-00000.arrow"
            self.shards.append(p)
            self.writer = ArrowWriter(features=self.features, path=str(p))
        self._close_shard()
        n = len(self.shards)
        files = []
        for i, p in enumerate(self.shards):
            name = f"data-{i:05d}-of-{n:05d}.arrow"
            os.replace(p, self.folder / name)
            files.append({"filename": name})
        state = {"_data_files": files, "_fingerprint": self.digest.hexdigest()[:16], "_format_columns": None,
                 "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": self.split}
        (self.folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        info = asdict(DatasetInfo(features=self.features))
        (self.folder / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))


def _finalize(specs, summaries, onto: Ontology, opts, config, key, staging: Path, out: Path, progress: bool):
    import pyarrow.parquet as pq

    from .report import write_report

    final = staging / "final"
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir(parents=True)
    rejects: list[dict] = []
    split_of: dict[str, dict[str, str]] = {}
    source_status: dict[str, dict] = {}
    for s in specs:
        grouped, n_items, n_ok = set(), 0, 0
        for _, st in _item_stats(staging, s.name):
            n_items += 1
            rejects.extend(st["rejects"])
            n_ok += not st["rejects"]
            grouped.update(p for p, sp in st["patients"].items() if sp is None)
        split_of[s.name] = assign_groups(grouped, val_fraction=float(opts["val_fraction"]),
                                         test_fraction=float(opts["test_fraction"]), seed=int(opts["seed"]))
        source_status[s.name] = {**summaries[s.name], "items_ok": n_ok, "items_rejected": n_items - n_ok,
                                 "grouped_patients": len(grouped)}
    f_img, f_tri = _features()
    writers: dict[tuple[str, str], _SplitWriter] = {}
    counts: dict[tuple[str, str, str], dict] = {}
    tiles: dict[tuple[str, str], dict] = {}
    seen: set[str] = set()
    dropped_ids: set[str] = set()
    for s in specs:
        for j, st in _item_stats(staging, s.name):
            if st["rejects"]:
                continue
            stem = j.name[: -len(".json")]
            pimg, ptri = j.with_name(f"{stem}.images.parquet"), j.with_name(f"{stem}.triples.parquet")
            groups = split_of[s.name]
            for batch in pq.ParquetFile(str(pimg)).iter_batches(batch_size=ROWS_PER_ROW_GROUP):
                for r in batch.to_pylist():
                    if r["image_id"] in seen:
                        dropped_ids.add(r["image_id"])
                        rejects.append({"file": st["item"], "source": s.name,
                                        "reason": f"duplicate image_id '{r['image_id']}' (sample_id not unique)"})
                        continue
                    seen.add(r["image_id"])
                    sp = r["split"] or groups.get(r["patient_id"], "train")
                    r["split"] = sp
                    w = writers.get(("images", sp)) or writers.setdefault(
                        ("images", sp), _SplitWriter(final / "images" / sp, sp, f_img, batch=8))
                    nb = len(r["image"])
                    r["image"] = {"bytes": r["image"], "path": None}
                    w.write(r, nb, r["image_id"])
                    t = tiles.setdefault((s.name, sp), {"tiles": 0, "pixels": 0})
                    t["tiles"] += 1
                    t["pixels"] += r["height"] * r["width"]
                    for neg in r["negative_labels"]:
                        c = counts.setdefault((s.name, neg, sp), {"triples": 0, "pixels": 0, "negatives": 0})
                        c["negatives"] += 1
            for batch in pq.ParquetFile(str(ptri)).iter_batches(batch_size=32):
                for r in batch.to_pylist():
                    if r["image_id"] in dropped_ids:
                        continue
                    sp = r["split"] or groups.get(r["patient_id"], "train")
                    r["split"] = sp
                    pixels = r.pop("pixels")
                    w = writers.get(("triples", sp)) or writers.setdefault(
                        ("triples", sp), _SplitWriter(final / "triples" / sp, sp, f_tri, batch=32))
                    nb = len(r["mask"]) + len(r["ignore"] or b"")
                    r["mask"] = {"bytes": r["mask"], "path": None}
                    r["ignore"] = None if r["ignore"] is None else {"bytes": r["ignore"], "path": None}
                    w.write(r, nb, r["image_id"] + "|" + r["label"])
                    c = counts.setdefault((s.name, r["label"], sp), {"triples": 0, "pixels": 0, "negatives": 0})
                    c["triples"] += 1
                    c["pixels"] += pixels
    splits = [sp for sp in SPLITS if ("images", sp) in writers]
    if not splits:
        reasons = "; ".join(f"{r['file']}: {r['reason']}" for r in rejects[:5])
        raise BuildError(f"no tiles were produced (every item rejected or empty). First rejects: {reasons or 'none'}")
    for sp in splits:  # every split present in images gets a (possibly empty) triples split too
        if ("triples", sp) not in writers:
            writers[("triples", sp)] = _SplitWriter(final / "triples" / sp, sp, f_tri, batch=64)
    for w in writers.values():
        w.close()
    for kind in ("images", "triples"):
        (final / kind / "dataset_dict.json").write_text(json.dumps({"splits": splits}))
    onto.save(final / "ontology.yaml", sources=sorted({sm["mapping_table"] for sm in summaries.values()}))
    split_counts = {sp: {"images": writers[("images", sp)].rows, "triples": writers[("triples", sp)].rows}
                    for sp in splits}
    write_report(final / "report", counts=counts, tiles=tiles, rejects=rejects, splits=split_counts,
                 sources=source_status)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "complete": True, "config_key": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "options": opts,
        "sources": {s.name: {**asdict(s), **source_status[s.name]} for s in specs},
        "splits": split_counts, "categories": len(onto.categories), "rejects": len(rejects),
        "versions": _versions(),
    }
    _atomic_write(final / "manifest.json", json.dumps(manifest, indent=2, default=str))
    _swap_in(final, out, staging)
    for p in out.iterdir():  # stale staging folders of other configurations
        if p.name.startswith(".tmp-"):
            shutil.rmtree(p, ignore_errors=True)
    _log(progress, f"pathseg-build: wrote {out}: " + ", ".join(
        f"{sp} {c['images']} images / {c['triples']} triples" for sp, c in split_counts.items())
         + f"; {len(rejects)} rejected file(s)")


def _swap_in(final: Path, out: Path, staging: Path) -> None:
    """Replace the corpus entries of ``out`` by those of ``final``; manifest.json goes last (it marks completion)."""
    old = staging / "old"
    old.mkdir(exist_ok=True)
    if (out / "manifest.json").exists():
        os.replace(out / "manifest.json", old / "manifest.json")
    for name in CORPUS_ENTRIES:
        if name == "manifest.json":
            continue
        if (out / name).exists():
            os.replace(out / name, old / name)
        os.replace(final / name, out / name)
    os.replace(final / "manifest.json", out / "manifest.json")


def _versions() -> dict:
    import platform

    v = {"python": platform.python_version()}
    for mod in ("datasets", "numpy", "pyarrow", "PIL", "scipy", "skimage", "tifffile"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001  (optional module)
            pass
    try:
        from importlib.metadata import version

        v["pathsegmentor"] = version("pathsegmentor")
    except Exception:  # noqa: BLE001
        pass
    return v


# ---------------------------------------------------------------------------------------------- recipes
def load_recipe(path: str | Path) -> tuple[dict, dict, Path]:
    """A dataset recipe YAML -> (sources, options, base_dir). Relative roots resolve against the recipe's folder."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise BuildError(f"recipe '{path}' not found")
    data = yaml.safe_load(path.read_text()) or {}
    sources = data.get("sources") or {}
    if not isinstance(sources, dict) or not sources:
        raise BuildError(f"recipe '{path}' has no `sources:` mapping")
    options = dict(data.get("options") or {})
    return sources, options, path.resolve().parent
