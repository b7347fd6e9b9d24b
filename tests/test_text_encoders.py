"""Each text backend built offline from a local directory/file the test writes; embedding cache."""
from __future__ import annotations

import json

import pytest
import torch

from pathsegmentor import create_model
from pathsegmentor.modeling.config import TextEncoderConfig
from pathsegmentor.modeling.text_encoder import (OpenClipTextEncoder, TransformersTextEncoder, build_text_encoder,
                                        minilm_path, minilm_text_encoder)

WORDS = ["tumor", "nuclei", "nucleus", "gland", "glands", "stroma", "inflammatory", "cells", "lymphocytes",
         "epithelium", "necrosis", "fat", "muscle", "in", "of", "the", "a", "an", "image", "##s"]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).eval().save_pretrained(d)
    BertTokenizer(str(d / "vocab.txt")).save_pretrained(d)
    return d


def _reference_bert(d, texts, pooling):
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(d), AutoModel.from_pretrained(d).eval()
    out = []
    for t in texts:  # one string per call, as the encoder does
        batch = tok([t], return_tensors="pt")
        with torch.no_grad():
            h = model(**batch).last_hidden_state
        v = h[:, 0] if pooling == "cls" else h.mean(1)
        out.append(torch.nn.functional.normalize(v, dim=-1)[0])
    return torch.stack(out)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_transformers_backend_from_local_dir(tiny_bert_dir, pooling):
    enc = TransformersTextEncoder(tiny_bert_dir, pooling=pooling)
    texts = ["tumor nuclei", "gland", "inflammatory cells in the stroma"]
    emb = enc.encode(texts)
    assert emb.shape == (3, 32) and enc.dim == 32 and emb.dtype == torch.float32
    torch.testing.assert_close(emb, _reference_bert(tiny_bert_dir, texts, pooling), atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    assert not any(p.requires_grad for p in enc.parameters())  # frozen by default


def test_transformers_pooling_modes_differ(tiny_bert_dir):
    a = TransformersTextEncoder(tiny_bert_dir, pooling="mean").encode(["tumor nuclei"])
    b = TransformersTextEncoder(tiny_bert_dir, pooling="cls").encode(["tumor nuclei"])
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="pooling"):
        TransformersTextEncoder(tiny_bert_dir, pooling="max")


def test_model_with_transformers_text_tower(tiny_bert_dir):
    model = create_model("pathsegmentor-test", overrides={"text_encoder.type": "transformers",
                                                          "text_encoder.name_or_path": str(tiny_bert_dir),
                                                          "text_encoder.pooling": "cls"})
    assert model.text_encoder.dim == 32
    res = model.eval().segment(torch.zeros(3, 64, 64, dtype=torch.uint8), ["nuclei", "gland"])
    assert res.masks.shape == (2, 64, 64)


def test_transformers_backend_missing_dir_says_how(tmp_path):
    with pytest.raises(OSError, match="local"):
        TransformersTextEncoder(tmp_path / "nothing-here")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("tiny-clip")
    name = "pathseg-test-tiny-clip"
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (d / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / f"{name}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    ckpt = d / "tiny_clip.pt"
    torch.save(model.state_dict(), ckpt)
    return name, ckpt, model


def test_open_clip_backend_from_local_checkpoint(tiny_clip):
    import open_clip

    name, ckpt, reference = tiny_clip
    enc = OpenClipTextEncoder(name, pretrained=str(ckpt))
    texts = ["tumor nuclei", "gland"]
    emb = enc.encode(texts)
    assert emb.shape == (2, 16) and enc.dim == 16
    tok = open_clip.get_tokenizer(name)
    with torch.no_grad():
        expected = torch.cat([reference.encode_text(tok([t]), normalize=True) for t in texts])
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=0)
    # through the config path too
    enc2 = build_text_encoder(TextEncoderConfig(type="open_clip", name_or_path=name, pretrained=str(ckpt)))
    torch.testing.assert_close(enc2.encode(texts), emb, atol=0, rtol=0)


def test_bundled_minilm_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    texts = ["tumor nuclei", "glands of the colon"]
    ours = minilm_text_encoder().encode(texts)
    st = SentenceTransformer(str(minilm_path()), device="cpu")
    theirs = torch.from_numpy(st.encode(texts, convert_to_numpy=True, normalize_embeddings=True))
    assert ours.shape == (2, 384)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_embedding_cache_skips_the_tower(tiny_bert_dir):
    enc = TransformersTextEncoder(tiny_bert_dir)
    calls = []
    original = enc.model.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    enc.model.forward = counted
    first = enc.encode(["tumor nuclei", "gland"])
    n = len(calls)
    assert n >= 1
    second = enc.encode(["gland", "tumor nuclei", "gland"])
    assert len(calls) == n  # all cached: the tower did not run
    torch.testing.assert_close(second, first[[1, 0, 1]], atol=0, rtol=0)
    enc.encode(["stroma", "gland"])
    assert len(calls) == n + 1  # only the new string
    with pytest.raises(ValueError, match="Empty"):
        enc.encode([""])
