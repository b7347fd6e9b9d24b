"""Estimate EBHI-Seg's unpublished pixel size from nucleus sizes, against MoNuSeg's known 0.25 um/px.

A classical nucleus detector (``skimage.color.rgb2hed`` haematoxylin channel, Otsu threshold, binary opening,
small objects and border objects removed, ``label``, ``regionprops``) gives the median equivalent diameter of the
nuclei of an image (in px). Two estimates:

* **ratio**: ``mpp_ebhi = 0.25 * d_monuseg_px / d_ebhi_px`` (medians over images), the plain comparison;
* **calibrated**: MoNuSeg images are shrunk by a factor s (so they show 0.25 / s um/px) until the *same* detector
  measures the same median diameter on them as on EBHI-Seg; the detector's own scale bias (opening, the small-object
  floor, merged nuclei) then cancels because both are measured at the same pixel scale. ``mpp_ebhi = 0.25 / s``.

The spread is the interquartile range over EBHI-Seg images (per-image median diameter converted through each
estimate) and the per-class medians. As a check of the method, GlaS (nominally 0.5, scanned at 0.62 um/px) is
measured the same way (shared copy of the training images). Run from the repository root::

    python bench/ebhi_pixel_size.py            # about a minute on two cores
    python bench/ebhi_pixel_size.py --per-class 40

Prints a table and a last line of figures. Data from ``../shared/data`` (the project's development copy).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MONUSEG_MPP = 0.25


def nucleus_diameters(rgb: np.ndarray, *, min_area: int = 4, sigma: float = 1.0) -> np.ndarray:
    """Equivalent diameters (px) of the nuclei a classical H-channel detector finds in ``uint8 [H, W, 3]``:
    haematoxylin (``rgb2hed``) smoothed by a Gaussian of ``sigma`` px, Otsu threshold, holes filled, opening with
    a disk of radius 1, objects under ``min_area`` px and objects cut by the border dropped."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import label, regionprops
    from skimage.morphology import disk, opening, remove_small_objects
    from skimage.segmentation import clear_border

    h = rgb2hed(rgb[..., :3])[..., 0]
    if not np.isfinite(h).all() or h.max() - h.min() < 1e-6:
        return np.zeros(0)
    if sigma:
        h = gaussian(h, sigma)
    fg = ndi.binary_fill_holes(h > threshold_otsu(h))
    fg = opening(fg, disk(1))
    fg = remove_small_objects(fg, max_size=min_area - 1)  # drops objects of < min_area px
    fg = clear_border(fg)  # cut nuclei would bias the diameters down
    return np.array([r.equivalent_diameter_area for r in regionprops(label(fg))], float)


def median_diameter(rgb: np.ndarray) -> float:
    d = nucleus_diameters(rgb)
    return float(np.median(d)) if d.size >= 5 else float("nan")


def shrink(rgb: np.ndarray, s: float) -> np.ndarray:
    """``rgb`` resized by ``s`` (< 1 shrinks) with an antialiasing filter (as a lower-magnification camera would)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS))


def read_rgb(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return np.ascontiguousarray(tifffile.imread(str(path))[..., :3])
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def crops(rgb: np.ndarray, size: int) -> list[np.ndarray]:
    """Non-overlapping ``size`` x ``size`` crops (the detector's Otsu threshold is per crop, as on EBHI's 224 px)."""
    h, w = rgb.shape[:2]
    return [rgb[y:y + size, x:x + size] for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]


SCALES = (0.08, 0.1, 0.12, 0.15, 0.18, 0.21, 0.25, 0.3, 0.35, 0.45)  # MoNuSeg/CoNSeP shrink factors


def calibration(images: list[np.ndarray], scales=SCALES) -> np.ndarray:
    """Median nucleus diameter (px) the detector measures on ``images`` shrunk by each of ``scales``."""
    out = []
    for s in scales:
        small = [shrink(im, s) for im in images]
        ds = [median_diameter(c) for im in small for c in (crops(im, 224) or [im])]
        out.append(float(np.nanmedian(ds)))
    return np.array(out)


def invert(curve: np.ndarray, d: float, ref_mpp: float, scales=SCALES) -> float:
    """The pixel size at which the reference shows median diameter ``d`` (interpolated; NaN outside the curve)."""
    mpp = ref_mpp / np.array(scales)
    if not (curve.min() <= d <= curve.max()):
        return float("nan")
    order = np.argsort(curve)
    return float(np.interp(d, curve[order], mpp[order]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--per-class", type=int, default=0, help="EBHI images per class (0: all)")
    p.add_argument("--refs", type=int, default=30, help="reference images per reference set (MoNuSeg, CoNSeP)")
    p.add_argument("--glas", type=int, default=20, help="GlaS images for the method check (0: skip)")
    a = p.parse_args(argv)

    ebhi_root = a.data / "ebhi_seg" / "EBHI-SEG"
    refs_dirs = {"MoNuSeg": (a.data / "monuseg" / "MoNuSegTrainingData" / "Tissue_Images", "*.tif"),
                 "CoNSeP": (a.data / "consep" / "images", "*.png")}
    for d in (ebhi_root, *(v[0] for v in refs_dirs.values())):
        if not d.is_dir():
            raise SystemExit(f"missing data folder {d} (pass --data <folder holding ebhi_seg/, monuseg/, consep/>)")
    ebhi: dict[str, list[float]] = {}
    for cls_dir in sorted(q for q in ebhi_root.iterdir() if (q / "image").is_dir()):
        files = sorted((cls_dir / "image").glob("*.png"))
        if a.per_class:
            files = files[:: max(1, len(files) // a.per_class)][: a.per_class]
        vals = [median_diameter(read_rgb(f)) for f in files]
        ebhi[cls_dir.name] = [v for v in vals if np.isfinite(v)]
    d_all = np.array([v for vs in ebhi.values() for v in vs])
    d_ebhi = float(np.median(d_all))
    q1, q3 = (float(x) for x in np.percentile(d_all, [25, 75]))

    curves, full = {}, {}
    for name, (folder, pattern) in refs_dirs.items():
        imgs = [read_rgb(f) for f in sorted(folder.glob(pattern))[: a.refs]]
        full[name] = (len(imgs), float(np.nanmedian([median_diameter(c) for im in imgs for c in crops(im, 250)])))
        curves[name] = calibration(imgs)

    print("calibration: median nucleus diameter (px) of the reference shrunk to each pixel size")
    print(f"{'um/px':>8}" + "".join(f"{n:>10}" for n in curves))
    for i, s in enumerate(SCALES):
        print(f"{MONUSEG_MPP / s:>8.2f}" + "".join(f"{c[i]:>10.2f}" for c in curves.values()))
    print()
    print(f"{'set':<24}{'images':>7}{'median d':>10}{'ratio':>8}" + "".join(f"{'cal ' + n:>13}" for n in curves))
    for name, (n, d) in full.items():
        print(f"{name + ' at 0.25':<24}{n:>7}{d:>10.2f}{MONUSEG_MPP:>8.3f}")
    d_mon = full["MoNuSeg"][1]
    rows = {**{f"EBHI {c}": (len(v), float(np.median(v))) for c, v in ebhi.items()}, "EBHI all": (d_all.size, d_ebhi)}
    result: dict = {}
    for label, (n, d) in rows.items():
        cal = [invert(c, d, MONUSEG_MPP) for c in curves.values()]
        result[label] = cal
        print(f"{label:<24}{n:>7}{d:>10.2f}{MONUSEG_MPP * d_mon / d:>8.3f}" + "".join(f"{x:>13.3f}" for x in cal))
    iq = {n: (invert(c, q3, MONUSEG_MPP), invert(c, q1, MONUSEG_MPP)) for n, c in curves.items()}
    print(f"{'EBHI images, IQR':<24}{'':>7}{f'{q1:.2f}-{q3:.2f}':>10}{'':>8}"
          + "".join(f"{f'{lo:.2f}-{hi:.2f}':>13}" for lo, hi in iq.values()))
    glas = {}
    glas_dir = a.data / "glas" / "images"
    if a.glas and glas_dir.is_dir():  # method check on a source with a known scan resolution (0.62 um/px)
        g = [read_rgb(f) for f in sorted(glas_dir.glob("*.png"))[: a.glas]]
        sg = 0.5  # shrunk to about EBHI's scale first, as the references are
        dg = float(np.nanmedian([median_diameter(c) for im in g for c in crops(shrink(im, sg), 224)]))
        glas = {n: invert(c, dg, MONUSEG_MPP) * sg for n, c in curves.items()}
        print(f"check: GlaS ({len(g)} images, shrunk x{sg}) median d {dg:.2f} px -> "
              + ", ".join(f"{n} {v:.3f}" for n, v in glas.items()) + " um/px at full size (scanned at 0.620)")
    est = [x for x in result["EBHI all"] if np.isfinite(x)]
    classes = [x for k, v in result.items() if k != "EBHI all" for x in v if np.isfinite(x)]
    print(f"mpp_ebhi calibrated={'/'.join(f'{x:.3f}' for x in result['EBHI all'])} (MoNuSeg/CoNSeP) "
          f"mean={np.mean(est):.3f} class_range={min(classes):.3f}-{max(classes):.3f} "
          f"plain_ratio={MONUSEG_MPP * d_mon / d_ebhi:.3f} glas_check={'/'.join(f'{v:.3f}' for v in glas.values())}")
    return {"calibrated": result, "glas_check": glas, "iqr": iq}


if __name__ == "__main__":
    main()
