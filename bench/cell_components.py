"""How large the connected parts of the model's nucleus mask get, on the TRAINING split.

    python bench/cell_components.py [--model pathsegmentor-tiny] [--data runs/pathseg-shared] [--split train]

For every MoNuSeg and CoNSeP image of the split: "nuclei" at the image's µm/px, the mask thresholded from the
probabilities (so ``inference.max_cell_component_um2`` is not applied), its connected parts measured in µm²
with the fraction of each on ground-truth nuclei. Prints the largest parts and how many exceed the model's
limit. The shipped limit (5000 µm²) is about 2.7 times the largest part found here; see MODEL_CARD.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="pathsegmentor-tiny")
    ap.add_argument("--data", default=str(REPO / "runs" / "pathseg-shared"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args(argv)
    import torch
    from scipy import ndimage as ndi

    from data_builders import load_pathseg
    from pathsegmentor import PathSegmentor

    torch.set_num_threads(2)
    model = PathSegmentor.from_pretrained(args.model).eval()
    limit = float(getattr(model.config.inference, "max_cell_component_um2", 0.0) or 0.0)
    corpus = load_pathseg(args.data)
    table = corpus.images[args.split]
    parts = []  # (µm², fraction on ground truth, source, image id)
    for i in range(len(table)):
        if table["source"][i] not in ("monuseg", "consep"):
            continue
        s = corpus.sample(args.split, i)
        if "nuclei" not in s["targets"]:
            continue
        res = model.segment(s["image"], "nuclei", mpp=s["mpp"], vocabulary="open", instances="none")
        mask = res.probs[0] > model.config.inference.mask_threshold
        labels, n = ndi.label(mask)
        if not n:
            continue
        area = np.bincount(labels.ravel())[1:]
        on_gt = np.bincount(labels[np.asarray(s["targets"]["nuclei"], bool)].ravel(), minlength=n + 1)[1:]
        parts += [(a * s["mpp"] ** 2, o / a, s["source"], s["image_id"]) for a, o in zip(area, on_gt)]
    parts.sort(key=lambda p: -p[0])
    print(f"{model.name}, {args.split}: {len(parts)} connected parts of the 'nuclei' mask")
    print("| µm² | on ground-truth nuclei | source | image |")
    print("|---|---|---|---|")
    for a, f, src, img in parts[:args.top]:
        print(f"| {a:.0f} | {f:.2f} | {src} | {img} |")
    if limit:
        over = [p for p in parts if p[0] > limit]
        print(f"parts over the model's limit ({limit:.0f} µm²): {len(over)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
