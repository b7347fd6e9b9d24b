"""Two models' per-image figures side by side, paired: is a candidate's change larger than the tiles' noise?

    python bench/paired_rows.py REFERENCE_ROWS.csv CANDIDATE_ROWS.csv [--prompt nuclei] [--prompt gland] \
        [--source monuseg --source consep --source glas]

Both files are ``rows.csv`` of ``pathsegmentor evaluate`` on the same split (one row per image and prompt). For every
source and prompt both answered on the same images, it prints per image the reference's and the candidate's pixel Dice
and AJI, then the mean paired difference (candidate minus reference), its standard error over the images, the ratio t
of the two and how many images rose. On six MoNuSeg or five CoNSeP validation tiles a mean change under about twice its
standard error is what another seed could give; a shipping rule that compares means alone reads noise. Reads the two
files only, no model; nothing is asserted.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def _dice(row) -> float:
    tp, fp, fn = float(row["tp"]), float(row["fp"]), float(row["fn"])
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def paired(reference, candidate, source: str, prompt: str) -> list[tuple[str, dict[str, float], dict[str, float]]]:
    """``(image_id, reference figures, candidate figures)`` for every image of ``source`` where both answered
    ``prompt`` as a positive row; figures: ``dice`` and, where the rows have it, ``aji``."""
    def pick(df):
        r = df[(df["source"] == source) & (df["kind"] == "positive") & (df["prompt"] == prompt)]
        return {row["image_id"]: row for _, row in r.iterrows()}

    a, b = pick(reference), pick(candidate)
    out = []
    for image_id in sorted(set(a) & set(b)):
        fa = {"dice": _dice(a[image_id])}
        fb = {"dice": _dice(b[image_id])}
        ajis = [float(r[image_id].get("aji", float("nan"))) for r in (a, b)]
        if not any(math.isnan(v) for v in ajis):
            fa["aji"], fb["aji"] = ajis
        out.append((image_id, fa, fb))
    return out


def summary(pairs, key: str) -> dict[str, float] | None:
    """Mean paired difference of ``key``, its standard error, t = mean / SE, images that rose; None without pairs."""
    d = [fb[key] - fa[key] for _, fa, fb in pairs if key in fa]
    if not d:
        return None
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else float("nan")
    se = sd / math.sqrt(n) if n > 1 else float("nan")
    return {"n": n, "mean": mean, "se": se, "t": mean / se if se and se == se else float("nan"),
            "rose": sum(x > 0 for x in d)}


def describe(s: dict[str, float]) -> str:
    """One :func:`summary` in words: ``mean change +0.0123 ± 0.0045 (SE), t +2.73, rose on 5 of 6``."""
    return f"mean change {s['mean']:+.4f} ± {s['se']:.4f} (SE), t {s['t']:+.2f}, rose on {s['rose']} of {s['n']}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reference")
    ap.add_argument("candidate")
    ap.add_argument("--prompt", action="append", default=[])
    ap.add_argument("--source", action="append", default=[])
    args = ap.parse_args(argv)
    import pandas as pd

    for path in (args.reference, args.candidate):
        if not Path(path).is_file():
            raise SystemExit(f"{path}: no such file. Give the rows.csv that `pathsegmentor evaluate --out DIR` writes "
                             "(DIR/rows.csv)")
    ref, cand = pd.read_csv(args.reference), pd.read_csv(args.candidate)
    for name, df in (("reference", ref), ("candidate", cand)):
        missing = {"image_id", "source", "kind", "prompt", "tp", "fp", "fn"} - set(df.columns)  # aji: instance rows only
        if missing:
            raise SystemExit(f"{name} {getattr(args, name)} lacks the columns {sorted(missing)}: it is not a rows.csv "
                             "of `pathsegmentor evaluate`")
    sources = args.source or ["monuseg", "consep", "glas"]
    prompts = args.prompt or ["nuclei", "gland"]
    for source in sources:
        for prompt in prompts:
            pairs = paired(ref, cand, source, prompt)
            if not pairs:
                continue
            print(f"\n{source}, {prompt!r}: {len(pairs)} images (reference -> candidate)")
            for image_id, fa, fb in pairs:
                aji = f", AJI {fa['aji']:.3f} -> {fb['aji']:.3f}" if "aji" in fa else ""
                print(f"  {image_id}: Dice {fa['dice']:.3f} -> {fb['dice']:.3f}{aji}")
            for key in ("dice", "aji"):
                s = summary(pairs, key)
                if s:
                    print(f"  {key}: {describe(s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
