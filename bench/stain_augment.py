"""What the training's stain augmentation covers, against the haematoxylin of the TRAINING split's nuclei.

    python bench/stain_augment.py [--data runs/pathseg-shared] [--split train] [--source monuseg] \
        [--jitter 0.05 0.02 --jitter 0.2 0.05] [--gain 0.4 1.6] [--draws 5] [--out docs/stain_augment.jpg]

For each image of ``--source`` in ``--split`` it measures the median haematoxylin optical density inside the
annotated nuclei (colour deconvolution, :func:`pathsegmentor.training.augment.stain_concentrations`), and prints its
spread over the images: how much paler the palest image's nuclei are than the median image's. Each ``--jitter
SCALE SHIFT`` (the recipe's ``data.hed_sigma`` / ``data.hed_bias``) then shows the range of haematoxylin scales it
draws (``1 ± SCALE``); each ``--gain LOW HIGH`` (the recipe's ``data.h_gain``) the haematoxylin gains it draws
(log-uniform, :func:`pathsegmentor.training.augment.haematoxylin_gain`). ``--out`` writes a picture: one crop of the
median image, then ``--draws`` draws of each jitter and gain (the same draws' seeds on every row). Reads images and
masks only, no model; nothing is asserted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELS = {"monuseg": "nuclei", "consep": "nuclei"}


def nucleus_haematoxylin(corpus, split: str, source: str) -> list[tuple[int, float]]:
    """``(row, median H optical density in the nuclei)`` per image of ``source`` in ``split`` with a nucleus mask."""
    from pathsegmentor.training.augment import stain_concentrations

    table = corpus.images[split]
    out = []
    for i in range(len(table)):
        if table["source"][i] != source:
            continue
        s = corpus.sample(split, i)
        mask = (s.get("targets") or {}).get(LABELS[source])
        if mask is None or not np.any(mask):
            continue
        h = stain_concentrations(np.asarray(s["image"]))[..., 0]
        out.append((i, float(np.median(h[np.asarray(mask) > 0]))))
    return out


def picture(image: np.ndarray, jitters: list[tuple[float, float]], gains: list[tuple[float, float]], draws: int,
            out: Path, crop: int = 256) -> None:
    from PIL import Image, ImageDraw

    from pathsegmentor.training.augment import haematoxylin_gain, hed_jitter

    y0, x0 = (max((d - crop) // 2, 0) for d in image.shape[:2])
    tile = np.ascontiguousarray(image[y0:y0 + crop, x0:x0 + crop, :3])
    rows = [(f"hed_sigma {s}, hed_bias {b}", [hed_jitter(tile, np.random.default_rng(k), s, b) for k in range(draws)])
            for s, b in jitters]
    rows += [(f"h_gain [{lo}, {hi}]", [haematoxylin_gain(tile, np.random.default_rng(k), 1.0, (lo, hi))
                                       for k in range(draws)]) for lo, hi in gains]
    pad, head = 4, 18
    w = (crop + pad) * (draws + 1) + pad
    canvas = Image.new("RGB", (w, (crop + pad + head) * len(rows) + pad), "white")
    pen = ImageDraw.Draw(canvas)
    for r, (label, drawn) in enumerate(rows):
        top = pad + r * (crop + pad + head)
        tiles = [tile] + drawn
        pen.text((pad, top), f"{label}: the original, then {draws} draws", fill="black")
        for c, t in enumerate(tiles):
            canvas.paste(Image.fromarray(t), (pad + c * (crop + pad), top + head))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO / "runs" / "pathseg-shared"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--source", default="monuseg", choices=sorted(LABELS))
    ap.add_argument("--jitter", type=float, nargs=2, action="append", metavar=("SCALE", "SHIFT"),
                    help="a recipe's data.hed_sigma and data.hed_bias (repeatable; default v10's and v15's)")
    ap.add_argument("--gain", type=float, nargs=2, action="append", metavar=("LOW", "HIGH"), default=[],
                    help="a recipe's data.h_gain (repeatable)")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="PNG of the draws on one crop")
    args = ap.parse_args(argv)
    from data_builders import load_pathseg

    jitters = [tuple(j) for j in (args.jitter or [(0.05, 0.02), (0.2, 0.05)])]
    if any(s < 0 or b < 0 for s, b in jitters):
        ap.error(f"--jitter values must be >= 0, got {jitters}")
    gains = [tuple(g) for g in args.gain]
    if any(not 0 < lo <= hi for lo, hi in gains):
        ap.error(f"--gain needs 0 < LOW <= HIGH, got {gains}")
    corpus = load_pathseg(args.data)
    per_image = nucleus_haematoxylin(corpus, args.split, args.source)
    if not per_image:
        ap.error(f"no {args.source} image with a nucleus mask in split {args.split!r} of {args.data}")
    h = np.array([v for _, v in per_image])
    med = float(np.median(h))
    print(f"{args.source} {args.split}, {len(h)} images: median haematoxylin OD inside the nuclei per image")
    print(f"  min {h.min():.3f}  quartiles {np.quantile(h, 0.25):.3f} / {med:.3f} / {np.quantile(h, 0.75):.3f}"
          f"  max {h.max():.3f}")
    print(f"  as a scale of the median image: {h.min() / med:.2f} to {h.max() / med:.2f}")
    for s, b in jitters:
        print(f"  jitter hed_sigma {s} / hed_bias {b}: haematoxylin scaled {1 - s:.2f} to {1 + s:.2f}, "
              f"shifted by up to {b} OD")
    for lo, hi in gains:
        print(f"  gain h_gain [{lo}, {hi}]: haematoxylin scaled {lo:.2f} to {hi:.2f}, log-uniform (middle "
              f"{np.sqrt(lo * hi):.2f}); on the median image that spans {lo * med:.3f} to {hi * med:.3f} OD")
    if args.out:
        row = min(per_image, key=lambda t: abs(t[1] - med))[0]
        picture(np.asarray(corpus.sample(args.split, row)["image"]), jitters, gains, args.draws, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
