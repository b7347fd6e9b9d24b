"""CellSAM: dual encoders, distillation, aggregation, mask fusion, deployment modes, paper metrics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pathsegmentor import create_model, list_models
from pathsegmentor.cellsam import BRANCHES, MODES
from pathsegmentor.training.distillation import TeacherCache, distillation_loss, main as distill_main
from pathsegmentor.cellsam.model import CellSAM, CellSAMOutput
from pathsegmentor.modeling.config import ConfigError
from pathsegmentor.modeling.build import UNUSED_SAM_PARTS
from pathsegmentor import from_pretrained
from pathsegmentor.modeling.weights import CheckpointError, load_sam_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DISTILL_TEST = REPO_ROOT / "configs" / "train" / "distill-test.yaml"
FOLDERS = ("monuseg/MoNuSegTrainingData/Tissue_Images", "glas/images", "consep/images")


def _need_shared_data() -> None:
    missing = [f for f in FOLDERS if not (SHARED_DATA / f).is_dir()]
    if missing:
        pytest.skip(f"real tiles not available under {SHARED_DATA} (missing {missing}); they exist only in the "
                    f"project's CI/dev checkout")


def _model(seed: int = 0) -> CellSAM:
    torch.manual_seed(seed)
    return create_model("cellsam-test")


def _pixels(model, b=2, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return model.normalize(torch.randint(0, 256, (b, 3, size, size), generator=g).float())


class TeacherCounter:
    """Counts teacher forwards (a pre-hook on the ViT's patch embedding, which every forward runs)."""

    def __init__(self, model: CellSAM) -> None:
        self.calls = 0
        model.image_encoder.teacher.patch_embed.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cellsam-test")
    _model().save_pretrained(d)
    return d


def test_registered_variants_and_config_errors():
    assert {"cellsam-test", "cellsam-vit-b"} <= set(list_models())
    m = _model()
    assert isinstance(m, CellSAM) and m.mode == "fused"
    with pytest.raises(ValueError, match="Unknown CellSAM mode 'fast'.*student"):
        m.set_mode("fast")
    with pytest.raises(ConfigError, match="image_encoder.teacher is empty"):
        create_model("cellsam-test", overrides={"image_encoder.teacher": {}})
    with pytest.raises(ConfigError, match="unknown key.*'depth'"):
        create_model("cellsam-test", overrides={"image_encoder.student": {"type": "timm", "depth": 3}})
    with pytest.raises(ValueError, match="Unknown image_encoder.aggregation 'sum'"):
        create_model("cellsam-test", overrides={"image_encoder.aggregation": "sum"})


@pytest.mark.parametrize("aggregation,fusion", [("concat", "gate"), ("gated", "average")])
def test_fused_forward_backward_reaches_every_trainable_part(aggregation, fusion):
    from pathsegmentor.training.losses import fused_segmentation_loss
    from pathsegmentor.training.losses import LossConfig

    torch.manual_seed(0)
    model = create_model("cellsam-test", overrides={"image_encoder.aggregation": aggregation,
                                                    "cellsam.fusion": fusion}).train()
    # timm zero-initialises the last BN of each residual block; at step 0 that zeroes its block's grads
    with torch.no_grad():
        for mod in model.image_encoder.student.modules():
            if isinstance(mod, torch.nn.BatchNorm2d) and not mod.weight.any():
                mod.weight.fill_(1.0)
    assert not model.image_encoder.teacher.training  # frozen teacher stays in eval mode
    pixels = _pixels(model)
    out = model(pixels, [["nuclei", "gland"], ["tumor nuclei", "stroma"]])
    assert isinstance(out, CellSAMOutput) and set(out.branches) == set(BRANCHES)
    assert out.mask_logits.shape == (2, 2, 128, 128) and out.presence_logits.shape == (2, 2)
    for b in out.branches.values():
        assert b.mask_logits.shape == out.mask_logits.shape
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(out.mask_logits.shape, generator=g) > 0.5).float()
    losses = fused_segmentation_loss(out, target, torch.ones_like(target, dtype=torch.bool),
                                     torch.tensor([[1.0, 0.0], [0.0, 1.0]]), LossConfig())
    assert {f"branch_{k}" for k in BRANCHES} <= set(losses)
    # point and box prompts reach SAM's point embeddings, as in the base model
    feats = model.encode_image(pixels)
    pts = (torch.tensor([[[10.0, 20.0], [50.0, 60.0]]]), torch.tensor([[1, 0]]))
    d = model.decode(feats, pixels, text_embeddings=model.encode_text(["nuclei"]), points=pts)
    d2 = model.decode(feats, pixels, boxes=torch.tensor([[8.0, 8.0, 64.0, 90.0]]))
    loss = losses["loss"] + d.mask_logits.sigmoid().pow(2).mean() + d2.mask_logits.sigmoid().pow(2).mean()
    assert torch.isfinite(loss)
    loss.backward()

    params = dict(model.named_parameters())
    teacher = {n for n in params if n.startswith("image_encoder.teacher.")}
    assert teacher and all(not params[n].requires_grad and params[n].grad is None for n in teacher)
    frozen = {n for n, p in params.items() if not p.requires_grad}
    assert frozen == teacher | {n for n in params if n.startswith("text_encoder.") or n.startswith(UNUSED_SAM_PARTS)}
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    missing = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"trainable parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    for part in ("image_encoder.student.", "image_encoder.aggregation.", "prompt_adapter.", "mask_decoder.",
                 "prompt_encoder.point_embeddings."):
        assert any(n.startswith(part) for n in trainable), part
    assert any(n.startswith("mask_fusion.") for n in trainable) == (fusion == "gate")


def test_every_mode_loads_from_one_checkpoint_and_segments(saved_dir):
    img = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    ref = None
    for mode in MODES:
        model = CellSAM.from_pretrained(saved_dir, mode=mode)
        assert model.mode == mode
        state = model.state_dict()
        if ref is None:
            ref = state
        assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref)
        res = model.segment(img, ["nuclei", "gland"])
        assert res.masks.shape == (2, 100, 150) and res.masks.dtype == bool
        assert res.probs.shape == (2, 100, 150) and np.isfinite(res.probs).all()
    # the generic loader gives a CellSAM in the saved mode; a saved mode travels with the config
    generic = from_pretrained(saved_dir)
    assert isinstance(generic, CellSAM) and generic.mode == "fused"
    with pytest.raises(ValueError, match="Unknown CellSAM mode"):
        CellSAM.from_pretrained(saved_dir, mode="fastest")


def test_save_load_round_trip_is_bit_exact(saved_dir, tmp_path):
    model = CellSAM.from_pretrained(saved_dir, mode="student")
    model.save_pretrained(tmp_path)
    again = from_pretrained(tmp_path)
    assert again.mode == "student"
    x = _pixels(model, b=1)
    with torch.no_grad():
        for mode in MODES:
            a = model.set_mode(mode)(x, [["nuclei"]]).mask_logits
            b = again.set_mode(mode)(x, [["nuclei"]]).mask_logits
            assert torch.equal(a, b), mode


def test_student_mode_never_runs_the_teacher(saved_dir):
    model = CellSAM.from_pretrained(saved_dir, mode="student")
    counter = TeacherCounter(model)
    big = np.random.default_rng(1).integers(0, 256, (300, 260, 3), dtype=np.uint8)  # tiled: several windows
    x = _pixels(model, b=2)
    with torch.no_grad():
        model(x, [["nuclei"], ["gland"]])
        model.encode_image(x)
    model.segment(big, ["nuclei", "gland"])
    assert counter.calls == 0
    # ... while the other modes do run it (the counter works), once per encoding
    model.set_mode("teacher")
    model.segment(big[:128, :128], "nuclei")
    assert counter.calls == 1
    model.set_mode("fused")
    model.segment(big[:128, :128], "nuclei")
    assert counter.calls == 2


def test_student_mode_equals_the_fused_models_student_branch():
    model = _model().eval()
    x = _pixels(model, b=1)
    with torch.no_grad():
        fused = model.set_mode("fused")(x, [["nuclei", "gland"]])
        student = model.set_mode("student")(x, [["nuclei", "gland"]])
        teacher = model.set_mode("teacher")(x, [["nuclei", "gland"]])
    assert torch.allclose(fused.branches["student"].mask_logits, student.mask_logits, atol=1e-5)
    assert torch.allclose(fused.branches["teacher"].mask_logits, teacher.mask_logits, atol=1e-5)


def test_mask_fusion_average_and_gate_start_as_the_mean():
    from pathsegmentor.cellsam.fusion import AverageMaskFusion, GatedMaskFusion

    torch.manual_seed(0)
    logits = torch.randn(3, 3, 16, 16)
    emb = torch.randn(2, 8, 4, 4)
    index = torch.tensor([0, 1, 1])
    assert torch.allclose(AverageMaskFusion()(logits), logits.mean(1))
    gate = GatedMaskFusion(dim=8, hidden=4)
    w = gate.weights(logits, emb, index)
    assert w.shape == (3, 3, 16, 16) and torch.allclose(w.sum(1), torch.ones(3, 16, 16))
    assert torch.allclose(gate(logits, emb, index), logits.mean(1), atol=0.1)  # near-uniform at init


def test_official_sam_checkpoint_loads_into_the_teacher(tmp_path):
    src = _model(seed=1)
    official = {}
    for k, v in src.state_dict().items():  # the official layout: image_encoder.* = the SAM ViT
        if k.startswith("image_encoder.teacher."):
            official["image_encoder." + k[len("image_encoder.teacher."):]] = v.clone()
        elif k.startswith(("prompt_encoder.", "mask_decoder.")) and not k.startswith(
                ("mask_decoder.hires_", "mask_decoder.presence_head.")):
            official[k] = v.clone()
    path = tmp_path / "sam_custom.pth"
    torch.save(official, path)
    model = _model(seed=2)
    left = load_sam_checkpoint(model, path)  # dispatches to CellSAM.load_sam_checkpoint
    own = model.state_dict()
    for k, v in src.state_dict().items():
        if k.startswith("image_encoder.teacher.") or k.startswith("mask_decoder.transformer."):
            assert torch.equal(own[k], v), k
    assert any(k.startswith("image_encoder.student.") for k in left)
    assert not any(k.startswith("image_encoder.teacher.") for k in left)
    bad = dict(official)
    del bad["image_encoder.neck.0.weight"]
    bad["image_encoder.extra.weight"] = torch.zeros(1)
    torch.save(bad, path)
    with pytest.raises(CheckpointError) as e:
        load_sam_checkpoint(_model(), path)
    assert "image_encoder.teacher.neck.0.weight" in str(e.value) and "image_encoder.extra.weight" in str(e.value)


def test_teacher_cache_hit_avoids_recomputation(tmp_path):
    calls = []

    def teacher(pixels):
        calls.append(pixels.shape[0])
        return pixels.mean(1, keepdim=True).repeat(1, 4, 1, 1)[..., ::4, ::4] * 2

    cache = TeacherCache(tmp_path, "fingerprint", "float32")
    pixels = torch.randn(3, 3, 16, 16)
    keys = ["a.png|crop=0,0,16", "a.png|crop=0,16,16", "b.png|crop=0,0,16"]
    first = cache.embeddings(keys, pixels, teacher)
    assert calls == [3] and cache.misses == 3 and cache.hits == 0
    again = cache.embeddings(keys, pixels, teacher)
    assert calls == [3] and cache.hits == 3 and torch.equal(first, again)
    # a new tile in the batch: only it is computed; another teacher (fingerprint) shares nothing
    cache.embeddings(keys[:2] + ["c.png|crop=0,0,16"], pixels, teacher)
    assert calls == [3, 1]
    other = TeacherCache(tmp_path, "another-teacher")
    other.embeddings(keys, pixels, teacher)
    assert calls == [3, 1, 3]
    assert len(list((tmp_path / "fingerprint").glob("*.safetensors"))) == 4


def test_distillation_loss_values():
    t = torch.randn(2, 8, 4, 4)
    zero = distillation_loss(t.clone(), t)
    assert float(zero["mse"]) == 0.0 and abs(float(zero["cosine"])) < 1e-6
    neg = distillation_loss(-t, t)
    assert abs(float(neg["cosine"]) - 2.0) < 1e-5 and abs(float(neg["mse"]) - float((4 * t * t).mean())) < 1e-4


@pytest.mark.slow
def test_distillation_on_real_tiles_lowers_the_loss_and_reuses_the_teacher_cache(tmp_path):
    _need_shared_data()
    out = tmp_path / "run"
    cache_dir = tmp_path / "teacher_cache"
    rc = distill_main(["--config", str(DISTILL_TEST), "--output-dir", str(out), f"cache.dir={cache_dir}",
                       "train.steps=8", "data.max_tiles=8", "data.holdout_max_tiles=4"])
    assert rc == 0
    summary = json.loads((out / "distill_summary.json").read_text())
    losses = [float(r.split(",")[3]) for r in (out / "distill_log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert summary["holdout_after"]["cosine_similarity"] > summary["holdout_before"]["cosine_similarity"]
    assert summary["holdout_after"]["loss"] < summary["holdout_before"]["loss"]
    # whole images are held out: no held-out image contributes training tiles
    assert summary["holdout_images"] and summary["teacher_calls"] > 0
    # the teacher ran once per tile: a second run over the same tiles hits the cache every time
    n_tiles = summary["cache_misses"]
    assert n_tiles <= summary["train_tiles"] + summary["holdout_tiles"]
    rc = distill_main(["--config", str(DISTILL_TEST), "--output-dir", str(tmp_path / "run2"),
                       f"cache.dir={cache_dir}", "train.steps=3", "data.max_tiles=8", "data.holdout_max_tiles=4"])
    assert rc == 0
    second = json.loads((tmp_path / "run2" / "distill_summary.json").read_text())
    assert second["teacher_calls"] == 0 and second["cache_misses"] == 0 and second["cache_hits"] > 0
    # the distilled model loads in every mode from the one saved directory
    model = CellSAM.from_pretrained(out / "model", mode="student")
    assert model.segment(np.zeros((64, 64, 3), np.uint8), "nuclei").masks.shape == (1, 64, 64)


def test_distill_bad_input_clear_errors(tmp_path, capsys):
    assert distill_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {name: cellsam-test}\ndata: {folders: [{path: /nonexistent/dir}]}\n")
    assert distill_main(["--config", str(cfg), "--output-dir", str(tmp_path / "o")]) == 2
    assert "/nonexistent/dir" in capsys.readouterr().err
    cfg.write_text("model: {name: pathsegmentor-test}\ndata: {folders: [{path: " + str(tmp_path) + "}]}\n")
    assert distill_main(["--config", str(cfg), "--output-dir", str(tmp_path / "o")]) == 2
    assert "not a CellSAM model" in capsys.readouterr().err
    assert distill_main(["--config", str(cfg), "data.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert not (tmp_path / "o" / "model").exists()


def test_paper_metrics_by_hand():
    from pathsegmentor.evaluation.cellsam_metrics import cellsam_scores, evaluate_masks

    target = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)  # 3 positive pixels of 8
    pred = np.array([[1, 0, 1, 0], [1, 0, 0, 0]], bool)  # TP 2, FP 1, FN 1, TN 4
    s = cellsam_scores(pred, target)
    assert s == pytest.approx({"accuracy": 6 / 8, "recall": 2 / 3, "precision": 2 / 3, "dice": 4 / 6})
    empty = np.zeros_like(target)
    r = evaluate_masks([(pred, target), (empty, empty)])
    assert r["n_images"] == 2
    assert r["mean"] == pytest.approx({"accuracy": (6 / 8 + 1) / 2, "recall": (2 / 3 + 1) / 2,
                                       "precision": (2 / 3 + 1) / 2, "dice": (4 / 6 + 1) / 2})
    assert r["pooled"] == pytest.approx({"accuracy": 14 / 16, "recall": 2 / 3, "precision": 2 / 3, "dice": 4 / 6})


@pytest.mark.slow
def test_distillation_resume_is_exact(tmp_path):
    _need_shared_data()
    from safetensors.torch import load_file

    def run(out: str, steps: int, *flags: str) -> int:
        return distill_main(["--config", str(DISTILL_TEST), "--output-dir", str(tmp_path / out), *flags,
                             f"cache.dir={tmp_path / 'cache'}", "data.max_tiles=8", "data.holdout_max_tiles=2",
                             "train.save_every=2", f"train.steps={steps}"])  # constant LR in this recipe

    assert run("straight", 4) == 0
    assert run("split", 2) == 0
    assert run("split", 4, "--resume") == 0
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # without --resume an output dir holding checkpoints is refused
    assert run("split", 4) == 2
