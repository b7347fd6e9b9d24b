"""Point/box prompts answered through the instance decoder (inference.geometric_mode = "instances")."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pathsegmentor.inference.geometric_instances import answer_geometric
from pathsegmentor.inference.prompts import PromptResolution
from pathsegmentor.modeling.inference_config import InferenceConfig


def _scene():
    """A 200² image with two touching nuclei (ids 1, 2) and one gland, as the window predictions."""
    yy, xx = np.mgrid[:200, :200]
    nuclei = np.zeros((200, 200), np.int32)
    nuclei[(yy - 50) ** 2 + (xx - 50) ** 2 <= 100] = 1
    nuclei[(yy - 50) ** 2 + (xx - 68) ** 2 <= 100] = 2
    gland = np.zeros((200, 200), np.int32)
    gland[120:180, 100:190] = 1
    return {"nuclei": nuclei, "gland": gland}


def _runner(scene, calls):
    def run(window, prompt, with_instances=True):  # stands in for segment(): the window is the whole 200² image
        calls.append((window.shape, prompt))
        lab = scene.get(prompt, np.zeros((200, 200), np.int32))[: window.shape[0], : window.shape[1]]
        res = PromptResolution(prompt, prompt, prompt, "exact", "same", 1.0)
        return SimpleNamespace(masks=(lab > 0)[None], instances=lab[None], presence=np.array([1.0 if lab.any() else 0.0]),
                               resolutions=[res])
    return run


@pytest.fixture()
def model():
    pre = SimpleNamespace(mpp=0.5, structure_mpp={"cell": 0.25})
    inf = InferenceConfig(geometric_window=400)  # windows larger than the image: the whole 200² image
    return SimpleNamespace(config=SimpleNamespace(preprocess=pre, inference=inf))


def _answer(model, calls, **kw):
    kw.setdefault("text", None)
    kw.setdefault("box", None)
    kw.setdefault("point", None)
    return answer_geometric(model, np.zeros((200, 200, 3), np.uint8), mpp=0.25, run=_runner(_scene(), calls),
                            answerable={"nuclei", "gland"}, **kw)


def test_a_point_returns_the_one_touching_nucleus_under_it_or_next_to_it(model):
    calls = []
    scene = _scene()
    mask, presence, _, how = _answer(model, calls, point=np.array([70.0, 50.0]))
    assert np.array_equal(mask, scene["nuclei"] == 2) and presence == 1.0 and "under the point" in how
    mask, _, _, _ = _answer(model, calls, point=np.array([50.0, 62.0]))  # 2 px below nucleus 1's rim
    assert np.array_equal(mask, scene["nuclei"] == 1)
    mask, presence, _, how = _answer(model, calls, point=np.array([150.0, 150.0]))  # no nucleus: the gland
    assert np.array_equal(mask, scene["gland"] > 0) and [c[1] for c in calls[-2:]] == ["nuclei", "gland"]
    mask, presence, _, how = _answer(model, calls, point=np.array([10.0, 190.0]))  # nothing there
    assert not mask.any() and presence == 0.0 and "no nuclei or gland" in how


def test_a_box_returns_the_object_that_fills_it_clipped_and_text_box_the_category_inside(model):
    calls = []
    scene = _scene()
    # 30 px = 7.5 µm at 0.25 µm/px: a nucleus box; it frames nucleus 2 (and touches nucleus 1)
    mask, _, _, how = _answer(model, calls, box=np.array([58.0, 40.0, 79.0, 61.0]))
    assert calls[-1][1] == "nuclei" and np.array_equal(mask, scene["nuclei"] == 2) and "fills the box" in how
    small = np.array([100.0, 110.0, 190.0, 190.0])  # 90 px = 22.5 µm: a cell box, and no nucleus in it
    mask, _, _, _ = _answer(model, calls, box=small)
    assert calls[-1][1] == "nuclei" and not mask.any()
    big = np.array([90.0, 115.0, 195.0, 185.0])  # 105 px = 26 µm: a gland box
    mask, _, _, _ = _answer(model, calls, box=big)
    assert calls[-1][1] == "gland" and np.array_equal(mask, scene["gland"] > 0)
    clipped = np.array([100.0, 120.0, 150.0, 180.0])  # text + box: the category inside the box only
    mask, presence, res, how = _answer(model, calls, text="gland", box=clipped)
    inside = np.zeros_like(mask)
    inside[120:180, 100:150] = True
    assert np.array_equal(mask, (scene["gland"] > 0) & inside) and res.answered_as == "gland" and "inside the box" in how
    mask, _, res, how = _answer(model, calls, text="nuclei", point=np.array([70.0, 50.0]))  # text + point
    assert np.array_equal(mask, scene["nuclei"] == 2) and res.answered_as == "nuclei" and "under the point" in how


def test_segment_with_geometric_mode_instances_reports_how(test_model, monkeypatch):
    img = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    monkeypatch.setattr(test_model.config.inference, "geometric_mode", "instances")
    res = test_model.segment(img, points=np.array([[[40.0, 40.0]]]), point_labels=np.array([[1]]))
    assert res.masks.shape == (1, 96, 96) and res.masks.dtype == bool
    assert "geometric_mode 'instances'" in res.resolutions[0].reason
    res = test_model.segment(img, ["nuclei"], boxes=np.array([10.0, 10.0, 50.0, 50.0]))
    assert not res.masks[0][60:, :].any() and not res.masks[0][:, 60:].any()  # nothing outside the box
    monkeypatch.setattr(test_model.config.inference, "geometric_box", "component")  # no instance decoding needed
    res = test_model.segment(img, boxes=np.array([10.0, 10.0, 50.0, 50.0]))
    assert not res.masks[0][60:, :].any() and not res.masks[0][:, 60:].any()  # nothing outside the box
    assert "geometric_mode 'instances'" in res.resolutions[0].reason
    monkeypatch.setattr(test_model.config.inference, "geometric_box", "nearest")  # refused before any decoding
    with pytest.raises(ValueError, match="geometric_box is 'nearest'"):
        test_model.segment(img, points=np.array([[[40.0, 40.0]]]), point_labels=np.array([[1]]))
    monkeypatch.setattr(test_model.config.inference, "geometric_box", "best_instance")
    monkeypatch.setattr(test_model.config.inference, "geometric_mode", "magic")
    with pytest.raises(ValueError, match="geometric_mode is 'magic'.*instances"):
        test_model.segment(img, points=np.array([[[40.0, 40.0]]]), point_labels=np.array([[1]]))


def test_box_rules_pick_the_boxed_object_by_instances_or_mask_parts():
    from pathsegmentor.inference.geometric_instances import BOX_RULES, box_object

    # one gland split into two instances (left/right parts), a neighbour poking into the box's corner
    labels = np.zeros((40, 40), np.int32)
    labels[12:30, 12:20], labels[12:30, 20:30] = 1, 2
    labels[0:12, 0:12] = 3
    mask = labels > 0
    box = (10.0, 10.0, 30.0, 30.0)
    gland = np.zeros((40, 40), bool)
    gland[12:30, 12:30] = True
    best = box_object(labels, mask, box, "best_instance")
    assert (best == (labels == 2)).all()  # the larger part only: a split gland costs this rule the rest
    contained = box_object(labels, mask, box, "contained_instances")
    assert (contained == gland).all()  # both parts, not the neighbour (4 of its 144 px inside)
    assert box_object(labels, mask, box, "mask").sum() == 324 + 4  # the neighbour's corner comes along
    assert (box_object(labels, mask, box, "component") == gland).all()  # the corner does not touch the gland
    assert box_object(labels, np.zeros_like(mask), box, "mask") is None
    assert box_object(np.zeros_like(labels), np.zeros_like(mask), box, "contained_instances") is None
    with pytest.raises(ValueError, match="geometric_box is 'nearest'.*best_instance"):
        box_object(labels, mask, box, "nearest")
    assert set(BOX_RULES) == {"best_instance", "contained_instances", "component", "mask"}


@pytest.mark.parametrize("mode", ["instances", "learned"])
def test_box_or_point_wholly_outside_the_image_is_refused_with_its_size(test_model, monkeypatch, mode):
    img = np.random.default_rng(0).integers(0, 255, (96, 120, 3), dtype=np.uint8)
    monkeypatch.setattr(test_model.config.inference, "geometric_mode", mode)
    for kw in ({"boxes": np.array([130.0, 10.0, 160.0, 40.0])},  # right of the image
               {"boxes": np.array([10.0, -50.0, 40.0, 0.0])},  # above it, touching the edge only
               {"points": np.array([[[10.0, 200.0]]]), "point_labels": np.array([[1]])},
               {"points": np.array([[[-5.0, 10.0], [130.0, 10.0]]]), "point_labels": np.array([[1, 0]])}):
        with pytest.raises(ValueError, match=r"wholly outside the 120x96 image \(width x height"):
            test_model.segment(img, **kw)
        with pytest.raises(ValueError, match="wholly outside the 120x96 image"):
            test_model.segment(img, ["nuclei"], **kw)
    # partly inside is a prompt about the image: answered
    res = test_model.segment(img, boxes=np.array([100.0, 80.0, 160.0, 140.0]))
    assert res.masks.shape == (1, 96, 120)
    res = test_model.segment(img, points=np.array([[[10.0, 10.0], [500.0, 10.0]]]), point_labels=np.array([[1, 0]]))
    assert res.masks.shape == (1, 96, 120)


def test_presence_threshold_of_the_caller_reaches_the_box_and_point_path(test_model, monkeypatch):
    """The random model's presence (~0.45) is under its 0.5 default: text + box is empty by default, and answered
    with the caller's presence_threshold=0.1 (the reported threshold is the caller's)."""
    img = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    monkeypatch.setattr(test_model.config.inference, "geometric_mode", "instances")
    monkeypatch.setattr(test_model.config.inference, "geometric_box", "mask")
    box = np.array([10.0, 10.0, 80.0, 80.0])
    default = test_model.segment(img, ["nuclei"], boxes=box)
    assert default.thresholds["presence"] == 0.5 and not default.masks.any()
    assert 0.1 < float(default.presence[0]) < 0.5
    low = test_model.segment(img, ["nuclei"], boxes=box, presence_threshold=0.1, mask_threshold=0.3)
    assert low.thresholds == {"mask": 0.3, "presence": 0.1}
    assert low.masks.any() and not low.masks[0][81:, :].any() and not low.masks[0][:, 81:].any()
