"""Where a model's "nuclei" masks lose: their boundary, and the stain of the tiles (diagnostics, nothing is chosen here).

    python bench/nuclei_diagnostics.py boundary [--model M] [--split train] [--source monuseg] [--grow -1 0 1 2]
    python bench/nuclei_diagnostics.py stain [--model M] [--split train] [--source monuseg] [--normalise | --gain G]

* ``boundary``: each image's "nuclei" instances (the model's shipped decoder) grown or shrunk by ``--grow`` px
  (grown: every background pixel within r px takes its nearest instance, so touching instances never merge; shrunk:
  pixels within r px of the background dropped). Prints pooled pixel precision, recall and Dice, and the mean AJI
  where the source has instances. A model whose masks sit on the annotated boundary loses Dice and AJI either way;
  one whose recall trails its precision with Dice rising at +1 px draws its nuclei too small.
* ``stain``: per image the haematoxylin optical density (``training.augment.stain_concentrations``) of the
  nucleus pixels (median and 10th percentile) and the tile's 99th percentile. With ``--normalise`` also the
  model's Dice and AJI with each tile's haematoxylin scaled so its 99th percentile meets the median of the images
  read (``--up-only``: pale tiles darkened, dark ones left), paired against the raw tile: does a pale tile lose
  because it is pale? With ``--gain G`` every tile's haematoxylin is multiplied by ``G`` instead (``0.5``: training
  tiles made as pale as pale validation ones): does the model lose its nuclei when they pale?
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def grow_labels(labels: np.ndarray, r: int) -> np.ndarray:
    """``int [h, w]`` instance labels (0 background) grown by ``r`` px (r > 0; nearest instance, no merging) or
    shrunk by ``-r`` px (r < 0); r = 0 returns them as they are."""
    from scipy import ndimage as ndi

    if r == 0 or not labels.any():
        return labels
    if r > 0:
        dist, (iy, ix) = ndi.distance_transform_edt(labels == 0, return_indices=True)
        out = labels[iy, ix]
        out[dist > r] = 0
        return out
    # distance to the background or to another instance, so touching instances shrink apart as well
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    inside = ndi.distance_transform_edt(~(edge | (labels == 0)))
    return np.where(inside >= -r, labels, 0)


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """``float [h, w]`` haematoxylin optical density of ``uint8 [h, w, 3]`` RGB (the colour deconvolution the
    training augmentation uses, :func:`pathsegmentor.training.augment.stain_concentrations`)."""
    from pathsegmentor.training.augment import stain_concentrations

    return stain_concentrations(rgb)[..., 0]


def _samples(corpus, split: str, source: str):
    """The corpus samples of ``source`` in ``split`` that carry a "nuclei" target."""
    table = corpus.images[split]
    for i in range(len(table)):
        if table["source"][i] == source:
            s = corpus.sample(split, i)
            if "nuclei" in s["targets"]:
                yield s


def boundary(model, samples, grows: list[int]) -> None:
    """Prints, per growth in ``grows`` (px), the pooled pixel precision / recall / Dice of the model's "nuclei"
    instances grown by it over ``samples``, and their mean AJI where the samples have instances."""
    from pathsegmentor.evaluation.metrics import Counts, aggregated_jaccard_index, confusion, scores

    acc = {g: Counts() for g in grows}
    ajis: dict[int, list[float]] = {g: [] for g in grows}
    for s in samples:
        r = model.segment(s["image"], ["nuclei"], mpp=s.get("mpp"))
        labels = r.instances[0] if r.instances is not None else None
        if labels is None:
            from scipy import ndimage as ndi

            labels = ndi.label(r.masks[0])[0]
        inst = (s.get("instances") or {}).get("nuclei")
        for g in grows:
            grown = grow_labels(np.asarray(labels), g)
            acc[g] = acc[g] + confusion(grown > 0, s["targets"]["nuclei"])
            if inst is not None:
                ajis[g].append(aggregated_jaccard_index(np.asarray(inst), grown))
    for g in grows:
        f = scores(acc[g])
        aji = f", mean AJI {np.mean(ajis[g]):.4f} ({len(ajis[g])} images)" if ajis[g] else ""
        print(f"grow {g:+d} px: precision {f['precision']:.3f}, recall {f['recall']:.3f}, Dice {f['dice']:.4f}{aji}")


def stain(model, samples, normalise: bool, up_only: bool, fixed_gain: float | None = None) -> None:
    """Prints each sample's haematoxylin density in its nuclei and its tile's 99th percentile; with ``normalise``
    the model's Dice and AJI on the raw and the H-normalised tile, or with ``fixed_gain`` on the tile with its
    haematoxylin multiplied by that gain (``model`` may be None without either)."""
    from pathsegmentor.evaluation.metrics import aggregated_jaccard_index, dice
    from pathsegmentor.training.augment import scale_haematoxylin

    samples = list(samples)
    stats = {}  # one deconvolution per tile: its nuclei's median and 10th percentile, the tile's 99th percentile
    for s in samples:
        h = haematoxylin(s["image"])
        nuc = np.asarray(s["targets"]["nuclei"]) > 0
        stats[s["image_id"]] = (float(np.median(h[nuc])), float(np.percentile(h[nuc], 10)), float(np.percentile(h, 99)))
    ref = float(np.median([v[2] for v in stats.values()]))
    print(f"reference: the median of the tiles' 99th-percentile haematoxylin density, {ref:.4f}")
    change = []
    for s in samples:
        med, p10, p99 = stats[s["image_id"]]
        nuc = np.asarray(s["targets"]["nuclei"]) > 0
        line = f"{s['image_id']}: nucleus H median {med:.3f}, p10 {p10:.3f}; tile p99 {p99:.3f}"
        if normalise or fixed_gain is not None:
            inst = (s.get("instances") or {}).get("nuclei")
            if fixed_gain is not None:
                gain = fixed_gain
            else:
                gain = ref / p99 if p99 > 0 else 1.0
                gain = max(gain, 1.0) if up_only else gain
            figs = []
            for rgb in (s["image"], scale_haematoxylin(s["image"], gain)) if gain != 1.0 else (s["image"],):
                r = model.segment(rgb, ["nuclei"], mpp=s.get("mpp"))
                d = dice(r.masks[0], nuc)
                a = aggregated_jaccard_index(np.asarray(inst), r.instances[0]) if inst is not None else float("nan")
                figs.append((d, a))
            figs *= 3 - len(figs)  # a tile left as it is is segmented once
            change.append((figs[1][0] - figs[0][0], figs[1][1] - figs[0][1]))
            line += (f"; gain {gain:.2f}: Dice {figs[0][0]:.3f} -> {figs[1][0]:.3f}, "
                     f"AJI {figs[0][1]:.3f} -> {figs[1][1]:.3f}")
        print(line)
    if change:
        c = np.array(change)
        se = c.std(0, ddof=1) / np.sqrt(len(c)) if len(c) > 1 else np.full(2, np.nan)
        what = "scaled" if fixed_gain is not None else "normalised"
        print(f"{what} minus raw over {len(c)} images: Dice {c[:, 0].mean():+.4f} ± {se[0]:.4f}, "
              f"AJI {np.nanmean(c[:, 1]):+.4f} ± {se[1]:.4f} (SE)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("boundary", "stain"))
    ap.add_argument("--model", default="pathsegmentor-tiny")
    ap.add_argument("--data", default=str(REPO / "runs" / "pathseg-shared"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--source", default="monuseg")
    ap.add_argument("--grow", type=int, nargs="+", default=[-1, 0, 1, 2])
    ap.add_argument("--normalise", action="store_true")
    ap.add_argument("--up-only", action="store_true")
    ap.add_argument("--gain", type=float, default=None, help="multiply every tile's haematoxylin by this instead")
    args = ap.parse_args(argv)
    import torch

    from data_builders import load_pathseg
    from pathsegmentor import PathSegmentor

    torch.set_num_threads(2)
    # the tiles' stain alone needs no model
    needs_model = args.what == "boundary" or args.normalise or args.gain is not None
    model = PathSegmentor.from_pretrained(args.model).eval() if needs_model else None
    samples = _samples(load_pathseg(args.data), args.split, args.source)
    print(f"{args.model if model is not None else 'no model'}, {args.source} {args.split}, {args.what}")
    if args.what == "boundary":
        boundary(model, samples, args.grow)
    else:
        stain(model, samples, args.normalise, args.up_only, args.gain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
