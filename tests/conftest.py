"""Shared test fixtures. Tests run on CPU, offline; heavy ones are marked ``slow``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pathsegmentor._compat import ensure_torchvision

ensure_torchvision()  # before anything imports segment_anything / timm / open_clip / transformers

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def shared_data(*parts: str) -> Path:
    """A path under ``../shared/data``; skips the test with the reason when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available at {p} (only in the project's CI/dev checkout)")
    return p


@pytest.fixture(scope="session")
def test_model():
    """The registered random ``pathsegmentor-test`` model in eval mode (shared: do not modify it)."""
    import torch

    from pathsegmentor import create_model

    torch.manual_seed(0)
    return create_model("pathsegmentor-test").eval()


@pytest.fixture(scope="session")
def present_test_model(test_model):
    """A copy of ``test_model`` whose presence threshold is 0: every window judges every prompt present (the
    random model's presence is about 0.45, under its 0.5), so masks show where the probabilities pass."""
    import copy

    model = copy.deepcopy(test_model)
    model.__dict__.pop("_predictor", None)  # a fresh predictor for the copy
    model.config.inference.presence_threshold = 0.0
    return model


@pytest.fixture(scope="session")
def test_model_dir(test_model, tmp_path_factory):
    """``test_model`` saved with ``save_pretrained``."""
    d = tmp_path_factory.mktemp("pathsegmentor-test-model")
    test_model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    """The synthetic fixture slide of the slide tests (layout in slide_helpers.py), written once per module."""
    from slide_helpers import slide_spec

    from pathsegmentor.slide.synthetic import write_slide

    return write_slide(tmp_path_factory.mktemp("slide") / "case.tif", slide_spec())


@pytest.fixture(scope="module")
def one_thread():
    """The test model is tiny: one thread is fastest and avoids oversubscribing shared CPUs (slide tests)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    """A PathSeg corpus of 8 synthetic folder-source images (96 px), built once per module (training tests)."""
    from data_builders import build
    from data_builders.synthetic import write_folder_dataset

    source = write_folder_dataset(tmp_path_factory.mktemp("folder_src"), n=8, size=96)
    out = tmp_path_factory.mktemp("corpus") / "pathseg"
    build({"folder": source}, out, val_fraction=0.25, tile=1024, seed=0)
    return out
