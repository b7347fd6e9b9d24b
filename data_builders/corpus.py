"""The PathSeg corpus format (``FORMAT``, ``FORMAT_VERSION``, the ``CORPUS_ENTRIES`` of a corpus folder) and
reading a corpus: ``load_pathseg(DIR)`` -> :class:`PathSegCorpus`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .masks import decode_png
from pathsegmentor.ontology import Ontology

FORMAT = "pathseg-corpus"
FORMAT_VERSION = 1
CORPUS_ENTRIES = ("images", "triples", "report", "ontology.yaml", "manifest.json")


class PathSegCorpus:
    """A built corpus: ``images`` and ``triples`` (``datasets.DatasetDict``), ``ontology``, ``splits``, ``manifest``.

    ``sample(split, i)`` joins image row ``i`` with its triples (an index built once per split):
    ``{image_id, image: uint8 [H, W, 3], mpp, source, region, targets: {label: bool [H, W]},
    instances: {label: int32 [H, W] or None}, ignore: {label: bool [H, W] or None}, negatives: [label]}``.
    """

    def __init__(self, root: Path, images, triples, ontology: Ontology, manifest: dict):
        self.root = root
        self.images = images
        self.triples = triples
        self.ontology = ontology
        self.manifest = manifest
        self._index: dict[str, list[list[int]]] = {}

    @property
    def splits(self) -> list[str]:
        return list(self.images)

    def __repr__(self) -> str:
        parts = ", ".join(f"{s}: {len(self.images[s])} images / {len(self.triples[s])} triples" for s in self.splits)
        return f"PathSegCorpus('{self.root}', {parts})"

    def _check_split(self, split: str) -> None:
        if split not in self.images:
            raise KeyError(f"Corpus '{self.root}' has no split '{split}'. Available: {self.splits}")

    def triple_rows(self, split: str) -> list[list[int]]:
        """Image row index -> row indices of its triples (built once per split)."""
        self._check_split(split)
        if split not in self._index:
            ids = self.images[split].data.column("image_id").to_pylist()
            pos = {k: i for i, k in enumerate(ids)}
            rows: list[list[int]] = [[] for _ in ids]
            for j, k in enumerate(self.triples[split].data.column("image_id").to_pylist()):
                rows[pos[k]].append(j)
            self._index[split] = rows
        return self._index[split]

    def __len__(self) -> int:
        return sum(len(self.images[s]) for s in self.splits)

    def sample(self, split: str, i: int) -> dict[str, Any]:
        """Image row ``i`` of ``split`` with decoded image and per-label masks."""
        rows = self.triple_rows(split)
        if not 0 <= i < len(rows):
            raise IndexError(f"image index {i} out of range for split '{split}' ({len(rows)} images)")
        table = self.images[split].data
        rec = {c: table.column(c)[i].as_py() for c in ("image_id", "image", "mpp", "source", "region",
                                                         "negative_labels", "sample_id", "patient_id", "tile_box")}
        image = decode_png(rec["image"])
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        targets, instances, ignore = {}, {}, {}
        if rows[i]:
            tt = self.triples[split].data
            for j in rows[i]:
                label = tt.column("label")[j].as_py()
                m = decode_png(tt.column("mask")[j].as_py())
                n = tt.column("instance_count")[j].as_py()
                targets[label] = m > 0
                instances[label] = m.astype(np.int32) if n is not None and n >= 0 else None
                ig = tt.column("ignore")[j].as_py()
                ignore[label] = None if ig is None or ig.get("bytes") is None else decode_png(ig) > 0
        return {"image_id": rec["image_id"], "image": image, "mpp": rec["mpp"], "source": rec["source"],
                "region": rec["region"], "sample_id": rec["sample_id"], "patient_id": rec["patient_id"],
                "tile_box": rec["tile_box"], "targets": targets, "instances": instances, "ignore": ignore,
                "negatives": list(rec["negative_labels"] or [])}

    def samples(self, split: str) -> Iterator[dict[str, Any]]:
        self._check_split(split)
        for i in range(len(self.images[split])):
            yield self.sample(split, i)


def load_pathseg(path: str | Path) -> PathSegCorpus:
    """Open a corpus written by ``pathseg-build`` / :func:`data_builders.build`."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"PathSeg corpus '{root}' does not exist. Build it with "
                                f"`pathseg-build --config configs/data/shared.yaml --out {root}`.")
    mf = root / "manifest.json"
    if not root.is_dir() or not mf.is_file():
        raise ValueError(f"'{root}' is not a PathSeg corpus (no manifest.json); an interrupted build leaves only a "
                         f".tmp-* folder: rerun the same pathseg-build command to resume it")
    manifest = json.loads(mf.read_text())
    if manifest.get("format") != FORMAT or not manifest.get("complete"):
        raise ValueError(f"'{root}/manifest.json' does not describe a complete PathSeg corpus")
    from datasets import load_from_disk

    images = load_from_disk(str(root / "images"))
    triples = load_from_disk(str(root / "triples"))
    onto = Ontology.load(root / "ontology.yaml")
    return PathSegCorpus(root, images, triples, onto, manifest)
