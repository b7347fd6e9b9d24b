"""The PathSeg builder: :func:`build` checks the sources, options and output folder, then runs the pipeline
sources (adapters) -> ontology categories -> tiles -> splits -> corpus on disk.

Pipeline, per source and per item (file) of the source, streamed (one item decoded at a time per process):

1. the adapter decodes the item into :class:`~data_builders.base.SourceSample` objects;
2. source classes are mapped to categories (``configs/ontology/sources/<source>.yaml``; classes mapped to null
   become ignored pixels), specialised to the image's organ where the ontology has an organ variant, and, with
   ``emit_ancestors``, every ancestor category gets the union of its descendants' masks (``harmonise``);
3. optional resampling to ``mpp``; tiling to ``tile`` with ``overlap``; per tile: labels present, true
   negatives (from the source's exhaustive list), lossless PNGs; empty tiles dropped (``harmonise``);
4. rows go to per-item parquet shards in the staging folder ``OUT/.tmp-<key>/`` (an item's shards appear
   atomically with a ``.json`` marker, so an interrupted build resumes where it stopped) (``staging``);
5. when every source is done: patient-grouped splits, the two ``DatasetDict`` folders (``images``, ``triples``),
   the report, ``ontology.yaml`` and ``manifest.json`` are written in staging and moved into ``OUT``
   (``corpus_writer``).

Options, source specs and recipes are in ``recipe``. See ``docs/PATHSEG.md`` for the schema.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .base import SourceFormatError, get_source
from .corpus import CORPUS_ENTRIES, FORMAT, FORMAT_VERSION
from .corpus_writer import _finalize
from .harmonise import _resolve_mapping
from pathsegmentor.ontology import Ontology
from .recipe import DEFAULTS, BuildError, SourceSpec
from .staging import _atomic_write, _build_source, _flat_memory_allocators, _log


def _ontology_digest(onto: Ontology) -> str:
    return hashlib.sha256(json.dumps(onto.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BuildError(f"output '{out}' exists and is not a directory")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir()
                       if p.name not in CORPUS_ENTRIES and not p.name.startswith(".tmp-"))
        if other:
            raise BuildError(f"output folder '{out}' holds other content "
                             f"({other[:5]}{' ...' if len(other) > 5 else ''}); "
                             f"refusing to write a corpus there. Choose an empty or new folder, or a previous "
                             f"PathSeg corpus to rebuild it.")
        if (out / "images").exists() and not (out / "manifest.json").is_file():
            raise BuildError(f"output folder '{out}' has an images/ folder but no manifest.json: not a PathSeg "
                             f"corpus; refusing to overwrite it")


def _open_sources(specs: list[SourceSpec], onto: Ontology) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """``(adapters, items)`` per source name: each source's adapter, its mapping checked against ``onto`` and
    its items listed. Every unusable source is named in one :class:`BuildError` (nothing is written)."""
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
    return adapters, items


def _up_to_date(out: Path, key: str) -> bool:
    """Whether ``out`` holds a complete corpus built with the same config key."""
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except ValueError:
            old = {}
        if old.get("config_key") == key and old.get("complete"):
            return True
    return False


def build(sources: dict[str, Any], out: str | Path, *, num_proc: int = 1, progress: bool = True,
          force: bool = False, ontology: str | Path | Ontology | None = None, base_dir: str | Path | None = None,
          **options) -> Path:
    """Build a PathSeg corpus into ``out`` and return its path.

    Args:
        sources: corpus source name -> root path, or a mapping ``{root, adapter?, **adapter options}``
            (``adapter`` defaults to the name; e.g.
            ``{"glas": {"adapter": "folder", "root": ..., "binary": "gland"}}``).
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

    adapters, items = _open_sources(specs, onto)  # refuses the build before writing anything

    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "options": opts,
              "sources": [asdict(s) for s in specs], "ontology": _ontology_digest(onto)}
    key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    if not force and _up_to_date(out, key):
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
