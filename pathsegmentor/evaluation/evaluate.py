"""Evaluate a model on a PathSeg corpus split: per category, per source, overall.

    pathsegmentor evaluate --model pathsegmentor-tiny --data CORPUS --split validation --out DIR

For every image, all of its annotated categories and its true negatives are prompted in one call
(one image encoding). Reported: Dice, IoU, pixel accuracy, precision, recall (pooled over pixels and
mean per image), presence accuracy on negatives, and AJI / PQ (DQ: object-level F1 at IoU 0.5) for
instance categories (nuclei, cells, glands) with instance ground truth, with the GlaS challenge's object F1
(``f1_glas``: a hit covers more than half of its true object; ``object_dice_glas``; both pooled over the
images as the challenge computes them; ``mean_f1_glas``: F1 per image, averaged); predicted instances come from
the model's own instance decoder (``segment(..., instances=...)``: the separation maps of a model that
predicts them, else a watershed of the mask), the one ``segment()`` and whole slides use. Prompts are
the corpus' canonical category names, sent to the model as they are (``vocabulary="open"``), so
negatives test the presence head, not the prompt policy.
``--cross-prompts`` also scores chosen prompts against every ground-truth category of each image
(prompt discrimination and synonym checks). Runs distributed under Accelerate (images split across
processes, rows gathered with ``gather_for_metrics``, padded duplicates dropped).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..training.collectives import all_gather_objects
from .image_rows import evaluate_image
from .metrics import Counts, pool_glas_object_scores, scores

def summarize(rows: list[dict[str, Any]], presence_threshold: float = 0.5) -> dict[str, list[dict[str, Any]]]:
    """Aggregate raw rows into tables: ``by_category``, ``by_source``, ``overall``, ``negatives``, ``cross``."""
    def table(keyf, kind: str):
        groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            if r["kind"] == kind:
                groups[keyf(r)].append(r)
        out = []
        for key, rs in sorted(groups.items()):
            pooled = Counts()
            per = defaultdict(list)
            for r in rs:
                c = Counts(r["tp"], r["fp"], r["fn"], r["tn"])
                pooled = pooled + c
                for m, v in scores(c).items():
                    per[m].append(v)
            entry = {"key": " / ".join(key), "n": len(rs)}
            entry.update({f"pixel_{m}": round(v, 4) for m, v in scores(pooled).items()})
            entry.update({f"mean_{m}": round(float(np.mean(v)), 4) for m, v in per.items()})
            for m in ("aji", "pq", "dq", "sq"):
                vals = [r[m] for r in rs if m in r]
                if vals:
                    entry[m] = round(float(np.mean(vals)), 4)
            glas = [{k[5:]: v for k, v in r.items() if k.startswith("glas_")} for r in rs if "glas_tp" in r]
            if glas:  # the GlaS challenge's figures, pooled over the images as it computes them; F1 also per image
                pooled_glas = pool_glas_object_scores(glas)
                entry["f1_glas"] = round(pooled_glas["f1"], 4)
                entry["mean_f1_glas"] = round(float(np.mean([g["f1"] for g in glas])), 4)
                entry["object_dice_glas"] = round(pooled_glas["object_dice"], 4)
            out.append(entry)
        return out

    neg = defaultdict(list)
    for r in rows:
        if r["kind"] == "negative":
            neg[(r["source"], r["label"])].append(r)
    negatives = [{"key": " / ".join(k), "n": len(v),
                  "presence_accuracy": round(float(np.mean([not r["predicted_present"] for r in v])), 4),
                  "empty_mask_rate": round(float(np.mean([r["empty_mask"] for r in v])), 4)}
                 for k, v in sorted(neg.items())]
    return {
        "by_category": table(lambda r: (r["source"], r["label"]), "positive"),
        "by_label": table(lambda r: (r["label"],), "positive"),
        "by_source": table(lambda r: (r["source"],), "positive"),
        "overall": table(lambda r: ("all",), "positive"),
        "negatives": negatives,
        "cross": table(lambda r: (r["source"], r["prompt"], r["label"]), "cross"),
    }


def _markdown(tables: dict[str, list[dict[str, Any]]]) -> str:
    parts = []
    for name, t in tables.items():
        if not t:
            continue
        cols = list(t[0].keys())
        for r in t[1:]:
            cols += [c for c in r if c not in cols]
        parts.append(f"### {name}\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for r in t:
            parts.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
        parts.append("")
    return "\n".join(parts)


def _plot(tables, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = tables["by_category"]
    if not t:
        return
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(t)), 4))
    ax.bar(range(len(t)), [r["pixel_dice"] for r in t], color="#3b7dd8")
    ax.set_xticks(range(len(t)))
    ax.set_xticklabels([r["key"] for r in t], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("pixel Dice")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(model, corpus, split: str, *, out_dir: str | Path | None = None, sources: Sequence[str] = (),
             cross_prompts: Sequence[str] = (), limit: int = 0, accelerator=None,
             progress: bool = True, **image_options) -> dict[str, Any]:
    """Evaluate ``model`` on ``corpus`` (from ``data_builders.load_pathseg``) split ``split``.

    Returns ``{"rows": [...], "tables": {...}}`` and, with ``out_dir``, writes ``rows.csv``,
    ``metrics.json``, ``metrics.md`` and ``dice_by_category.png`` there. ``image_options``: ``instances``,
    ``tta``, ``mpp_scale`` of :func:`evaluate_image`.
    """
    from tqdm.auto import tqdm

    if split not in corpus.images:
        raise KeyError(f"Corpus has no split '{split}'. Available: {sorted(corpus.images)}")
    table = corpus.images[split]
    idx = list(range(len(table)))
    if sources:
        src = table["source"]
        idx = [i for i in idx if src[i] in set(sources)]
    if limit:
        idx = idx[:limit]
    rows: list[dict[str, Any]] = []
    if accelerator is not None and accelerator.num_processes > 1:
        # rank r takes images r, r + world, ...: every image once, rows merged back in corpus order
        mine = idx[accelerator.process_index::accelerator.num_processes]
        local = [(i, evaluate_image(model, corpus.sample(split, i), cross_prompts=cross_prompts,
                                         **image_options))
                 for i in tqdm(mine, desc=f"evaluate {split}", disable=not (progress and accelerator.is_main_process))]
        gathered = sorted((pair for part in all_gather_objects(local, accelerator.device) for pair in part),
                          key=lambda pair: pair[0])
        rows = [r for _, per_image in gathered for r in per_image]
    else:
        for i in tqdm(idx, desc=f"evaluate {split}", disable=not progress):
            rows.extend(evaluate_image(model, corpus.sample(split, i), cross_prompts=cross_prompts, **image_options))
    thr = model.config.inference.presence_threshold
    tables = summarize(rows, thr)
    result = {"model": model.name, "split": split, "images": len(idx), "rows": rows, "tables": tables}
    if out_dir is not None and (accelerator is None or accelerator.is_main_process):
        write_report(result, Path(out_dir))
    return result


def write_report(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    if rows:
        cols: list[str] = []
        for r in rows:
            cols += [c for c in r if c not in cols]
        with (out / "rows.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    for name, t in result["tables"].items():
        if t:
            with (out / f"{name}.csv").open("w", newline="") as f:
                cols = list(dict.fromkeys(k for r in t for k in r))
                w = csv.DictWriter(f, fieldnames=cols)
                w.writeheader()
                w.writerows(t)
    meta = {k: v for k, v in result.items() if k != "rows"}
    (out / "metrics.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "metrics.md").write_text(f"# Evaluation of {result['model']} on split '{result['split']}' "
                                    f"({result['images']} images)\n\n" + _markdown(result["tables"]))
    _plot(result["tables"], out / "dice_by_category.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="registered name, model dir or hub id")
    parser.add_argument("--data", required=True, help="PathSeg corpus directory (pathseg-build output)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--out", default=None, help="report directory (default: <model dir or name>-eval-<split>)")
    parser.add_argument("--source", action="append", default=[], help="restrict to a source (repeatable)")
    parser.add_argument("--cross-prompt", action="append", default=[], help="also score this prompt against every "
                        "ground-truth category (repeatable)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N images")
    parser.add_argument("--instances", default="auto", choices=["auto", "hv", "distance", "border", "watershed"],
                        help="instance decoder for AJI/PQ (default: the model's own)")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    parser.add_argument("--mpp-scale", type=float, default=1.0,
                        help="ablation: run at this multiple of the working µm/px (2.0: nuclei at 0.5 instead of 0.25)")
    parser.add_argument("--mpp-mode", default="corpus", choices=["corpus", "none", "auto"],
                        help="pixel size given to segment(): the corpus' (default), none (unknown), or auto (estimated)")


def run(args: argparse.Namespace) -> int:
    from .._compat import ensure_torchvision

    ensure_torchvision()
    import torch
    from accelerate import Accelerator

    from ..modeling.factory import from_pretrained

    data = Path(args.data)
    if not data.is_dir():
        print(f"error: corpus directory not found: '{data}'. Build it with pathseg-build.", file=sys.stderr)
        return 2
    from data_builders import load_pathseg

    corpus = load_pathseg(data)
    if args.split not in corpus.images:
        print(f"error: corpus '{data}' has no split '{args.split}'. Available: {sorted(corpus.images)}", file=sys.stderr)
        return 2
    try:
        model = from_pretrained(args.model)
    except (KeyError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model.to(accelerator.device)
    out = Path(args.out) if args.out else Path(f"{Path(str(args.model)).name}-eval-{args.split}")
    result = evaluate(model, corpus, args.split, out_dir=out, sources=args.source, cross_prompts=args.cross_prompt,
                      limit=args.limit, accelerator=accelerator, instances=args.instances, tta=args.tta,
                      mpp_scale=args.mpp_scale, mpp_mode=args.mpp_mode)
    if accelerator.is_main_process:
        print(_markdown({k: result["tables"][k] for k in ("by_category", "by_source", "overall", "negatives")}))
        print(f"report written to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pathsegmentor evaluate", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
