"""Presence-head refit: the captured features reproduce the reported presence, the fit learns a separable
problem while staying near its start, and the CLI writes a model with only the presence head changed."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch


def test_captured_features_reproduce_the_reported_presence(test_model):
    from pathsegmentor.training.presence_refit import capture_presence_inputs

    img = (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)
    prompts = ["nuclei", "gland", "a red sports car"]
    feats, pres = capture_presence_inputs(test_model, img, prompts, mpp=0.5)
    assert feats.shape == (3, test_model.mask_decoder.presence_head.layers[0].in_features)
    assert not np.isnan(feats).any()
    with torch.no_grad():
        again = torch.sigmoid(test_model.mask_decoder.presence_head(torch.from_numpy(feats)).squeeze(-1)).numpy()
    np.testing.assert_allclose(again, pres, atol=1e-5)


def test_cell_weights_give_each_cell_the_same_total():
    from pathsegmentor.training.presence_refit import cell_weights

    src = ["a"] * 8 + ["b"] * 2
    y = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0], bool)
    w = cell_weights(src, y)
    totals = {(s, t): w[[i for i in range(10) if src[i] == s and y[i] == t]].sum() for s, t in
              [("a", 1), ("a", 0), ("b", 1), ("b", 0)]}
    assert np.allclose(list(totals.values()), 2.5) and w.mean() == pytest.approx(1.0)
    kind = ["positive"] * 6 + ["phrase", "exhaustive", "positive", "phrase"]
    w3 = cell_weights(src, kind, y)  # the one exhaustive negative weighs as much as the one phrase negative of 'a'
    assert w3[6] == pytest.approx(w3[7]) and w3[6] == pytest.approx(w3[8])


def test_fit_learns_a_separable_problem_and_l2_holds_it_near_the_start(test_model):
    from pathsegmentor.training.presence_refit import fit_head

    head = test_model.mask_decoder.presence_head
    d = head.layers[0].in_features
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, d)).astype(np.float32)
    y = x[:, 0] > 0
    w = np.ones(400, np.float32)
    new, curve = fit_head(head, x, y, w, epochs=30, lr=3e-3, l2=0.0, eval_set=(x, y, w))
    with torch.no_grad():
        acc = ((new(torch.from_numpy(x)).squeeze(-1) > 0).numpy() == y).mean()
    assert acc > 0.95 and curve[-1] < curve[0]
    tight, _ = fit_head(head, x, y, w, epochs=30, lr=3e-3, l2=10.0)

    def dist(h):
        return sum(float(((p - q) ** 2).sum().detach()) for p, q in zip(h.parameters(), head.parameters()))

    assert dist(tight) < dist(new)
    assert all(torch.equal(p, q) for p, q in zip(head.parameters(), test_model.mask_decoder.presence_head.parameters()))


def test_cli_writes_a_model_with_only_the_presence_head_changed(test_model_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from data_builders import build
    from data_builders.synthetic import write_folder_dataset
    from pathsegmentor.training.presence_refit import HEAD_PREFIX, main

    src = write_folder_dataset(tmp_path / "src", n=6, size=64)
    corpus = build({"folder": src}, tmp_path / "corpus", val_fraction=0.25, tile=1024, seed=0, progress=False)
    out = tmp_path / "refit"
    assert main([str(test_model_dir), "--data", str(corpus), "--out", str(out), "--max-epochs", "3",
                 "--features", str(tmp_path / "f.npz")]) == 0
    before, after = load_file(str(test_model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(before) == set(after)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(HEAD_PREFIX))
    report = json.loads((out / "presence_refit.json").read_text())
    assert report["rows"] > 0 and 0 <= report["epochs"] <= 3 and len(report["holdout_log_loss"]) == 4
    assert (out / "config.json").read_text() == (test_model_dir / "config.json").read_text()
    # the feature cache is reused: the same report without a model pass over the corpus
    assert main([str(test_model_dir), "--data", str(corpus), "--out", str(tmp_path / "again"), "--max-epochs", "3",
                 "--features", str(tmp_path / "f.npz")]) == 0
    assert json.loads((tmp_path / "again" / "presence_refit.json").read_text())["rows"] == report["rows"]
    # synonyms added to the earlier collection from a second cache (collected once, then reused)
    for _ in range(2):
        assert main([str(test_model_dir), "--data", str(corpus), "--out", str(tmp_path / "syn"), "--max-epochs", "2",
                     "--features", str(tmp_path / "f.npz"), "--synonym-features", str(tmp_path / "s.npz")]) == 0
    from pathsegmentor.training.presence_refit import load_features

    syn = load_features(tmp_path / "s.npz")
    assert len(syn.y) > 0 and set(syn.kind) <= {"positive", "exhaustive"}
    assert json.loads((tmp_path / "syn" / "presence_refit.json").read_text())["rows"] == report["rows"] + len(syn.y)
    # a subset keeps each row's metadata with its features (bench/presence_cv.py --train-features filters by source)
    from pathsegmentor.training.presence_features import select_features

    feats = load_features(tmp_path / "f.npz")
    keep = np.asarray(feats.y, bool)
    sub = select_features(feats, keep)
    assert 0 < len(sub.y) < len(feats.y) and sub.y.all() and np.array_equal(sub.x, feats.x[keep])
    assert sub.prompt == [p for p, k in zip(feats.prompt, keep) if k] and len(sub.presence) == len(sub.y)


def test_cli_refuses_bad_paths_and_writes_nothing(test_model_dir, tmp_path, capsys):
    from pathsegmentor.training.presence_refit import main

    assert main([str(tmp_path / "nope"), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is not a model directory" in capsys.readouterr().err
    assert main([str(test_model_dir), "--data", str(tmp_path), "--out", str(test_model_dir)]) == 2
    assert "is the input model" in capsys.readouterr().err
    assert main([str(test_model_dir), "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "corpus directory not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_with_synonyms_adds_the_words_users_type_with_the_same_truth():
    from pathsegmentor.ontology import Ontology
    from pathsegmentor.training.presence_refit import with_synonyms

    onto = Ontology.load()
    asked = [("tumor", "exhaustive", False), ("gland", "positive", True), ("a red sports car", "phrase", False)]
    out = with_synonyms(asked, onto, np.random.default_rng(0), 2)
    added = out[len(asked):]
    assert out[:len(asked)] == asked and len(added) == 4  # two per category, none for the phrase
    assert {p for p, _, _ in added[:2]} <= set(onto.categories["tumor"].synonyms)
    assert all(k == "exhaustive" and t is False for _, k, t in added[:2])
    assert all(k == "positive" and t is True for _, k, t in added[2:])
    assert with_synonyms(asked, onto, np.random.default_rng(0), 0) == asked
