"""Staging shards -> the corpus in ``OUT``: patient-grouped splits, the two ``DatasetDict`` folders (``images``,
``triples``, written as ``save_to_disk`` arrow shards), the report, ``ontology.yaml`` and ``manifest.json``, built
in staging and moved into ``OUT`` with ``manifest.json`` last (:func:`_finalize`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from .corpus import CORPUS_ENTRIES, FORMAT, FORMAT_VERSION
from pathsegmentor.ontology import Ontology
from .recipe import BuildError
from .splits import SPLITS, assign_groups
from .staging import ROWS_PER_ROW_GROUP, _atomic_write, _item_stats, _log


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


def _assign_splits(specs, summaries, opts,
                   staging: Path) -> tuple[dict[str, dict[str, str]], dict[str, dict], list[dict]]:
    """``(split_of, source_status, rejects)``: per source, patient -> split for the patients without a split of
    their own (grouped, seeded); per source, its summary with item counts; the rejected items' records."""
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
    return split_of, source_status, rejects


class _CorpusRows:
    """The staged rows going into the two ``DatasetDict`` folders under ``final``: a :class:`_SplitWriter` per
    (kind, split), counts per (source, label, split), tile totals per (source, split); a repeated ``image_id``
    is rejected (appended to ``rejects``) together with its triples."""

    def __init__(self, final: Path, rejects: list[dict]) -> None:
        self.final, self.rejects = final, rejects
        self.features = dict(zip(("images", "triples"), _features()))
        self.writers: dict[tuple[str, str], _SplitWriter] = {}
        self.counts: dict[tuple[str, str, str], dict] = {}
        self.tiles: dict[tuple[str, str], dict] = {}
        self.seen: set[str] = set()
        self.dropped_ids: set[str] = set()

    def _writer(self, kind: str, sp: str, batch: int) -> _SplitWriter:
        return self.writers.get((kind, sp)) or self.writers.setdefault(
            (kind, sp), _SplitWriter(self.final / kind / sp, sp, self.features[kind], batch=batch))

    def _count(self, source: str, label: str, sp: str) -> dict:
        return self.counts.setdefault((source, label, sp), {"triples": 0, "pixels": 0, "negatives": 0})

    def add_images(self, path: Path, source: str, item: str, groups: dict[str, str]) -> None:
        """The image rows of one item's shard ``path`` (split: the row's own, else its patient's, else train)."""
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=ROWS_PER_ROW_GROUP):
            for r in batch.to_pylist():
                if r["image_id"] in self.seen:
                    self.dropped_ids.add(r["image_id"])
                    self.rejects.append({"file": item, "source": source,
                                         "reason": f"duplicate image_id '{r['image_id']}' (sample_id not unique)"})
                    continue
                self.seen.add(r["image_id"])
                sp = r["split"] or groups.get(r["patient_id"], "train")
                r["split"] = sp
                w = self._writer("images", sp, 8)
                nb = len(r["image"])
                r["image"] = {"bytes": r["image"], "path": None}
                w.write(r, nb, r["image_id"])
                t = self.tiles.setdefault((source, sp), {"tiles": 0, "pixels": 0})
                t["tiles"] += 1
                t["pixels"] += r["height"] * r["width"]
                for neg in r["negative_labels"]:
                    self._count(source, neg, sp)["negatives"] += 1

    def add_triples(self, path: Path, source: str, groups: dict[str, str]) -> None:
        """The triple rows of one item's shard ``path`` (those of rejected duplicate images left out)."""
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=32):
            for r in batch.to_pylist():
                if r["image_id"] in self.dropped_ids:
                    continue
                sp = r["split"] or groups.get(r["patient_id"], "train")
                r["split"] = sp
                pixels = r.pop("pixels")
                w = self._writer("triples", sp, 32)
                nb = len(r["mask"]) + len(r["ignore"] or b"")
                r["mask"] = {"bytes": r["mask"], "path": None}
                r["ignore"] = None if r["ignore"] is None else {"bytes": r["ignore"], "path": None}
                w.write(r, nb, r["image_id"] + "|" + r["label"])
                c = self._count(source, r["label"], sp)
                c["triples"] += 1
                c["pixels"] += pixels

    def close(self) -> list[str]:
        """Close every split (each split with images gets a triples split, possibly empty) and write the
        ``dataset_dict.json`` files; returns the splits. :class:`BuildError` when no tile was produced."""
        splits = [sp for sp in SPLITS if ("images", sp) in self.writers]
        if not splits:
            reasons = "; ".join(f"{r['file']}: {r['reason']}" for r in self.rejects[:5])
            raise BuildError(f"no tiles were produced (every item rejected or empty). First rejects: "
                             f"{reasons or 'none'}")
        for sp in splits:  # every split present in images gets a (possibly empty) triples split too
            if ("triples", sp) not in self.writers:
                self.writers[("triples", sp)] = _SplitWriter(self.final / "triples" / sp, sp, self.features["triples"],
                                                              batch=64)
        for w in self.writers.values():
            w.close()
        for kind in ("images", "triples"):
            (self.final / kind / "dataset_dict.json").write_text(json.dumps({"splits": splits}))
        return splits


def _finalize(specs, summaries, onto: Ontology, opts, config, key, staging: Path, out: Path, progress: bool):
    """Write the corpus from the staged shards in ``staging/final`` and move it into ``out`` (see the module
    docstring); stale staging folders of other configurations are removed."""
    from .report import write_report

    final = staging / "final"
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir(parents=True)
    split_of, source_status, rejects = _assign_splits(specs, summaries, opts, staging)
    rows = _CorpusRows(final, rejects)
    for s in specs:
        for j, st in _item_stats(staging, s.name):
            if st["rejects"]:
                continue
            stem = j.name[: -len(".json")]
            rows.add_images(j.with_name(f"{stem}.images.parquet"), s.name, st["item"], split_of[s.name])
            rows.add_triples(j.with_name(f"{stem}.triples.parquet"), s.name, split_of[s.name])
    splits = rows.close()
    onto.save(final / "ontology.yaml", sources=sorted({sm["mapping_table"] for sm in summaries.values()}))
    split_counts = {sp: {"images": rows.writers[("images", sp)].rows, "triples": rows.writers[("triples", sp)].rows}
                    for sp in splits}
    write_report(final / "report", counts=rows.counts, tiles=rows.tiles, rejects=rejects, splits=split_counts,
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
