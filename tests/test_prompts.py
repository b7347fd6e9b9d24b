"""Prompt resolution against the ontology (pathsegmentor.inference.prompts) and the answer policy."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from pathsegmentor.inference.calibration import calibrate_threshold
from pathsegmentor.inference.prompts import PromptResolver, normalise
from pathsegmentor.ontology import Ontology


def trigram_encoder(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in text tower: hashed character trigrams, L2-normalised."""
    out = np.zeros((len(texts), 512), np.float32)
    for i, t in enumerate(texts):
        s = f"  {t.lower()}  "
        for j in range(len(s) - 2):
            out[i, zlib.crc32(s[j:j + 3].encode()) % 512] += 1.0
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def onto():
    return Ontology.load()


def resolver(onto, vocab=(), threshold=0.6):
    return PromptResolver(onto, trigram_encoder, {c: {} for c in vocab}, threshold)


def test_normalise_spelling_plural_stop_words():
    assert normalise("Segment all the Tumour Cells!") == "tumor cell"
    assert normalise("nuclei") == normalise("nucleus") == "nucleus"
    assert normalise("spindle-shaped nuclei") == "spindle shaped nucleus"
    assert normalise("glands") == "gland"


@pytest.mark.parametrize("prompt, concept, match", [
    ("nuclei", "nuclei", "exact"),
    ("Tumor Nuclei", "tumor nuclei", "exact"),
    ("neoplastic nuclei", "tumor nuclei", "synonym"),
    ("glands", "gland", "synonym"),
    ("tumour cells", "tumor nuclei", "normalised"),       # UK spelling + "cells" wording
    ("fibroblasts", "fibroblast nuclei", "normalised"),   # a cell type named without "nuclei"
    ("please segment the nuclei", "nuclei", "normalised"),
    ("nuclei epithelial", "epithelial nuclei", "normalised"),  # word order
])
def test_lookup_without_embeddings(onto, prompt, concept, match):
    r = PromptResolver(onto).resolve(prompt)  # no text tower: lookups only
    assert (r.concept, r.match, r.relation, r.answered_as) == (concept, match, "same", concept)
    assert r.similarity == 1.0


def test_nearest_in_embedding_space(onto):
    r = resolver(onto).resolve("colonic glandss")
    assert (r.concept, r.match, r.answered_as) == ("gland", "nearest", "gland")
    assert 0.6 <= r.similarity < 1.0
    assert "nearest" in r.reason


def test_untrained_concept_answered_by_trained_parent(onto):
    r = resolver(onto, vocab=["nuclei", "gland"]).resolve("lymphocyte nuclei")
    assert r.concept == "lymphocyte nuclei" and r.answered_as == "nuclei"
    assert r.relation == "broader" and r.substituted
    assert "not in this model's training" in r.reason and "'nuclei'" in r.reason


def test_untrained_concept_answered_by_trained_child(onto):
    r = resolver(onto, vocab=["tumor nuclei"]).resolve("epithelial nuclei")
    assert (r.answered_as, r.relation) == ("tumor nuclei", "narrower")


def test_known_concept_without_trained_relative_is_refused_with_suggestions(onto):
    r = resolver(onto, vocab=["nuclei", "gland", "tumor nuclei"]).resolve("stroma")
    assert r.concept == "stroma" and not r.answered and r.relation == "refused"
    assert len(r.suggestions) == 3 and set(r.suggestions) == {"nuclei", "gland", "tumor nuclei"}
    assert "not trained" in r.reason and "nearest answerable" in r.reason


def test_unknown_phrase_is_refused(onto):
    r = resolver(onto, vocab=["nuclei", "gland"]).resolve("zzzz qqq")
    assert r.concept is None and r.answered_as is None and r.match == "none"
    assert r.similarity < 0.6 and "names no concept" in r.reason
    assert r.label == "zzzz qqq (refused)"


def test_open_vocabulary_sends_raw_text(onto):
    r = resolver(onto, vocab=["nuclei"]).resolve("zzzz qqq", vocabulary="open")
    assert (r.answered_as, r.relation) == ("zzzz qqq", "open")
    with pytest.raises(ValueError, match="Available: \\['model', 'open'\\]"):
        resolver(onto).resolve("nuclei", vocabulary="closed")
    assert r.concept is None and r.segmented_as is None  # names no concept: the model's defaults apply


def test_open_vocabulary_segments_a_named_concept_as_that_concept(onto, test_model):
    """Raw text still goes to the text tower, but a synonym gets its concept's handling (working µm/px,
    instances, size limit), as the canonical name does."""
    r = resolver(onto, vocab=["nuclei"]).resolve("Cell Nuclei", vocabulary="open")
    assert (r.answered_as, r.match, r.concept, r.segmented_as) == ("Cell Nuclei", "open", "nuclei", "nuclei")
    assert "segmented as 'nuclei'" in r.reason
    img = np.full((64, 64, 3), 200, np.uint8)
    res = test_model.segment(img, ["cell nuclei", "zzzz"], mpp=0.5, vocabulary="open")
    assert [x.segmented_as for x in res.resolutions] == ["nuclei", None]
    counts = res.instance_counts  # instances decoded for the synonym of an instance concept only
    assert counts[0] is not None and counts[1] is None


def test_vocabulary_must_name_ontology_concepts(onto):
    with pytest.raises(ValueError, match="not in the ontology"):
        PromptResolver(onto, None, {"unicorn nuclei": {}})


def test_calibrated_threshold_separates_paraphrases_from_out_of_domain():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 32))
    emb = np.concatenate([c + 0.1 * rng.normal(size=(3, 32)) for c in centres])  # 3 strings per concept
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    owners = [f"c{i}" for i in range(5) for _ in range(3)]
    neg = rng.normal(size=(20, 32))
    neg /= np.linalg.norm(neg, axis=1, keepdims=True)
    t = calibrate_threshold(emb, owners, neg)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -2)
    assert (neg @ emb.T).max() < t < sims.max(1).min()


def test_index_is_kept_on_disk(onto, tmp_path):
    calls = []

    def enc(texts):
        calls.append(len(texts))
        return trigram_encoder(texts)

    first = PromptResolver(onto, enc, {}, None, index_dir=tmp_path)
    first.resolve("colonic glandss")
    assert len(list(tmp_path.glob("prompt-index-*.npz"))) == 1
    n_first = sum(calls)
    calls.clear()
    second = PromptResolver(onto, enc, {}, None, index_dir=tmp_path)
    second.resolve("colonic glandss")
    assert sum(calls) < 5 < n_first  # probe strings + the query only
    assert second.threshold == pytest.approx(first.threshold)


# ------------------------------------------------------------------ the policy through segment()

@pytest.fixture(scope="module")
def partial_model():
    """The random test model told it was trained on two concepts only."""
    import copy

    import torch

    from pathsegmentor import create_model

    torch.manual_seed(0)
    m = create_model("pathsegmentor-test", overrides={"vocabulary": {"nuclei": {"sources": ["monuseg"]},
                                                                      "gland": {"sources": ["glas"]}}}).eval()
    return copy.deepcopy(m)


def test_segment_refuses_and_substitutes(partial_model):
    img = np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)
    res = partial_model.segment(img, ["nuclei", "stroma", "lymphocyte nuclei", "all nuclei"])
    rel = [r.relation for r in res.resolutions]
    assert rel == ["same", "refused", "broader", "same"]
    assert res.presence[1] == 0 and not res.masks[1].any() and not res.probs[1].any()
    # the substituted and the synonym prompt are answered as 'nuclei': the same text -> the same output
    np.testing.assert_allclose(res.probs[2], res.probs[0], atol=1e-5)
    np.testing.assert_allclose(res.probs[3], res.probs[0], atol=1e-5)
    s = res.summary()
    assert s["prompts"][1]["resolution"]["relation"] == "refused"
    assert s["prompts"][1]["resolution"]["suggestions"][:2] in (["nuclei", "gland"], ["gland", "nuclei"])
    assert len(s["warnings"]) == 2 and "stroma" in s["warnings"][0]
    assert res.labels[2] == "lymphocyte nuclei -> nuclei"
    json.dumps(s)


def test_segment_all_refused_runs_nothing(partial_model, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model must not run for refused prompts")

    monkeypatch.setattr(partial_model, "encode_window", boom)
    monkeypatch.setattr(partial_model, "decode_window", boom)
    res = partial_model.segment(np.zeros((32, 32, 3), np.uint8), ["stroma"])
    assert res.presence.tolist() == [0.0] and res.masks.shape == (1, 32, 32) and not res.masks.any()


def test_segment_bad_vocabulary_value(partial_model):
    with pytest.raises(ValueError, match="vocabulary='x' unknown"):
        partial_model.segment(np.zeros((32, 32, 3), np.uint8), ["nuclei"], vocabulary="x")


def test_model_vocabulary_listing(partial_model, test_model):
    rows = partial_model.vocabulary()
    assert [r["concept"] for r in rows] == ["nuclei", "gland"] and rows[0]["sources"] == ["monuseg"]
    assert rows[0]["structure"] == "cell" and rows[0]["recorded"]
    everything = test_model.vocabulary()
    assert len(everything) > 100 and not everything[0]["recorded"]


def test_cli_warns_for_refused_and_substituted_prompts(partial_model, tmp_path, capsys):
    from PIL import Image

    from pathsegmentor.cli import main

    model_dir = tmp_path / "m"
    partial_model.save_pretrained(model_dir)
    img = tmp_path / "tile.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(img)
    rc = main(["segment", str(img), "-p", "nuclei", "-p", "stroma", "-p", "lymphocyte nuclei",
               "--out", str(tmp_path / "o"), "--model", str(model_dir)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "warning: tile: prompt 'stroma':" in err and "nearest answerable" in err
    assert "warning: tile: prompt 'lymphocyte nuclei':" in err and "'nuclei'" in err
    summary = json.loads((tmp_path / "o" / "tile_summary.json").read_text())
    assert [p["resolution"]["relation"] for p in summary["prompts"]] == ["same", "refused", "broader"]


@pytest.mark.slow
def test_real_text_tower_refuses_non_pathology_and_finds_paraphrases(tmp_path):
    """With the bundled MiniLM tower and the threshold calibrated on the ontology (no images involved)."""
    from pathsegmentor.modeling.text_encoder import minilm_text_encoder

    vocab = {c: {} for c in ("nuclei", "gland", "tumor nuclei", "inflammatory nuclei")}
    r = PromptResolver(Ontology.load(), minilm_text_encoder().encode, vocab, index_dir=tmp_path)
    for phrase in ("a red sports car", "hello world", "zzzz qqq", "a flock of seagulls"):
        assert not r.resolve(phrase).answered, phrase
    assert r.resolve("colonic glands").answered_as == "gland"
    assert 0.3 < r.threshold < 0.95


def test_whole_cell_concept_answered_by_its_nuclei(onto):
    r = resolver(onto, vocab=["nuclei", "inflammatory nuclei"]).resolve("lymphocytes")
    assert (r.concept, r.answered_as, r.relation) == ("lymphocytes", "inflammatory nuclei", "nuclei-of")
    assert r.substituted and "nuclei of these cells" in r.reason and "lymphocyte nuclei" in r.reason
    r = resolver(onto, vocab=["plasma cell nuclei"]).resolve("plasma cells")
    assert (r.answered_as, r.relation) == ("plasma cell nuclei", "nuclei-of")
