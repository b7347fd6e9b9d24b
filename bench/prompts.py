"""Prompt resolution: cost per prompt against the decoder's, and what it refuses and finds.

    python bench/prompts.py [--model pathsegmentor-tiny]

Prints one JSON object:
- ``resolve_ms``: mean time to resolve a prompt, lookup path (names, synonyms, normalised forms) and
  nearest path (one text-tower call plus a similarity search). Each figure is also given as a ratio to
  one decode of the same prompt on a 512² tile (image encoding excluded), timed in the same process.
- ``non_pathology_refused``: fraction refused of phrases from outside pathology. None of these phrases
  is in the calibration list, ``pathsegmentor.inference.calibration.OUT_OF_DOMAIN``.
- ``variants_resolved``: fraction of generated surface variants of trained concepts (UK spelling,
  "cells" wording, word order, stop words) resolved to their concept.

The index build (a one-off, kept on disk) is reported apart, as ``index_build_s``.

With ``--data CORPUS`` it also prints the model-side targets on that corpus' ``--split`` (default
validation): presence MCC with its confusion counts, empty-mask rates of held-out non-pathology phrases
and other-organ concepts, paraphrase and cross-category Dice, box and point IoU
(:mod:`bench.prompt_targets`, also runnable alone).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NON_PATHOLOGY = ["a red sports car", "hello world", "zzzz qqq", "a flock of seagulls", "my favourite song",
                 "an old steam train", "ice cream cone", "a sunny beach", "the eiffel tower", "basketball court",
                 "a cat sleeping on a sofa", "mobile phone screen", "winter jacket", "a bridge over a river",
                 "fireworks", "a box of chocolates", "volcano eruption", "a vintage camera", "coffee beans",
                 "a crowded train station"]


def variants(concept: str) -> list[str]:
    out = [concept.upper(), f"all {concept}", f"segment the {concept}", concept.replace("tumor", "tumour")]
    words = concept.split()
    if words[-1] == "nuclei" and len(words) > 1:
        out += [" ".join(words[:-1]) + " cells", "nuclei " + " ".join(words[:-1])]
    return [v for v in dict.fromkeys(out) if v != concept]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="pathsegmentor-tiny")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--data", default=None, help="PathSeg corpus: also print the targets on --split")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--limit", type=int, default=0, help="with --data: the first N images only")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from pathsegmentor import PathSegmentor
    from pathsegmentor.inference.prompts import PromptResolver
    from pathsegmentor.ontology import Ontology

    torch.set_num_threads(2)
    model = PathSegmentor.from_pretrained(args.model)
    vocab = dict(model.config.vocabulary)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        r = PromptResolver(Ontology.load(), model.text_encoder.encode, vocab, index_dir=Path(tmp))
        r.resolve("zzzz qqq")  # builds the index and calibrates the threshold
        build_s = time.perf_counter() - t

        lookups = [c for c in r.trained] + [v for c in r.trained for v in variants(c)]
        t = time.perf_counter()
        for _ in range(args.repeats):
            for p in lookups:
                r.lookup(p)
        lookup_ms = (time.perf_counter() - t) * 1e3 / (args.repeats * len(lookups))
        model.text_encoder.clear_cache()
        t = time.perf_counter()
        for p in NON_PATHOLOGY:
            r.resolve(p)
        nearest_ms = (time.perf_counter() - t) * 1e3 / len(NON_PATHOLOGY)

        tile = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
        x = model.normalize(torch.from_numpy(tile).permute(2, 0, 1)[None])
        emb = model.encode_text(["nuclei"])
        with torch.no_grad():
            feats = model.encode_image(x)
            model.decode(feats, x, text_embeddings=emb)
            t = time.perf_counter()
            for _ in range(args.repeats):
                model.decode(feats, x, text_embeddings=emb)
            decode_ms = (time.perf_counter() - t) * 1e3 / args.repeats

        refused = [p for p in NON_PATHOLOGY if not r.resolve(p).answered]
        pairs = [(c, v) for c in r.trained for v in variants(c)]
        ok = [(c, v) for c, v in pairs if r.resolve(v).concept == c]
        misses = sorted({f"{v} -> {r.resolve(v).concept}" for c, v in pairs if (c, v) not in ok})
    print(json.dumps({
        "model": model.name, "threshold": round(float(r.threshold), 4), "index_build_s": round(build_s, 2),
        "resolve_ms": {"lookup": round(lookup_ms, 4), "nearest": round(nearest_ms, 2),
                       "decode_one_prompt_512": round(decode_ms, 2),
                       "lookup_to_decode": round(lookup_ms / decode_ms, 5),
                       "nearest_to_decode": round(nearest_ms / decode_ms, 4)},
        "non_pathology_refused": round(len(refused) / len(NON_PATHOLOGY), 3),
        "non_pathology_answered": sorted(set(NON_PATHOLOGY) - set(refused)),
        "variants_resolved": round(len(ok) / max(1, len(pairs)), 3), "variants": len(pairs),
        "variant_misses": misses[:20]}, indent=2))
    if args.data:
        sys.path.insert(0, str(REPO / "bench"))
        from data_builders import load_pathseg
        from prompt_targets import run

        print(json.dumps({"split": args.split, **run(model.eval(), load_pathseg(args.data), args.split,
                                                     limit=args.limit)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
