"""Instance separation: targets from instance maps, the decoders on hand-made cases, the separation head's
shapes, ``res.instances`` from ``segment()``, and training samples with geometric prompts and certain
negatives."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pathsegmentor.inference.instances import separate_instances
from pathsegmentor.inference.separation import decode_instances, resize_labels, separation_targets

from shapes import discs as _discs  # tests/shapes.py


def test_targets_ranges_and_centres():
    inst = _discs((32, 30, 12), (32, 52, 12))
    t = separation_targets(inst)
    assert t.shape == (3, 64, 96) and t.dtype == np.float32
    assert t[:, inst == 0].max() == 0  # background: all zero
    for k in (1, 2):
        obj = inst == k
        assert -1 <= t[0][obj].min() and t[0][obj].max() <= 1 and np.abs(t[0][obj]).max() == pytest.approx(1)
        assert abs(t[0][obj].mean()) < 0.05 and abs(t[1][obj].mean()) < 0.05  # offsets centred per object
        assert t[2][obj].max() == pytest.approx(1) and t[2][obj].min() > 0
    # where the two discs touch, the x offset jumps from +1 (left disc's right edge) to about -1
    edge = int(np.nonzero(inst[32] == 2)[0].min())  # first column of the right disc on the centre row
    assert t[0, 32, edge - 1] > 0.8 and t[0, 32, edge] < -0.6
    one = np.zeros((5, 5), np.int32)
    one[2, 2] = 1
    assert separation_targets(one)[:, 2, 2].tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("method", ["hv", "distance", "watershed"])
def test_touching_discs_split_and_elongated_object_stays_one(method):
    inst = _discs((32, 30, 14), (32, 55, 14))
    assert decode_instances(inst > 0, separation_targets(inst), method).max() == 2
    bar = np.zeros((64, 96), np.int32)
    bar[28:38, 5:90] = 1
    assert decode_instances(bar > 0, separation_targets(bar), method).max() == 1


def test_separation_maps_split_what_the_old_watershed_merged():
    # a small nucleus pressed against a large one: one distance-transform peak, so the mask-only watershed merges
    inst = _discs((32, 30, 14), (32, 46, 6))
    mask = inst > 0
    assert separate_instances(mask).max() == 1
    maps = separation_targets(inst)
    for method in ("hv", "distance"):
        lab = decode_instances(mask, maps, method)
        assert lab.max() == 2, method
        # each predicted object is (mostly) one true object
        for k in (1, 2):
            ids, counts = np.unique(lab[inst == k], return_counts=True)
            assert counts.max() / counts.sum() > 0.9, (method, k)


def test_decoder_errors_name_the_fix():
    mask = np.ones((8, 8), bool)
    with pytest.raises(ValueError, match="Available"):
        decode_instances(mask, None, "stardist")
    with pytest.raises(ValueError, match="watershed"):
        decode_instances(mask, None, "hv")
    assert decode_instances(np.zeros((8, 8), bool), None).dtype == np.int32


def test_one_decoder_choice_for_segment_slides_and_viewer():
    """instance_decoding: the model's inference.instances (or segment()'s choice), segment()'s pixel settings at the
    concept's working µm/px, scaled to the same microns elsewhere (a slide decoding nuclei at 0.5 instead of 0.25)."""
    from types import SimpleNamespace

    from pathsegmentor.inference.prompts import geometric, open_resolution
    from pathsegmentor.inference.separation import instance_decoding, wants_instances
    from pathsegmentor.modeling.inference_config import InferenceConfig

    inf = InferenceConfig(instances="distance")
    MIN_AREA_PX, WATERSHED_H_PX = inf.instance_min_area_px, inf.instance_watershed_h_px
    cfg = SimpleNamespace(preprocess=SimpleNamespace(mpp=0.5, structure_mpp={"cell": 0.25}), inference=inf)
    d = instance_decoding(cfg, "nuclei")
    assert (d.method, d.min_area, d.h) == ("distance", MIN_AREA_PX, WATERSHED_H_PX) and d.reads_maps
    assert instance_decoding(cfg, "nuclei", decode_mpp=0.25) == d  # the working µm/px of nuclei
    coarse = instance_decoding(cfg, "nuclei", decode_mpp=0.5)
    assert (coarse.min_area, coarse.h) == (1, WATERSHED_H_PX / 2)
    fine = instance_decoding(cfg, "gland", "watershed", decode_mpp=0.25)  # glands work at 0.5
    assert (fine.method, fine.min_area, fine.h) == ("watershed", 4 * MIN_AREA_PX, 2 * WATERSHED_H_PX)
    assert not fine.reads_maps
    cfg.inference.instances = "stardist"
    with pytest.raises(ValueError, match="'stardist' unknown. Available.*inference.instances"):
        instance_decoding(cfg, "nuclei")
    inf = InferenceConfig()
    assert wants_instances(open_resolution("glands", "gland"), inf)
    assert not wants_instances(open_resolution("dark cells"), inf)
    assert not wants_instances(geometric("<box 0>"), inf) and not wants_instances(None, inf)
    # the rule is a setting: glands counted object by object only while "gland" is an instance object type
    assert not wants_instances(open_resolution("glands", "gland"), InferenceConfig(instance_object_types=("nucleus",)))
    halved = instance_decoding(SimpleNamespace(preprocess=cfg.preprocess, inference=InferenceConfig(
        instance_min_area_px=16, instance_watershed_h_px=3.0)), "nuclei", "watershed")
    assert (halved.min_area, halved.h) == (16, 3.0)  # the decoder's parameters come from the settings


def test_resize_labels_nearest():
    lab = np.array([[1, 2], [3, 0]], np.int32)
    big = resize_labels(lab, (4, 4))
    assert big.dtype == np.int32 and big.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0], [3, 3, 0, 0]]


@pytest.fixture(scope="module")
def sep_model():
    from pathsegmentor import create_model

    torch.manual_seed(0)
    return create_model("pathsegmentor-test", overrides={"mask_decoder.separation_channels": 3}).eval()


def test_separation_head_shapes_and_ranges(sep_model):
    window = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    emb = sep_model.encode_text(["nuclei", "gland"])
    pred = sep_model.predict_window_maps(window, emb, None, None, None, separation=True)
    assert pred.probs.shape == (2, 64, 80) and pred.separation.shape == (2, 3, 64, 80)
    assert -1 <= pred.separation[:, :2].min() and pred.separation[:, :2].max() <= 1
    assert 0 <= pred.separation[:, 2].min() and pred.separation[:, 2].max() <= 1
    # rows asked for: the others are zeros and the asked-for ones equal a full decode
    x = sep_model.normalize(torch.from_numpy(window).permute(2, 0, 1)[None].float())
    x = torch.nn.functional.pad(x, (0, 0, 0, 0))
    feats = sep_model.encode_image(x)
    full = sep_model.decode(feats, x, text_embeddings=emb, separation=True).separation
    part = sep_model.decode(feats, x, text_embeddings=emb, separation=torch.tensor([False, True])).separation
    assert torch.all(part[0] == 0) and torch.allclose(part[1], full[1], atol=1e-5)


def test_model_without_head_refuses_separation(test_model):
    assert not test_model.has_separation
    window = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="separation head"):
        test_model.predict_window_maps(window, test_model.encode_text(["nuclei"]), None, None, None, separation=True)


@pytest.mark.parametrize("decoder", ["auto", "hv", "distance", "watershed"])
def test_segment_returns_instances_for_instance_concepts(sep_model, decoder):
    img = np.random.default_rng(1).integers(0, 255, (72, 90, 3), dtype=np.uint8)
    res = sep_model.segment(img, ["nuclei", "tumor"], instances=decoder, presence_threshold=0.0,
                            mask_threshold=0.3)
    assert res.instances.shape == (2, 72, 90) and res.instances.dtype == np.int32
    assert not res.instances[1].any()  # "tumor" is a region, not counted object by object
    assert res.instance_counts[1] is None and res.instance_counts[0] == len(np.unique(res.instances[0][res.instances[0] > 0]))
    assert not (res.instances[0] > 0)[~res.masks[0]].any() or decoder != "watershed"
    s = res.summary()
    assert s["prompts"][0]["instances"] == res.instance_counts[0] and "instances" not in s["prompts"][1]


def test_segment_instances_none_and_bad_choice(sep_model):
    img = np.zeros((40, 40, 3), np.uint8)
    assert sep_model.segment(img, "nuclei", instances="none").instances is None
    with pytest.raises(ValueError, match="instance decoder"):
        sep_model.segment(img, "nuclei", instances="cellpose")


def test_tta_flips_match_for_a_symmetric_input(sep_model):
    img = np.full((64, 64, 3), 200, np.uint8)
    img[24:40, 24:40] = (60, 30, 120)
    plain = sep_model.segment(img, "nuclei", presence_threshold=0.0)
    tta = sep_model.segment(img, "nuclei", presence_threshold=0.0, tta=True)
    assert tta.probs.shape == plain.probs.shape
    assert np.abs(tta.probs - plain.probs).max() < 0.5  # an average of flipped predictions, not something else


@pytest.fixture(scope="module")
def instance_corpus(tmp_path_factory) -> Path:
    from data_builders import build
    from data_builders.synthetic import write_folder_dataset

    source = write_folder_dataset(tmp_path_factory.mktemp("inst_src"), n=6, size=96)
    source["instances"] = "components"
    out = tmp_path_factory.mktemp("inst_corpus") / "pathseg"
    build({"folder": source}, out, val_fraction=0.2, tile=1024, seed=0, progress=False)
    return out


def _crops(corpus_dir: Path, **cfg):
    from data_builders import load_pathseg
    from pathsegmentor.training.data import DataConfig, PromptedCrops

    corpus = load_pathseg(corpus_dir)
    dc = DataConfig(corpus=str(corpus_dir), crop=64, **cfg)
    return PromptedCrops(corpus, "train", dc, model_mpp=0.5, seed=0)


def test_training_samples_geometric_prompts_and_separation_targets(instance_corpus):
    ds = _crops(instance_corpus, prompts_per_image=4, geometric_per_image=2, separation=True,
                negatives_per_image=0, scale_jitter=0.0)
    kinds = set()
    for pos in range(12):
        it = ds[(pos, pos % len(ds))]
        assert it["boxes"].shape == (4, 4) and it["points"].shape == (4, 2)
        assert it["sep_target"].shape == (4, 3, 64, 64) and it["sep_valid"].dtype == torch.bool
        for j, lab in enumerate(it["labels"]):
            if lab.startswith("<"):
                kinds.add(lab.split(">")[0][1:])
                has_box = not torch.isnan(it["boxes"][j, 0])
                has_point = not torch.isnan(it["points"][j, 0])
                assert has_box != has_point and it["presence"][j] == 1 and it["target"][j].any()
                assert (it["prompts"][j] == "") == (not lab.startswith("<text+box>"))
                if has_box:  # the target lies inside the box (a user's box may clip 10 % of the object)
                    x0, y0, x1, y1 = it["boxes"][j].tolist()
                    ys, xs = np.nonzero(it["target"][j].numpy())
                    tx, ty = 0.1 * (xs.max() + 1 - xs.min()) + 1, 0.1 * (ys.max() + 1 - ys.min()) + 1
                    assert xs.min() >= x0 - tx and xs.max() <= x1 + tx and ys.min() >= y0 - ty and ys.max() <= y1 + ty
                assert not it["sep_valid"][j]
            elif it["sep_valid"][j]:
                obj = it["target"][j] > 0
                assert it["sep_target"][j][2][obj].min() > 0 and it["sep_target"][j][:, ~obj].abs().max() == 0
    assert kinds == {"box", "point", "text+box"}


def test_geometric_prompt_prefers_whole_objects_and_falls_back_to_cut_ones():
    from pathsegmentor.training.prompt_sampling import geometric_prompt

    inst = np.zeros((32, 32), np.int32)
    inst[0:20, 0:12] = 1  # cut by the top and left borders
    inst[20:28, 16:24] = 2  # inside
    rng = np.random.default_rng(0)
    for _ in range(8):  # an inside object exists: always that one
        target, box, _ = geometric_prompt("box", inst > 0, inst, rng)
        assert target.astype(bool).sum() == 64 and box[0] >= 14
    inst[inst == 2] = 0  # only the cut gland is left: its visible part, its box clipped to the crop
    target, box, _ = geometric_prompt("box", inst > 0, inst, rng)
    assert np.array_equal(target > 0, inst == 1)
    assert box.min() >= 0 and box[2] <= 32 and box[3] <= 32 and box[2] >= 12 * 0.9
    target, _, point = geometric_prompt("point", inst > 0, inst, rng)
    assert inst[int(point[1]), int(point[0])] == 1
    assert geometric_prompt("point", inst > 0, np.zeros_like(inst), rng) is None


def test_training_samples_certain_negatives_and_blank_inputs(instance_corpus):
    from pathsegmentor.training.prompt_sampling import negative_phrases

    phrases = set(negative_phrases()["train"])
    assert not phrases & set(negative_phrases()["heldout"])
    ds = _crops(instance_corpus, prompts_per_image=4, ood_negatives_per_image=1, blank_prob=0.5)
    seen_ood = blanks = 0
    for pos in range(16):
        it = ds[(pos, pos % len(ds))]
        for j, p in enumerate(it["prompts"]):
            if p in phrases:
                seen_ood += 1
                assert it["presence"][j] == 0 and not it["target"][j].any()
        if float(it["presence"].sum()) == 0 and it["pixels"].float().std() < 20:
            blanks += 1
    assert seen_ood >= 12 and blanks >= 3


def test_other_organ_concepts():
    from pathsegmentor.ontology import Ontology
    from pathsegmentor.training.prompt_sampling import other_organ_concepts

    onto = Ontology.load()
    colon = other_organ_concepts(onto, "colon")
    assert "breast tumor nuclei" in colon and "colon tumor nuclei" not in colon and "nuclei" not in colon
    assert other_organ_concepts(onto, "any") == []


def test_forward_with_geometric_rows_and_separation(sep_model):
    pixels = sep_model.normalize(torch.randint(0, 255, (2, 3, 64, 64)).float())
    prompts = [["nuclei", "", ""], ["gland", "nuclei", ""]]
    boxes = torch.full((2, 3, 4), float("nan"))
    points = torch.full((2, 3, 2), float("nan"))
    boxes[0, 1] = torch.tensor([4.0, 4.0, 30.0, 30.0])
    points[0, 2] = torch.tensor([10.0, 12.0])
    boxes[1, 1] = torch.tensor([0.0, 0.0, 40.0, 40.0])  # text + box
    boxes[1, 2] = torch.tensor([8.0, 8.0, 20.0, 20.0])
    rows = torch.tensor([[True, False, False], [False, True, False]])
    out = sep_model(pixels, prompts, boxes=boxes, points=points, separation=rows)
    assert out.mask_logits.shape == (2, 3, 64, 64) and out.separation.shape == (2, 3, 3, 64, 64)
    assert torch.all(out.separation[0, 1:] == 0) and out.separation[0, 0].abs().sum() > 0
    # the text-only row equals a plain text-only forward
    plain = sep_model(pixels, [["nuclei"], ["gland"]])
    assert torch.allclose(out.mask_logits[0, 0], plain.mask_logits[0, 0], atol=1e-4)


def test_box_on_an_image_larger_than_a_window_crops_a_window_around_it(test_model):
    size = test_model.config.preprocess.input_size
    img = np.random.default_rng(0).integers(0, 255, (size * 5 + 60, size * 7, 3), dtype=np.uint8)
    box = np.array([size * 6, size * 4, size * 6 + 40, size * 4 + 30])
    res = test_model.segment(img, boxes=box)
    assert res.masks.shape == (1, *img.shape[:2])
    ys, xs = np.nonzero(res.probs[0] > 0)
    # everything predicted lies in one window that holds the box
    assert xs.max() - xs.min() < size and ys.max() - ys.min() < size
    assert xs.min() <= box[0] and xs.max() >= box[2] - 1 and ys.min() <= box[1] and ys.max() >= box[3] - 1
    far = np.array([[0, 0, 10, 10], [img.shape[1] - 10, img.shape[0] - 10, img.shape[1], img.shape[0]]])
    with pytest.raises(ValueError, match="do not fit in one"):
        test_model.segment(img, boxes=far)



def test_geometric_window_runs_a_point_or_box_in_a_window_of_the_trained_size(test_model, monkeypatch):
    size = test_model.config.preprocess.input_size
    win = size // 2
    monkeypatch.setattr(test_model.config.inference, "geometric_window", win)
    img = np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)  # fits one input window
    seen = []
    real = test_model.encode_window
    monkeypatch.setattr(test_model, "encode_window", lambda w: seen.append(w.shape) or real(w))
    res = test_model.segment(img, points=np.array([[[size - 5.0, 5.0]]]), point_labels=np.array([[1]]))
    assert seen == [(win, win, 3)] and res.masks.shape == (1, size, size)
    ys, xs = np.nonzero(res.probs[0] > 0)
    assert xs.min() >= size - win and ys.max() < win  # the window sits in the corner that holds the point
    seen.clear()
    big = np.array([4.0, 4.0, 4.0 + 0.9 * size, 4.0 + 0.6 * size])  # a large box gets a larger window, margin kept
    test_model.segment(img, boxes=big)
    assert seen == [(size, size, 3)]
    seen.clear()
    test_model.segment(img, ["nuclei"])  # text alone: the whole image, as before; encoded by the box call already
    assert seen == []  # (the predictor's cache: same pixels, same weights)
    test_model.predictor.cache.clear()
    test_model.segment(img, ["nuclei"])
    assert seen == [(size, size, 3)]
    monkeypatch.setattr(test_model.config.inference, "geometric_window", -1)
    with pytest.raises(ValueError, match="geometric_window is -1"):
        test_model.segment(img, boxes=big)

def test_separation_loss_without_instance_rows_is_zero():
    from pathsegmentor.training.losses import separation_loss

    t = torch.zeros(2, 3, 3, 8, 8)
    rows = torch.zeros(2, 3, dtype=torch.bool)
    assert float(separation_loss(None, t, rows, torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8, dtype=torch.bool))) == 0
    raw = torch.zeros(2, 3, 3, 8, 8, requires_grad=True)
    rows[0, 1] = True
    objects = torch.zeros(2, 3, 8, 8)
    objects[0, 1, 2:6, 2:6] = 1
    loss = separation_loss(raw, t, rows, objects, torch.ones(2, 3, 8, 8, dtype=torch.bool))
    loss.backward()
    assert float(loss) > 0 and raw.grad[0, 1].abs().sum() > 0 and raw.grad[1].abs().sum() == 0


def test_native_views_cut_a_sources_images_at_their_own_pixels(instance_corpus, monkeypatch):
    """data.native_prob: crops of the named sources at the image's own pixels (what segment(mpp=None) reads), the
    others at the working µm/px; 0 draws nothing."""
    from pathsegmentor.training import data as data_mod

    scales = []
    real = data_mod.random_scaled_crop
    monkeypatch.setattr(data_mod, "random_scaled_crop", lambda *a, **k: scales.append(k["scale"]) or real(*a, **k))

    def crops(source: str, **cfg):
        ds = _crops(instance_corpus, scale_jitter=0.0, **cfg)
        sample = ds._sample
        ds._sample = lambda i: {**sample(i), "mpp": 1.0, "source": source}  # 1 µm/px; the model works at 0.5
        scales.clear()
        for pos in range(6):
            ds.view(pos, 0)
        return list(scales)

    assert crops("ebhi_seg") == [2.0] * 6  # scaled to the working µm/px
    assert crops("ebhi_seg", native_prob=1.0, native_sources=["ebhi_seg"]) == [1.0] * 6
    assert crops("glas", native_prob=1.0, native_sources=["ebhi_seg"]) == [2.0] * 6
    half = crops("ebhi_seg", native_prob=0.5, native_sources=["ebhi_seg"])
    assert set(half) <= {1.0, 2.0}
