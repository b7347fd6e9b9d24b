"""Oversized parts of nucleus/cell masks (inference.max_cell_component_um2)."""
import numpy as np

from pathsegmentor.inference.plausibility import drop_oversized, is_cell_concept, oversized_parts
from pathsegmentor.modeling.inference_config import InferenceConfig


def _blobs():
    mask = np.zeros((200, 200), bool)
    mask[10:20, 10:20] = True  # a nucleus: 100 px
    mask[30:40, 30:40] = True
    mask[100:190, 100:190] = True  # an ink blot: 8100 px
    return mask


def test_oversized_parts_are_the_connected_parts_over_the_limit():
    mask = _blobs()
    big = oversized_parts(mask, 1000)
    assert big.sum() == 8100 and big[150, 150] and not big[15, 15]
    assert not oversized_parts(mask, 10_000).any()
    assert not oversized_parts(np.zeros((5, 5), bool), 1).any()


def test_drop_oversized_only_touches_cell_concepts_and_their_instances():
    inf = InferenceConfig()
    assert is_cell_concept("nuclei", inf) and not is_cell_concept("gland", inf) and not is_cell_concept(None, inf)
    masks = np.stack([_blobs(), _blobs(), _blobs()])
    inst = np.zeros(masks.shape, np.int32)
    inst[:, 10:20, 10:20], inst[:, 100:190, 100:190] = 1, 2
    # 0.25 µm/px: 0.0625 µm² per px; 5000 µm² = 80 000 px keeps everything, 100 µm² = 1600 px drops the blot
    removed = drop_oversized(masks, inst, ["nuclei", "gland", None], [0.0625] * 3,
                             InferenceConfig(max_cell_component_um2=100.0))
    assert removed[0] == 8100 * 0.0625 and removed[1] == removed[2] == 0.0
    assert not masks[0, 150, 150] and masks[0, 15, 15] and inst[0, 150, 150] == 0 and inst[0, 15, 15] == 1
    assert masks[1, 150, 150] and inst[1, 150, 150] == 2  # a gland may be that large
    before = masks.copy()
    assert drop_oversized(masks, None, ["nuclei"] * 3, [0.0625] * 3, InferenceConfig()) == [0.0] * 3  # 0: off
    assert (masks == before).all()


def test_segment_applies_the_limit_from_the_model_config(test_model, monkeypatch):
    img = np.full((96, 96, 3), 230, np.uint8)
    res = test_model.segment(img, ["nuclei", "gland"], mpp=0.5, vocabulary="open", instances="none",
                             presence_threshold=0.0, mask_threshold=0.0)
    assert res.masks.all()  # threshold 0: the whole image, one part of 96² px
    monkeypatch.setattr(test_model.config.inference, "max_cell_component_um2", 96 * 96 * 0.25 - 1)
    res = test_model.segment(img, ["nuclei", "gland"], mpp=0.5, vocabulary="open", instances="none",
                             presence_threshold=0.0, mask_threshold=0.0)
    assert not res.masks[0].any() and res.masks[1].all()
