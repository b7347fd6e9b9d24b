"""The real data in ../shared/data built end to end with configs/data/shared.yaml."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_builders import build, load_pathseg
from data_builders.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RECIPE = REPO / "configs" / "data" / "shared.yaml"


@pytest.fixture(scope="module")
def recipe():
    if not SHARED.is_dir():
        pytest.skip(f"real data not available at {SHARED} (only in the project's CI/dev checkout)")
    return load_recipe(RECIPE)


def _check_corpus(out: Path, monuseg_xml: bool) -> None:
    c = load_pathseg(out)
    assert set(c.splits) == {"train", "validation"}
    # no patient in two splits (MoNuSeg: patient = first 12 characters of the TCGA barcode)
    per_split = {sp: set(zip(c.images[sp]["source"], c.images[sp]["patient_id"])) for sp in c.splits}
    assert not (per_split["train"] & per_split["validation"])  # (source, patient) never in two splits
    mon = [(sp, i) for sp in c.splits for i, s in enumerate(c.images[sp]["source"]) if s == "monuseg"]
    ids = {sp: c.images[sp]["sample_id"] for sp in c.splits}
    for sp, i in mon:
        assert c.images[sp]["patient_id"][i] == ids[sp][i][:12]
    mon_pats = {sp: {p for p, s in zip(c.images[sp]["patient_id"], c.images[sp]["source"]) if s == "monuseg"}
                for sp in c.splits}
    assert mon_pats["validation"] and not (mon_pats["train"] & mon_pats["validation"])
    # bit-exact round trip of a MoNuSeg, a GlaS, a CoNSeP and an EBHI-Seg sample
    seen = set()
    for sp, i in [(sp, i) for sp in c.splits for i in range(len(c.images[sp]))]:
        src = c.images[sp].data.column("source")[i].as_py()
        if src in seen:
            continue
        seen.add(src)
        s = c.sample(sp, i)
        if src == "ebhi_seg":  # sample_id "<class slug>/<stem>"; the label thresholded at 127 is the class's mask
            from data_builders.sources.ebhi_seg import CLASSES, slug

            cls_slug, stem = s["sample_id"].split("/")
            cls = {slug(k): k for k in CLASSES}[cls_slug]
            folder = SHARED / "ebhi_seg/EBHI-SEG" / cls
            assert np.array_equal(s["image"], np.asarray(Image.open(folder / "image" / f"{stem}.png").convert("RGB")))
            lab = np.asarray(Image.open(folder / "label" / f"{stem}.png")) > 127
            assert np.array_equal(s["targets"]["tumor" if cls == "Adenocarcinoma" else "gland"], lab)
            continue
        root = {"monuseg": SHARED / "monuseg/MoNuSegTrainingData/Tissue_Images",
                "glas": SHARED / "glas/images", "consep": SHARED / "consep/images"}[src]
        name = s["sample_id"] + (".tif" if src == "monuseg" else ".png")
        if src == "monuseg":
            import tifffile

            orig = tifffile.imread(str(root / name))[..., :3]
        else:
            orig = np.asarray(Image.open(root / name).convert("RGB"))
        x0, y0, x1, y1 = s["tile_box"]
        assert np.array_equal(s["image"], orig[y0:y1, x0:x1])
        if src == "consep":
            tm = np.asarray(Image.open(SHARED / "consep/type_maps" / name))[y0:y1, x0:x1]
            assert np.array_equal(s["targets"]["nuclei"], tm > 0)
            if (tm == 4).any():
                assert np.array_equal(s["targets"]["tumor nuclei"], tm == 4)
        if src == "glas":
            gm = np.asarray(Image.open(SHARED / "glas/masks" / name))[y0:y1, x0:x1]
            assert np.array_equal(s["targets"]["gland"], gm > 0) and s["instances"]["gland"].max() >= 1
        if src == "monuseg":
            b = np.asarray(Image.open(SHARED / "monuseg/MoNuSegTrainingData/Binary_masks" / name.replace(".tif", ".png")))
            x = s["targets"]["nuclei"]
            iou = (x & (b > 0)).sum() / (x | (b > 0)).sum()
            assert iou > 0.85, iou
    assert seen == {"monuseg", "glas", "consep", "ebhi_seg"}
    if monuseg_xml:
        anns = {}
        for sp in c.splits:
            for sid, src in zip(c.images[sp]["sample_id"], c.images[sp]["source"]):
                anns[sid] = src
        assert "TCGA-B0-5710-01Z-00-DX1" in anns and "TCGA-CH-5767-01Z-00-DX1" in anns
    cats = {lb for sp in c.splits for lb in c.triples[sp]["label"]}
    assert {"nuclei", "gland", "tumor nuclei", "inflammatory nuclei", "fibroblast nuclei", "epithelial nuclei",
            "spindle-shaped nuclei"} <= cats


def test_shared_subset_builds(recipe, tmp_path):
    sources, options, base = recipe
    sources = {k: dict(v) for k, v in sources.items()}
    out = build(sources, tmp_path / "corpus", base_dir=base, progress=False, **{**options, "limit": 3})
    _check_corpus(out, monuseg_xml=False)
    m = load_pathseg(out).manifest
    assert m["sources"]["monuseg"]["items"] == 3 and m["rejects"] == 0


@pytest.mark.slow
def test_shared_full_build(recipe, tmp_path):
    import time

    sources, options, base = recipe
    t = time.time()
    out = build(sources, tmp_path / "corpus", base_dir=base, progress=False, **options)
    print(f"full shared build: {time.time() - t:.1f} s")
    _check_corpus(out, monuseg_xml=True)
    c = load_pathseg(out)
    assert sum(len(c.images[s]) for s in c.splits) == 30 + 85 + 27 + 516
    assert c.manifest["rejects"] == 0
