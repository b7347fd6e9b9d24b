"""The shipped pathsegmentor-tiny (v2) weights on the bundled real tiles: a nucleus tile (instances found),
a gland tile, a refused prompt, a paraphrase and an EBHI-Seg tile."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pathsegmentor.evaluation.metrics import dice

SAMPLES = Path(__file__).resolve().parent.parent / "pathsegmentor" / "samples"
WEIGHTS = Path(__file__).resolve().parent.parent / "pathsegmentor" / "weights" / "pathsegmentor-tiny"


@pytest.fixture(scope="module")
def tiny():
    from pathsegmentor import PathSegmentor

    assert (WEIGHTS / "model.safetensors").is_file(), "the trained weights must ship inside the package"
    return PathSegmentor.from_pretrained("pathsegmentor-tiny")


def _sample(name_prefix: str):
    from PIL import Image

    meta = json.loads((SAMPLES / "samples.json").read_text())["samples"]
    s = next(m for m in meta if m["name"].startswith(name_prefix))
    return np.asarray(Image.open(SAMPLES / s["file"]).convert("RGB")), s["mpp"]


def test_loads_offline_with_separation_head_and_resolution_per_concept(tiny):
    assert tiny.name == "pathsegmentor-tiny" and tiny.has_separation
    assert tiny.config.preprocess.mpp == 0.5 and tiny.config.preprocess.structure_mpp == {"cell": 0.25}
    assert 0.0 < tiny.config.inference.presence_threshold < 1.0
    assert "nuclei" in tiny.config.vocabulary and "gland" in tiny.config.vocabulary


def test_nucleus_tile_gives_separated_instances(tiny):
    img, mpp = _sample("monuseg")
    res = tiny.segment(img, ["nuclei", "gland"], mpp=mpp)
    nuclei = res.masks[0]
    assert 0.05 < nuclei.mean() < 0.7, f"nuclei mask covers {nuclei.mean():.1%} of a MoNuSeg tile"
    assert res.presence[0] > 0.5
    n = res.instance_counts[0]
    assert n is not None and n >= 40, n  # a 512x512 40x crop holds well over a hundred nuclei
    areas = np.bincount(res.instances[0].ravel())[1:]
    areas = areas[areas > 0]
    # separated objects, not a few merged clusters: the largest object is a small part of the mask
    assert areas.max() < 0.05 * nuclei.sum(), (areas.max(), nuclei.sum())
    # "gland" on a nucleus tile still overlaps the nuclei (cross-category Dice is a missed target, see the model
    # card); this only checks that the prompt changes the answer
    assert dice(res.masks[1], nuclei) < 0.8


def test_gland_tile(tiny):
    img, mpp = _sample("glas")
    res = tiny.segment(img, ["gland", "nuclei"], mpp=mpp)
    assert 0.1 < res.masks[0].mean() < 0.95
    assert dice(res.masks[0], res.masks[1]) < 0.5
    assert res.instance_counts[0] is not None and res.instance_counts[0] >= 1


def test_refused_prompt_and_paraphrase(tiny):
    img, mpp = _sample("consep")
    res = tiny.segment(img, ["a red sports car", "tumour cells", "tumor nuclei"], mpp=mpp)
    refused, para, canon = res.resolutions
    assert not refused.answered and res.presence[0] == 0 and not res.masks[0].any()
    assert len(refused.suggestions) == 3 and any("a red sports car" in w for w in res.warnings)
    assert para.concept == "tumor nuclei" and para.answered
    assert dice(res.masks[1], res.masks[2]) > 0.9  # the paraphrase gives its concept's mask


def test_ebhi_seg_tile(tiny):
    img, mpp = _sample("ebhi")
    res = tiny.segment(img, "tumor", mpp=mpp)
    assert res.presence[0] > 0.5 and res.masks[0].mean() > 0.1  # an adenocarcinoma biopsy: tumour present
    # the pixel size unknown, as a user with these camera images would have it: v4 answers it through the estimate
    # (mpp="auto"); read at its native pixels it finds no tumour on this biopsy (v3 did; MODEL_CARD.md, v4 results)
    auto = tiny.segment(img, "tumor", mpp="auto")
    assert auto.presence[0] > 0.5 and auto.masks[0].mean() > 0.1
    assert any("estimated" in w or "auto" in w for w in auto.warnings)
