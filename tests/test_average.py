"""Weight averaging (``pathsegmentor.training.average``): the average of two saved models loads and is the
parameter-wise mean; mismatched models are refused by name and nothing is written."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from pathsegmentor import from_pretrained
from pathsegmentor.training.average import average_models, average_state_dicts, main


def test_average_of_two_saved_models_is_their_mean(tmp_path, test_model, test_model_dir):
    other = copy.deepcopy(test_model)
    other.__dict__.pop("_predictor", None)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    other.save_pretrained(tmp_path / "b")
    out = average_models([test_model_dir, tmp_path / "b"], tmp_path / "avg", [0.25, 0.75])
    saved = load_file(str(out / "model.safetensors"))  # what save_pretrained stores (not the bundled text encoder)
    sa, sb = test_model.state_dict(), other.state_dict()
    assert saved and set(saved) <= set(sa)
    for name, c in saved.items():
        expect = 0.25 * sa[name] + 0.75 * sb[name] if c.is_floating_point() else sb[name]
        torch.testing.assert_close(c, expect, msg=name)
    avg = from_pretrained(out)  # loads as a model, with the last model's config
    assert avg.config.inference == other.config.inference
    params = dict(avg.named_parameters())
    shared = [k for k in saved if k in params]
    assert shared
    for k in shared:
        torch.testing.assert_close(params[k], saved[k], msg=k)


def test_mismatched_models_and_weights_are_refused(tmp_path, test_model_dir):
    a = {"w": torch.zeros(2, 3), "n": torch.tensor(3)}
    with pytest.raises(ValueError, match="sum to 1"):
        average_state_dicts([a, a], [0.5, 0.6])
    with pytest.raises(ValueError, match="'w' has shape"):
        average_state_dicts([{"w": torch.zeros(3, 2), "n": torch.tensor(1)}, a], [0.5, 0.5])
    with pytest.raises(ValueError, match="'x'"):
        average_state_dicts([{**a, "x": torch.ones(1)}, a], [0.5, 0.5])
    assert int(average_state_dicts([a, {**a, "n": torch.tensor(7)}], [0.5, 0.5])["n"]) == 7  # integers: the last
    assert main([str(test_model_dir), str(tmp_path / "missing"), "--out", str(tmp_path / "avg")]) == 2
    assert not (tmp_path / "avg").exists()
