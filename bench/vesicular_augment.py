"""What ``data.vesicular_prob`` does to real TRAINING nuclei: a picture and the haematoxylin it removes.

    python bench/vesicular_augment.py [--data runs/pathseg-shared] [--split train] [--source monuseg] \
        [--images 3] [--draws 3] [--fraction 0.5] [--centre 0.2 0.6] [--out docs/vesicular_augment.jpg]

For the first ``--images`` images of ``--source`` in ``--split`` (training, never validation) it cuts one 256² crop
around the most nucleus-dense window, then applies :func:`pathsegmentor.training.vesicular.hollow_nuclei` ``--draws``
times (the recipe's ``data.vesicular_fraction`` / ``data.vesicular_centre``). Prints, per image, the median
haematoxylin optical density at nucleus centres (relative depth > 0.65) and rims (< 0.25) before and after: the centres
should pale, the rims stay. ``--out`` writes the picture: each row an image's crop, then its draws, then the truth
outline. Reads images and masks only, no model; nothing is asserted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def densest_crop(inst: np.ndarray, crop: int) -> tuple[int, int]:
    """Top-left corner of the ``crop``² window (on a coarse grid) holding the most nucleus pixels."""
    h, w = inst.shape
    best, corner = -1, (0, 0)
    for y in range(0, max(h - crop, 0) + 1, crop // 4):
        for x in range(0, max(w - crop, 0) + 1, crop // 4):
            n = int(np.count_nonzero(inst[y:y + crop, x:x + crop]))
            if n > best:
                best, corner = n, (y, x)
    return corner


def outline(image: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """The crop with every nucleus' edge (toward the background or a touching nucleus) in green: the pixels at
    relative depth 0 (:func:`pathsegmentor.training.vesicular.relative_depth`)."""
    from pathsegmentor.training.vesicular import relative_depth

    out = image.copy()
    out[(inst > 0) & (relative_depth(inst) == 0)] = (0, 255, 0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO / "runs" / "pathseg-shared"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--source", default="monuseg")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--centre", type=float, nargs=2, default=(0.2, 0.6))
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from PIL import Image

    from data_builders import load_pathseg
    from pathsegmentor.training.augment import stain_concentrations
    from pathsegmentor.training.vesicular import check_vesicular, hollow_nuclei, relative_depth

    centre = check_vesicular(1.0, args.fraction, args.centre)
    corpus = load_pathseg(args.data)
    table = corpus.images[args.split]
    rows, c = [], args.crop
    for i in range(len(table)):
        if table["source"][i] != args.source or len(rows) >= args.images:
            continue
        s = corpus.sample(args.split, i)
        inst = (s.get("instances") or {}).get("nuclei")
        if inst is None:
            continue
        y, x = densest_crop(np.asarray(inst), c)
        img, ins = np.asarray(s["image"])[y:y + c, x:x + c], np.asarray(inst)[y:y + c, x:x + c]
        depth = relative_depth(ins)
        draws = [hollow_nuclei(img, ins, np.random.default_rng([7, i, d]), fraction=args.fraction, centre=centre)
                 for d in range(args.draws)]
        h0 = stain_concentrations(img)[..., 0]
        hs = [stain_concentrations(d)[..., 0] for d in draws]
        core, rim = depth > 0.65, (ins > 0) & (depth < 0.25)
        print(f"{table['image_id'][i]}: H at nucleus centres {np.median(h0[core]):.3f} -> "
              f"{np.median([np.median(h[core]) for h in hs]):.3f}, rims {np.median(h0[rim]):.3f} -> "
              f"{np.median([np.median(h[rim]) for h in hs]):.3f} (median over {args.draws} draws)")
        rows.append([img] + draws + [outline(img, ins)])
    if not rows:
        raise SystemExit(f"no {args.source!r} image with nucleus instances in split {args.split!r} of {args.data}")
    if args.out:
        pad = 6
        canvas = Image.new("RGB", (pad + len(rows[0]) * (c + pad), pad + len(rows) * (c + pad)), "white")
        for r, row in enumerate(rows):
            for k, tile in enumerate(row):
                canvas.paste(Image.fromarray(tile), (pad + k * (c + pad), pad + r * (c + pad)))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(args.out, quality=88)
        print(f"wrote {args.out}: per row the crop, {args.draws} draws, the truth outlined")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
