"""The staging folder ``OUT/.tmp-<key>/``: every item (file) of a source decoded, in worker processes, into
per-item parquet shards (an item's shards appear atomically with a ``.json`` marker, so an interrupted build
resumes where it stopped); :func:`_build_source` runs all the items of one source.
"""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from .base import SourceFormatError, get_source
from pathsegmentor.ontology import Ontology
from .harmonise import _Context, _resolve_mapping, sample_rows
from .recipe import SourceSpec
from .splits import normalize_split

ROWS_PER_ROW_GROUP = 8  # image rows are ~1 MB: small row groups keep memory flat


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
