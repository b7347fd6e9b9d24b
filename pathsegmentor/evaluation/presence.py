"""Image-level presence: image–prompt pairs whose answer is certain, the MCC of the presence head on
them, and the presence threshold calibrated on the *training* split.

    python -m pathsegmentor.evaluation.presence MODEL_DIR --data CORPUS [--split train] [--write]

Pairs per corpus image (prompts sent as they are, ``vocabulary="open"``, so the presence head answers,
not the prompt policy):

* **positive**: every annotated category of the image (truth: its mask is non-empty);
* **negative** (all certain): the categories the source annotates exhaustively and that are absent
  (``negatives`` in the corpus), ``n_phrases`` phrases from outside pathology (the held-out list for
  evaluation, the train list for calibration), and ``n_organ`` organ-specific concepts of another organ
  than the image's.

``--write`` stores the MCC-maximising threshold in ``MODEL_DIR/config.json``
(``inference.presence_threshold``), with the split it came from.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..inference.predictor import as_predictor


@dataclass
class Pair:
    image_id: str
    source: str
    prompt: str
    kind: str  # positive | exhaustive | phrase | organ
    truth: bool
    presence: float
    empty_mask: bool


def mcc(tp: int, fp: int, fn: int, tn: int) -> float:
    """Matthews correlation coefficient; 0 when a margin is empty."""
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / den) if den else 0.0


def confusion_at(pairs: Sequence[Pair], threshold: float) -> dict[str, int]:
    tp = sum(p.truth and p.presence >= threshold for p in pairs)
    fp = sum((not p.truth) and p.presence >= threshold for p in pairs)
    fn = sum(p.truth and p.presence < threshold for p in pairs)
    tn = sum((not p.truth) and p.presence < threshold for p in pairs)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def calibrate(pairs: Sequence[Pair]) -> tuple[float, float]:
    """(threshold, MCC): the presence threshold maximising MCC over ``pairs`` (midpoint between the two
    presence values that bound the best cut)."""
    vals = np.unique([p.presence for p in pairs])
    cuts = np.concatenate([[0.0], (vals[1:] + vals[:-1]) / 2, [1.0]]) if len(vals) > 1 else np.array([0.5])
    best = (0.5, -2.0)
    for t in cuts:
        m = mcc(**confusion_at(pairs, float(t)))
        if m > best[1] + 1e-12:
            best = (float(t), m)
    return best


def asked_prompts(sample: dict, ontology, rng: np.random.Generator, *, phrases: Sequence[str], n_phrases: int = 2,
                  n_organ: int = 2) -> list[tuple[str, str, bool]]:
    """``(prompt, kind, truth)`` for one corpus sample: its annotated categories (truth: mask non-empty), its
    certain absent categories (``negatives``), ``n_phrases`` of ``phrases`` and ``n_organ`` concepts of another
    organ (both drawn with ``rng``); ``kind`` is positive | exhaustive | phrase | organ."""
    from ..training.prompt_sampling import other_organ_concepts

    targets = sample["targets"]
    asked = [(lb, "positive", bool(np.asarray(targets[lb]).any())) for lb in sorted(targets)]
    asked += [(n, "exhaustive", False) for n in sample.get("negatives", []) if n not in targets]
    for j in rng.choice(len(phrases), min(n_phrases, len(phrases)), replace=False):
        asked.append((str(phrases[j]), "phrase", False))
    organ = [c for c in other_organ_concepts(ontology, sample.get("region", "")) if c not in targets]
    for j in rng.choice(len(organ), min(n_organ, len(organ)), replace=False) if organ else []:
        asked.append((organ[j], "organ", False))
    return asked


def presence_pairs(model, corpus, split: str, *, phrases: Sequence[str], n_phrases: int = 2, n_organ: int = 2,
                   sources: Sequence[str] = (), limit: int = 0, per_source: int = 0, seed: int = 0,
                   progress: bool = True) -> list[Pair]:
    """Image–prompt pairs with certain answers over ``split`` (see the module docstring), one
    ``segment()`` call per image; ``limit``: the first N images; ``per_source``: at most N images of each
    source, evenly spaced over its images (a cheaper pass that keeps every source)."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    table = corpus.images[split]
    idx = [i for i in range(len(table)) if not sources or table["source"][i] in set(sources)]
    if per_source:
        by: dict[str, list[int]] = {}
        for i in idx:
            by.setdefault(table["source"][i], []).append(i)
        idx = sorted(j for v in by.values() for j in
                     (v if len(v) <= per_source else [v[int(k)] for k in np.linspace(0, len(v) - 1, per_source)]))
    if limit:
        idx = idx[:limit]
    pairs: list[Pair] = []
    for i in tqdm(idx, desc=f"presence {split}", disable=not progress):
        s = corpus.sample(split, i)
        asked = asked_prompts(s, corpus.ontology, rng, phrases=phrases, n_phrases=n_phrases, n_organ=n_organ)
        res = as_predictor(model).segment(s["image"], [a[0] for a in asked], mpp=s.get("mpp"), vocabulary="open",
                                          instances="none")
        for k, (prompt, kind, truth) in enumerate(asked):
            pairs.append(Pair(str(s.get("image_id", i)), str(s.get("source", "")), prompt, kind, truth,
                              float(res.presence[k]), bool(not res.masks[k].any())))
    return pairs


def summarize_pairs(pairs: Sequence[Pair], threshold: float) -> dict:
    """MCC with its confusion counts, the negative fraction, and empty-mask rates per negative kind."""
    c = confusion_at(pairs, threshold)
    out = {"threshold": round(threshold, 4), "pairs": len(pairs), "negative_fraction": round(
        sum(not p.truth for p in pairs) / max(1, len(pairs)), 3), **c, "mcc": round(mcc(**c), 4)}
    for kind in ("exhaustive", "phrase", "organ"):
        ks = [p for p in pairs if p.kind == kind]
        if ks:
            out[f"empty_mask_rate_{kind}"] = round(float(np.mean([p.empty_mask for p in ks])), 4)
            out[f"n_{kind}"] = len(ks)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pathsegmentor.evaluation.presence", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="model dir (config.json + model.safetensors)")
    ap.add_argument("--data", required=True, help="PathSeg corpus")
    ap.add_argument("--split", default="train", help="split to calibrate on (default: train; never validation)")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--per-source", type=int, default=0, help="at most N images per source (evenly spaced)")
    ap.add_argument("--write", action="store_true", help="store the threshold in the model's config.json")
    ap.add_argument("--out", default=None, help="also write the pairs and summary as JSON here")
    args = ap.parse_args(argv)

    from data_builders import load_pathseg

    from ..modeling.factory import from_pretrained
    from ..training.prompt_sampling import negative_phrases

    if not Path(args.data).is_dir():
        print(f"error: corpus directory not found: '{args.data}'. Build it with pathseg-build.", file=sys.stderr)
        return 2
    try:
        model = from_pretrained(args.model).eval()
    except (KeyError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.write and not (Path(args.model) / "config.json").is_file():
        print(f"error: --write needs a model directory holding config.json; '{args.model}' is not one "
              f"(pass the trained model's folder, e.g. runs/tiny-v2/model)", file=sys.stderr)
        return 2
    corpus = load_pathseg(args.data)
    if args.split not in corpus.images:
        print(f"error: corpus '{args.data}' has no split '{args.split}'. Available: {sorted(corpus.images)}",
              file=sys.stderr)
        return 2
    phrases = negative_phrases()["train" if args.split == "train" else "heldout"]
    pairs = presence_pairs(model, corpus, args.split, phrases=phrases, limit=args.limit, per_source=args.per_source)
    thr, best = calibrate(pairs)
    summary = {"split": args.split, "calibrated": summarize_pairs(pairs, thr),
               "at_0.5": summarize_pairs(pairs, 0.5)}
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "pairs": [asdict(p) for p in pairs]}, indent=1))
    if args.write:  # the threshold and where it came from (provenance), the rest of the section kept
        from .settings import calibrated_threshold, merge_inference

        values, sources = calibrated_threshold(summary, Path(args.out).name if args.out else "evaluation.presence")
        merge_inference(args.model, values, sources)
        print(f"presence_threshold {values['presence_threshold']:.4f} (MCC {best:.3f} on split '{args.split}') written "
              f"to {Path(args.model) / 'config.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
