"""Cross-validated presence refit (``training.presence_selection``): folds keep cases and negative phrases apart,
every held-out row is scored by a head that never saw its case or phrase, the choice comes from the mean held-out
curve, and the out-of-fold threshold reaches the model's settings through the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch


def _feats(dim: int, n_cases: int = 12, seed: int = 0):
    """Rows of ``n_cases`` cases: a positive and an exhaustive negative per case (truth in feature 0), and two
    out-of-pathology phrases per case from a list of 10."""
    from pathsegmentor.training.presence_features import PresenceFeatures

    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cases):
        rows += [(f"case{c}", "positive", "nuclei", True), (f"case{c}", "exhaustive", "tumor nuclei", False)]
        rows += [(f"case{c}", "phrase", f"phrase {j}", False) for j in rng.choice(10, 2, replace=False)]
    y = np.array([r[3] for r in rows])
    x = rng.normal(size=(len(rows), dim)).astype(np.float32)
    x[:, 0] = np.where(y, 2.0, -2.0) + rng.normal(scale=0.5, size=len(rows))
    return PresenceFeatures(x=x, y=y, source=["monuseg"] * len(rows), kind=[r[1] for r in rows],
                            prompt=[r[2] for r in rows], group=[r[0] for r in rows], view=["corpus"] * len(rows),
                            presence=[0.5] * len(rows))


def test_folds_keep_cases_and_phrases_apart():
    from pathsegmentor.training.presence_selection import case_phrase_folds, fold_masks

    f = _feats(8)
    cfold, pfold = case_phrase_folds(f, 3, seed=0)
    cases, prompts = np.asarray(f.group), np.asarray(f.prompt)
    assert all(len(set(cfold[cases == c])) == 1 for c in set(cases))  # a case never straddles folds
    phr = np.asarray(f.kind) == "phrase"
    assert (pfold[~phr] == -1).all() and all(len(set(pfold[prompts == p])) == 1 for p in set(prompts[phr]))
    covered = np.zeros(len(f.y), int)
    for k in range(3):
        fit, held = fold_masks(cfold, pfold, k)
        assert not (fit & held).any() and held.any()
        assert not set(cases[fit]) & set(cases[held])
        assert not set(prompts[fit & phr]) & set(prompts[held & phr])
        covered += held
    assert covered.max() == 1 and covered[~phr].min() == 1  # every positive / exhaustive row scored exactly once
    with pytest.raises(ValueError, match="cannot fill 20 folds"):
        case_phrase_folds(f, 20, seed=0)


def test_select_by_cv_scores_every_row_out_of_fold_and_picks_the_least_mean_loss(test_model):
    from pathsegmentor.training.presence_selection import CVConfig, oof_calibration, select_by_cv

    head = test_model.mask_decoder.presence_head
    f = _feats(head.layers[0].in_features)
    cfg = CVConfig(folds=3, max_epochs=4, lrs=(3e-3,), l2s=(1e-3, 10.0))
    choice, oof = select_by_cv(head, f, cfg)
    curves = choice["grid_curves"]
    assert set(curves) == {"lr=0.003 l2=0.001", "lr=0.003 l2=10"} and all(len(c) == 5 for c in curves.values())
    best = min(min(c) for c in curves.values())
    key = f"lr={choice['lr']:g} l2={choice['l2']:g}"
    assert curves[key][choice["epochs"]] == pytest.approx(best, abs=1e-4)
    phr = np.asarray(f.kind) == "phrase"
    assert not np.isnan(oof[~phr]).any() and ((oof[~np.isnan(oof)] >= 0) & (oof[~np.isnan(oof)] <= 1)).all()
    cal = oof_calibration(f, oof, cfg.folds)
    assert cal["calibrated"]["pairs"] == int((~np.isnan(oof)).sum())
    assert cal["calibrated"]["mcc"] >= cal["at_0.5"]["mcc"] and "out of fold" in cal["split"]
    assert all(torch.equal(p, q) for p, q in zip(head.parameters(), test_model.mask_decoder.presence_head.parameters()))
    with pytest.raises(ValueError, match="at least 2 folds"):
        CVConfig(folds=1)


def test_cli_cv_writes_the_out_of_fold_calibration_the_settings_read(test_model_dir, tmp_path, capsys):
    from pathsegmentor.evaluation.settings import calibration_settings
    from pathsegmentor.training.presence_features import save_features
    from pathsegmentor.training.presence_refit import main

    from pathsegmentor import from_pretrained

    dim = from_pretrained(str(test_model_dir)).mask_decoder.presence_head.layers[0].in_features
    save_features(tmp_path / "f.npz", _feats(dim))
    corpus = tmp_path / "corpus"
    corpus.mkdir()  # the cached features are used; the corpus is not read
    out = tmp_path / "cv"
    assert main([str(test_model_dir), "--data", str(corpus), "--out", str(out), "--features", str(tmp_path / "f.npz"),
                 "--selection", "cv", "--cv-folds", "3", "--max-epochs", "3", "--cv-l2", "0.01"]) == 0
    report = json.loads((out / "presence_refit.json").read_text())
    assert report["cv"]["folds"] == 3 and 0 <= report["epochs"] <= 3
    settings, source = calibration_settings(out / "presence_calibration_oof.json")
    assert settings["presence_threshold"] == report["calibration"]["calibrated"]["threshold"]
    assert "out of fold" in json.dumps(source)
    assert "presence_calibration_oof.json" in capsys.readouterr().out
    assert main([str(test_model_dir), "--data", str(corpus), "--out", str(tmp_path / "bad"), "--features",
                 str(tmp_path / "f.npz"), "--selection", "cv", "--cv-folds", "1"]) == 2
    assert "at least 2 folds" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_presence_cv_bench_refits_each_fold_from_the_given_head(test_model_dir, tmp_path, capsys):
    """bench/presence_cv.py end to end on a synthetic corpus: both selections run, the summary names the head the
    folds start from, and a --refit-from that is not a model is refused before any work."""
    import importlib.util
    from pathlib import Path

    from data_builders import build
    from data_builders.synthetic import write_folder_dataset

    path = Path(__file__).resolve().parents[1] / "bench" / "presence_cv.py"
    spec = importlib.util.spec_from_file_location("presence_cv_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    src = write_folder_dataset(tmp_path / "src", n=8, size=64)
    corpus = build({"folder": src}, tmp_path / "corpus", val_fraction=0.25, tile=1024, seed=0, progress=False)
    for selection in ("holdout", "cv"):
        out = tmp_path / f"cv-{selection}"
        assert bench.main(["--model", str(test_model_dir), "--data", str(corpus), "--folds", "2", "--threads", "1",
                           "--selection", selection, "--refit-from", str(test_model_dir), "--out", str(out)]) == 0
        summary = json.loads((out / "presence_cv.json").read_text())["summary"]
        assert summary["selection"] == selection and summary["refit_from"] == str(test_model_dir)
        assert len(summary["refit_mcc_per_fold"]) == 2
    # --auto-view: the named source's images read again with the pixel size estimated, kept apart from the refit's rows
    # (images of 256 px: the estimator reads 256 px patches; the 64 px ones above have no estimate)
    big = build({"folder": write_folder_dataset(tmp_path / "src256", n=6, size=256)}, tmp_path / "corpus256",
                val_fraction=0.34, tile=1024, seed=0, progress=False)
    out = tmp_path / "cv-auto"
    assert bench.main(["--model", str(test_model_dir), "--data", str(big), "--folds", "2", "--threads", "1",
                       "--auto-view", "folder", "--out", str(out)]) == 0
    from pathsegmentor.training.presence_features import load_features

    auto, base = load_features(out / "features-train-auto.npz"), load_features(out / "features-train.npz")
    assert len(auto.y) > 0 and set(auto.view) == {"auto"} and "auto" not in set(base.view)
    assert json.loads((out / "presence_cv.json").read_text())["summary"]["rows"] == \
        len(base.y) + len(load_features(out / "features-validation.npz").y)
    capsys.readouterr()
    assert bench.main(["--model", str(test_model_dir), "--data", str(corpus), "--refit-from", str(tmp_path / "nope"),
                       "--out", str(tmp_path / "bad")]) == 2
    assert "is not a model directory" in capsys.readouterr().err and not (tmp_path / "bad").exists()
