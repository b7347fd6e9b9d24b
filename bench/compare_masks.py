"""One corpus image, one prompt, several models side by side: the image, then each model's mask in green.

    python bench/compare_masks.py --image-id consep/train_2/0_0 --prompt nuclei \
        --models runs/tiny-v4-weights pathsegmentor-tiny --out compare.jpg

For looking at a failure the tables point to (e.g. the black pigment in the CoNSeP validation tile that both v4 and
v5 partly call nuclei, MODEL_CARD.md). Each model runs ``segment()`` with the image's pixel size from the corpus.
Prints each model's mask fraction and its Dice against the corpus mask of the prompt's label when it has one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def find(corpus, image_id: str) -> tuple[str, int]:
    """(split, row) of ``image_id`` in the corpus; ValueError naming a few ids when it is absent."""
    for split in corpus.splits:
        ids = list(corpus.images[split]["image_id"])
        if image_id in ids:
            return split, ids.index(image_id)
    some = list(corpus.images[corpus.splits[0]]["image_id"])[:3]
    raise ValueError(f"image id {image_id!r} is not in the corpus; ids look like {some}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO / "runs" / "pathseg-shared"))
    ap.add_argument("--image-id", required=True)
    ap.add_argument("--prompt", default="nuclei")
    ap.add_argument("--models", nargs="+", default=["pathsegmentor-tiny"])
    ap.add_argument("--width", type=int, default=1500, help="width of the written picture (px)")
    ap.add_argument("--out", required=True, help="picture to write (.jpg or .png)")
    args = ap.parse_args(argv)

    from PIL import Image

    from data_builders import load_pathseg
    from pathsegmentor import from_pretrained
    from pathsegmentor.evaluation.metrics import dice

    corpus = load_pathseg(args.data)
    split, row = find(corpus, args.image_id)
    s = corpus.sample(split, row)
    img = s["image"]
    truth = s["targets"].get(args.prompt)
    panels = [img]
    for name in args.models:
        res = from_pretrained(name).eval().segment(img, args.prompt, mpp=float(s["mpp"]))
        mask = np.asarray(res.masks[0], bool)
        over = img.copy()
        over[mask] = (0.5 * over[mask] + np.array([0, 127, 0])).astype(np.uint8)
        panels.append(over)
        extra = f", Dice {dice(mask, truth):.3f} against the corpus mask" if truth is not None else ""
        print(f"{name}: mask covers {mask.mean():.1%}{extra}")
    pic = Image.fromarray(np.concatenate(panels, 1))
    pic = pic.resize((args.width, round(args.width * pic.height / pic.width)))
    pic.save(args.out, quality=80) if args.out.lower().endswith((".jpg", ".jpeg")) else pic.save(args.out)
    print(f"wrote {args.out} (left to right: the image, {', '.join(args.models)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
