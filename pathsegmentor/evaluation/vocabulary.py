"""A model's vocabulary: the concepts it was trained on, with their sources and validation Dice.

Recorded in the model's ``config.json`` (``vocabulary``) from two files the pipeline writes: the
corpus build report (``CORPUS/report/counts.csv``: source, category, split, triples) and the
evaluation table (``EVAL/by_category.csv``: ``"source / category"`` rows with ``pixel_dice``)::

    python -m pathsegmentor.evaluation.vocabulary MODEL_DIR --counts CORPUS/report/counts.csv \\
        --by-category EVAL/by_category.csv

A concept is trained when the training split holds at least one positive triple of it. Prompt
resolution (:mod:`pathsegmentor.inference.prompts`) answers only these concepts (or their trained
parent / sub-concepts); ``pathsegmentor vocabulary MODEL`` lists them.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence


def vocabulary_from_reports(counts_csv: str | Path, by_category_csv: str | Path | None = None, *,
                            train_split: str = "train") -> dict[str, dict[str, Any]]:
    """``concept -> {"sources": [...], "train_triples": n, "validation_dice": {source: dice}}``."""
    vocab: dict[str, dict[str, Any]] = {}
    with open(counts_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] != train_split or int(row["triples"]) <= 0:
                continue
            v = vocab.setdefault(row["category"], {"sources": [], "train_triples": 0, "validation_dice": {}})
            if row["source"] not in v["sources"]:
                v["sources"].append(row["source"])
            v["train_triples"] += int(row["triples"])
    if by_category_csv is not None:
        with open(by_category_csv, newline="") as f:
            for row in csv.DictReader(f):
                source, _, concept = row["key"].partition(" / ")
                if concept in vocab and row.get("pixel_dice", "") != "":
                    vocab[concept]["validation_dice"][source] = round(float(row["pixel_dice"]), 4)
    return dict(sorted(vocab.items()))


def record_vocabulary(model_dir: str | Path, vocabulary: dict[str, dict[str, Any]]) -> Path:
    """Write ``vocabulary`` into ``model_dir/config.json`` (atomic); the weights are untouched."""
    from ..ontology import Ontology

    unknown = sorted(set(vocabulary) - set(Ontology.load().categories))
    if unknown:
        raise ValueError(f"concept(s) {unknown} are not in the ontology; rebuild the corpus with the current ontology")
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"'{model_dir}' has no config.json (a model directory from save_pretrained)")
    cfg = json.loads(path.read_text())
    cfg["vocabulary"] = vocabulary
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pathsegmentor.evaluation.vocabulary",
                                     description="Record a model's trained concepts in its config.json.")
    parser.add_argument("model_dir")
    parser.add_argument("--counts", required=True, help="the corpus build report's counts.csv")
    parser.add_argument("--by-category", default=None, help="by_category.csv of `pathsegmentor evaluate`")
    parser.add_argument("--train-split", default="train")
    args = parser.parse_args(argv)
    try:
        vocab = vocabulary_from_reports(args.counts, args.by_category, train_split=args.train_split)
        path = record_vocabulary(args.model_dir, vocab)
    except (OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(vocab)} trained concepts recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
