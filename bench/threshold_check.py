"""Pooled pixel Dice of a model on the corpus' TRAINING split at several mask thresholds (never validation).

    python bench/threshold_check.py [--model pathsegmentor-tiny] [--data runs/pathseg-shared] [--split train] \
        [--source monuseg --source consep] [--prompt nuclei] [--thresholds 0.3 0.35 0.4 0.45 0.5]

Each image is segmented once (every annotated label, or only ``--prompt``, with the image's pixel size, no
instances); its probabilities are thresholded offline. Prints per source the pooled Dice, precision and recall at
each threshold, and the best threshold: a model whose best threshold on its own training tiles is not the shipped
one has drifted in calibration, not necessarily in what it finds. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="pathsegmentor-tiny")
    ap.add_argument("--data", default=str(REPO / "runs" / "pathseg-shared"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--source", action="append", default=[])
    ap.add_argument("--prompt", default=None, help="only this label (default: every annotated label)")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.35, 0.4, 0.45, 0.5])
    args = ap.parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    from data_builders import load_pathseg
    from pathsegmentor import PathSegmentor
    from pathsegmentor.evaluation.metrics import Counts, confusion, scores

    torch.set_num_threads(2)
    model = PathSegmentor.from_pretrained(args.model).eval()
    corpus = load_pathseg(args.data)
    table = corpus.images[args.split]
    acc: dict[tuple[str, float], Counts] = {}
    rows = [i for i in range(len(table)) if not args.source or table["source"][i] in args.source]
    for i in tqdm(rows, desc="images"):
        s = corpus.sample(args.split, i)
        labels = [args.prompt] if args.prompt else sorted(s["targets"])
        labels = [lb for lb in labels if lb in s["targets"]]
        if not labels:
            continue
        r = model.segment(s["image"], labels, mpp=s.get("mpp"), instances="none")
        for k, lb in enumerate(labels):
            for th in args.thresholds:
                key = (s["source"], th)
                acc[key] = acc.get(key, Counts()) + confusion(r.probs[k] > th, s["targets"][lb])
    print(f"{args.model}, {args.split}, prompt {args.prompt or 'every label'}")
    for src in sorted({k[0] for k in acc}):
        figs = {th: scores(acc[(src, th)]) for th in args.thresholds}
        best = max(figs, key=lambda th: figs[th]["dice"])
        cells = ", ".join(f"{th}: Dice {f['dice']:.4f} P {f['precision']:.3f} R {f['recall']:.3f}" for th, f in figs.items())
        print(f"{src}: {cells}; best {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
