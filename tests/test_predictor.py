"""The one predictor above the network (issue 30): it owns the settings, the resolver and the encoding cache; the
network never calls it; settings given to a predictor change its answers and nothing else's."""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from pathsegmentor import InferenceConfig, PathSegmentor, Predictor
from pathsegmentor.modeling.model import PathSegmentorNetwork


def _image(seed: int = 0, side: int = 96) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)


def test_the_user_class_is_the_network_plus_a_predictor(test_model):
    assert isinstance(test_model, PathSegmentor) and isinstance(test_model, PathSegmentorNetwork)
    assert not hasattr(PathSegmentorNetwork, "segment")  # the network has no inference entry point of its own
    assert test_model.predictor is test_model.predictor and test_model.predictor.network is test_model
    assert test_model.predictor.settings is test_model.config.inference  # the model's own rules, read live
    from pathsegmentor.modeling.factory import create_model

    net = create_model("pathsegmentor-test")  # what training builds: the bare network
    assert type(net) is PathSegmentorNetwork and Predictor(net).segment(_image(), "nuclei").masks.shape == (1, 96, 96)


def test_one_encoding_serves_later_calls_on_the_same_pixels_until_the_weights_change():
    torch.manual_seed(0)
    from pathsegmentor import create_model

    model = create_model("pathsegmentor-test").eval()
    pred, img = model.predictor, _image(1)
    first = model.segment(img, ["nuclei"], vocabulary="open")
    assert (pred.encoded, pred.reused) == (1, 0)
    second = model.segment(img, ["gland", "nuclei"], vocabulary="open")
    assert (pred.encoded, pred.reused) == (1, 1)  # the second call ran only the decoder
    assert np.allclose(second.probs[1], first.probs[0], atol=1e-5)  # as a fresh encoding answers (2 prompts batched)
    model.segment(_image(2), ["nuclei"], vocabulary="open")
    assert pred.encoded == 2  # other pixels: encoded
    with torch.no_grad():  # a weight changes in place (an optimiser step, load_state_dict): the cache is stale
        next(model.image_encoder.parameters()).mul_(1.5)
    after = model.segment(img, ["nuclei"], vocabulary="open")
    assert pred.encoded == 3 and not np.array_equal(after.probs[0], first.probs[0])
    bn = next(m for m in model.image_encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    bn.running_mean.add_(1.0)  # only a buffer changes (statistics re-estimated in place): stale as well
    model.segment(img, ["nuclei"], vocabulary="open")
    assert pred.encoded == 4


def test_settings_given_to_a_predictor_change_its_answers_only(test_model):
    img = _image(3)
    base = test_model.segment(img, ["nuclei"], vocabulary="open")
    loose = Predictor(test_model, settings=replace(test_model.config.inference, presence_threshold=0.0,
                                                   mask_threshold=0.3))
    res = loose.segment(img, ["nuclei"], vocabulary="open")
    assert res.thresholds == {"mask": 0.3, "presence": 0.0} and res.masks[0].sum() >= base.masks[0].sum()
    assert np.allclose(res.probs, base.probs)  # same network, same probabilities
    assert test_model.config.inference.presence_threshold == base.thresholds["presence"]  # the model is untouched
    with pytest.raises(ValueError, match="presence_threshold is 7.0; it must be in"):
        Predictor(test_model, settings=InferenceConfig(presence_threshold=7.0))


def test_a_bad_rule_in_the_model_config_is_named_before_anything_runs(test_model):
    model = copy.deepcopy(test_model)
    model.config.inference.geometric_box = "nearest"
    with pytest.raises(ValueError, match="geometric_box is 'nearest'; available"):
        model.segment(_image(), "nuclei")


def test_a_copied_model_has_its_own_predictor_and_a_changed_vocabulary_its_own_resolver(test_model):
    test_model.segment(_image(), "nuclei")  # the shared model's predictor, resolver and cache exist now
    model = copy.deepcopy(test_model)  # the cache is not copied (it is a cache), the lock neither
    assert model.predictor.network is model and model.predictor is not test_model.predictor
    assert len(model.predictor.cache) == 0 and len(test_model.predictor.cache) > 0
    model.config.vocabulary = {"nuclei": {"sources": ["test"]}}
    refused = model.segment(_image(), ["gland"]).resolutions[0]
    assert not refused.answered and "nuclei" in refused.suggestions  # the resolver follows the new vocabulary
    assert test_model.segment(_image(), ["gland"]).resolutions[0].answered  # the original still answers it
