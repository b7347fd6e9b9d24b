"""Presence evaluation: MCC by hand, threshold calibration, and certain image–prompt pairs on a corpus."""
from __future__ import annotations

import math

import pytest

from pathsegmentor.evaluation.presence import Pair, calibrate, confusion_at, mcc, summarize_pairs


def _pair(truth: bool, p: float, kind: str = "positive", empty: bool = False) -> Pair:
    return Pair("img", "src", "x", kind if not truth else "positive", truth, p, empty)


def test_mcc_by_hand():
    assert mcc(5, 0, 0, 5) == 1.0 and mcc(0, 5, 5, 0) == -1.0
    assert mcc(3, 1, 2, 4) == pytest.approx((3 * 4 - 1 * 2) / math.sqrt(4 * 5 * 5 * 6))
    assert mcc(0, 0, 3, 7) == 0.0  # an empty margin (nothing predicted present)


def test_calibration_finds_the_separating_cut_and_counts():
    pairs = [_pair(True, 0.9), _pair(True, 0.7), _pair(False, 0.4, "phrase", True), _pair(False, 0.2, "organ", True),
             _pair(False, 0.6, "exhaustive")]
    thr, best = calibrate(pairs)
    assert 0.6 < thr < 0.7 and best == 1.0
    assert confusion_at(pairs, thr) == {"tp": 2, "fp": 0, "fn": 0, "tn": 3}
    s = summarize_pairs(pairs, 0.5)
    assert s["fp"] == 1 and s["negative_fraction"] == 0.6 and s["empty_mask_rate_phrase"] == 1.0
    assert s["n_exhaustive"] == 1 and s["mcc"] == pytest.approx(mcc(2, 1, 0, 2), abs=1e-4)


def test_pairs_on_a_corpus_are_certain(test_model, tmp_path):
    from data_builders import build, load_pathseg
    from data_builders.synthetic import write_folder_dataset
    from pathsegmentor.evaluation.presence import presence_pairs

    src = write_folder_dataset(tmp_path / "src", n=4, size=64)
    out = build({"folder": src}, tmp_path / "corpus", val_fraction=0.25, tile=1024, seed=0, progress=False)
    corpus = load_pathseg(out)
    pairs = presence_pairs(test_model, corpus, "train", phrases=["a red sports car", "hello"], n_phrases=2,
                           n_organ=0, progress=False)
    kinds = {p.kind for p in pairs}
    assert "positive" in kinds and "phrase" in kinds
    assert all(not p.truth for p in pairs if p.kind != "positive")
    assert all(0.0 <= p.presence <= 1.0 for p in pairs)


def test_presence_cli_refuses_bad_paths(tmp_path, capsys):
    from pathsegmentor.evaluation.presence import main

    assert main(["pathsegmentor-test", "--data", str(tmp_path / "missing")]) == 2
    assert "corpus directory not found" in capsys.readouterr().err
    (tmp_path / "corpus").mkdir()
    assert main([str(tmp_path / "no-model"), "--data", str(tmp_path / "corpus")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "no-model").exists()
