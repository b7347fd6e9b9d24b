"""Training smoke tier: single process, two processes (gloo DDP on CPU), exact resume, embedding cache,
evaluation on the trained output, and bad configurations."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pathsegmentor.modeling.config import ConfigError
from pathsegmentor.training.segmentation import load_train_config, run_training

from train_helpers import REPO, TEST_RECIPE
from train_helpers import run_cli as _run_cli
from train_helpers import weights as _weights


def _cfg(tmp: Path, corpus: Path, *extra: str):
    return load_train_config(TEST_RECIPE, [f"data.corpus={corpus}", f"output_dir={tmp}", *extra])


def test_single_process_trains_and_loss_decreases(tmp_path, tiny_corpus):
    cfg = _cfg(tmp_path / "run", tiny_corpus, "train.steps=30", "train.log_every=10", "train.save_every=30",
               "optim.lr=0.003")
    res = run_training(cfg)
    assert res["num_processes"] == 1 and res["steps"] == 30
    assert res["last_loss"] < res["first_loss"], res
    out = tmp_path / "run"
    for f in ("train_config.yaml", "train_log.csv", "loss_curve.png", "model/model.safetensors", "model/config.json"):
        assert (out / f).is_file(), f
    rows = (out / "train_log.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 4


@pytest.mark.slow
def test_two_process_ddp_gloo(tmp_path, tiny_corpus):
    port = _free_port()
    out = tmp_path / "ddp"
    r = _run_cli(["--config", str(TEST_RECIPE), f"data.corpus={tiny_corpus}", f"output_dir={out}",
                  "train.steps=20", "train.log_every=10", "train.save_every=20", "optim.lr=0.003"],
                 launcher=["torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                           "--master_port", str(port)])
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["num_processes"] == 2
    a, b = summary["param_checksums"]
    assert a == b, "replicas diverged across ranks"
    assert summary["last_loss"] < summary["first_loss"]


@pytest.mark.slow
def test_two_process_evaluate_matches_one(tmp_path, tiny_corpus, test_model_dir):
    """torchrun evaluation: images split by rank, rows gathered back in corpus order, same report."""
    args = ["--model", str(test_model_dir), "--data", str(tiny_corpus), "--split", "train"]
    one = _run_cli([*args, "--out", str(tmp_path / "one")], module="pathsegmentor.evaluation.evaluate")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run_cli([*args, "--out", str(tmp_path / "two")], module="pathsegmentor.evaluation.evaluate",
                   launcher=["torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                             "--master_port", str(_free_port())])
    assert two.returncode == 0, two.stderr[-3000:]
    rows_one = (tmp_path / "one" / "rows.csv").read_text()
    assert rows_one.count("\n") > 6  # header + one row per (image, prompt)
    assert (tmp_path / "two" / "rows.csv").read_text() == rows_one


def test_exact_resume_after_kill(tmp_path, tiny_corpus):
    """A run killed by a real SIGKILL from outside (once its first checkpoint is written) resumes exactly: the
    weights equal those of a run that was never interrupted."""
    import signal
    import time

    common = ["--config", str(TEST_RECIPE), f"data.corpus={tiny_corpus}", "train.steps=12", "train.save_every=3"]
    straight = tmp_path / "straight"
    r = _run_cli(common + [f"output_dir={straight}"])
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = tmp_path / "resumed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pathsegmentor.training", *common, f"output_dir={resumed}"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((resumed / "checkpoints").glob("step_*/trainer_state.json")) and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (resumed / "model").exists()
    r = _run_cli(common + [f"output_dir={resumed}", "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), f"{k} differs after resume"


def test_a_leg_ends_at_stop_after_and_resumes(tmp_path, tiny_corpus):
    common = ["--config", str(TEST_RECIPE), f"data.corpus={tiny_corpus}", "train.steps=6", "train.save_every=3"]
    r = _run_cli(common + [f"output_dir={tmp_path}", "train.stop_after=3"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["stopped_after"] == 3
    assert not (tmp_path / "model").exists() and (tmp_path / "checkpoints" / "step_0000003").is_dir()
    r = _run_cli(common + [f"output_dir={tmp_path}", "--resume"])
    assert r.returncode == 0 and (tmp_path / "model" / "model.safetensors").is_file(), r.stderr[-3000:]


def test_embedding_cache_mode_then_evaluate(tmp_path, tiny_corpus):
    from data_builders import load_pathseg

    from pathsegmentor.evaluation.evaluate import evaluate
    from pathsegmentor import from_pretrained

    cfg = _cfg(tmp_path / "cache", tiny_corpus, "cache.enabled=true", "cache.views=2", "freeze.image_encoder=true",
               "train.steps=4")
    res = run_training(cfg)
    assert res["steps"] == 4
    views = sorted((tmp_path / "cache" / "embedding_cache").glob("view_*.safetensors"))
    assert views, "no cached views written"
    from pathsegmentor.training.embedding_cache import CachedViews

    cached = CachedViews(tmp_path / "cache" / "embedding_cache", prompt_source=None)
    n_images = len({f.stem.split("_")[1] for f in views})
    w = cached.view_weights(np.full(n_images, 1.0 / n_images))  # two views per image share its weight
    assert w.shape == (len(views),) and np.allclose(w, 1.0 / len(views))
    w = cached.view_weights(np.r_[0.75, np.full(n_images - 1, 0.25 / (n_images - 1))])
    assert np.isclose(w[:2].sum(), 0.75) and np.isclose(w.sum(), 1.0)
    model = from_pretrained(tmp_path / "cache" / "model")
    corpus = load_pathseg(tiny_corpus)
    result = evaluate(model, corpus, "validation", out_dir=tmp_path / "eval", progress=False)
    assert result["tables"]["overall"], "evaluation produced no rows"
    for f in ("metrics.json", "metrics.md", "rows.csv", "dice_by_category.png"):
        assert (tmp_path / "eval" / f).is_file(), f
    overall = result["tables"]["overall"][0]
    assert 0.0 <= overall["pixel_dice"] <= 1.0


def test_unknown_config_key_is_named(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_train_config(TEST_RECIPE, ["train.stepz=3"])
    assert "stepz" in str(e.value) and "steps" in str(e.value)


def test_missing_corpus_dir(tmp_path):
    cfg = _cfg(tmp_path / "run", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="pathseg-build"):
        run_training(cfg)


def test_missing_split(tmp_path, tiny_corpus):
    cfg = _cfg(tmp_path / "run", tiny_corpus, "data.train_split=holdout")
    with pytest.raises(ConfigError, match="holdout"):
        run_training(cfg)


def test_unknown_source_weight_is_a_config_error_before_any_output(tmp_path, tiny_corpus):
    cfg = _cfg(tmp_path / "run", tiny_corpus, "data.source_weights={monusg: 2}")
    with pytest.raises(ConfigError, match=r"'monusg'.*\['folder'\]"):
        run_training(cfg)
    assert not (tmp_path / "run").exists()


def test_resume_from_another_model_refused(tmp_path, tiny_corpus):
    out = tmp_path / "run"
    run_training(_cfg(out, tiny_corpus, "train.steps=3", "train.save_every=3"))
    cfg = _cfg(out, tiny_corpus, "model.overrides={mask_decoder.hires: false}")
    with pytest.raises(ConfigError, match="Cannot resume"):
        run_training(cfg, resume=True)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run_training(_cfg(out, tiny_corpus))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cellsam_fused_training_updates_the_fusion_gate(tmp_path, tiny_corpus):
    """CellSAM's mask-fusion gate (beyond the five standard parts) is optimised, with deep supervision."""
    import torch

    from pathsegmentor import from_pretrained

    res = run_training(_cfg(tmp_path / "cellsam", tiny_corpus, "model.name=cellsam-test", "data.crop=128", "train.steps=2",
                            "train.save_every=2", "optim.lr=0.01"))
    assert res["steps"] == 2
    trained = from_pretrained(tmp_path / "cellsam" / "model")
    torch.manual_seed(0)
    from pathsegmentor import create_model

    fresh = create_model("cellsam-test")
    a = dict(trained.mask_fusion.named_parameters())
    b = dict(fresh.mask_fusion.named_parameters())
    assert any(not torch.equal(a[k], b[k]) for k in a), "the fusion gate did not train"


def test_bad_loss_grid_and_frozen_module_are_named(tmp_path, tiny_corpus):
    from pathsegmentor.training.segmentation import build_model_for_training

    with pytest.raises(ConfigError, match="loss.grid 'pixels'.*'decoder'"):
        _cfg(tmp_path, tiny_corpus, "loss.grid=pixels")
    with pytest.raises(ConfigError, match="loss.interior_weight is -1.*>= 0"):
        _cfg(tmp_path, tiny_corpus, "loss.interior_weight=-1")
    cfg = _cfg(tmp_path, tiny_corpus, "freeze.image_encoder_modules=[backbone.nope]")
    with pytest.raises(ConfigError, match="no submodule 'backbone.nope'.*backbone"):
        build_model_for_training(cfg)
    assert not any(tmp_path.iterdir())  # nothing written


def test_interior_weights_make_a_missed_object_cost_more_than_its_border():
    """loss.interior_weight: on a row with instance targets a wholly missed object's centre weighs 1 + w, its edge
    1, rows without instances 1; the weighted BCE keeps its scale (all-ones weights give the plain loss)."""
    import torch

    from pathsegmentor.training.losses import LossConfig, interior_weights, segmentation_loss

    dist = torch.zeros(1, 2, 8, 8)
    dist[0, :, 2:6, 2:6] = 0.5
    dist[0, :, 3:5, 3:5] = 1.0  # an object: edge 0.5, centre 1 (both rows)
    w = interior_weights(dist, torch.tensor([[True, False]]), 2.0)
    assert float(w[0, 0, 3, 3]) == 3.0 and float(w[0, 0, 2, 2]) == 2.0 and float(w[0, 0, 0, 0]) == 1.0
    assert bool((w[0, 1] == 1).all())  # no instance targets on that row: every pixel alike
    target = (dist > 0).float()
    valid = torch.ones_like(target, dtype=torch.bool)
    cfg = LossConfig(dice=0.0, presence=0.0)
    right = 5.0 * (2 * target - 1)  # confident and right everywhere
    miss_centre, miss_edge = right.clone(), right.clone()
    miss_centre[0, 0, 3:5, 3:5] = -5.0  # the same number of wrong pixels (4) at the centre or on the edge
    miss_edge[0, 0, 2, 2:6] = -5.0
    pres = torch.zeros(1, 2)
    loss = {k: float(segmentation_loss(m, pres, target, valid, pres, cfg, pixel_weight=w)["bce"])
            for k, m in (("centre", miss_centre), ("edge", miss_edge))}
    assert loss["centre"] > loss["edge"]
    plain = segmentation_loss(miss_centre, pres, target, valid, pres, cfg)["bce"]
    assert float(segmentation_loss(miss_centre, pres, target, valid, pres, cfg,
                                   pixel_weight=torch.ones_like(w))["bce"]) == pytest.approx(float(plain))



def test_fused_loss_weighs_the_fused_masks_and_every_branch_alike():
    """CellSAM's fused mode gets loss.interior_weight's pixel weights too: the fused masks' and each branch's BCE are
    segmentation_loss's with the same weights."""
    from types import SimpleNamespace

    import torch

    from pathsegmentor.training.losses import LossConfig, fused_segmentation_loss, segmentation_loss

    g = torch.Generator().manual_seed(0)
    target = (torch.rand(1, 2, 8, 8, generator=g) > 0.5).float()
    valid = torch.ones_like(target, dtype=torch.bool)
    pres = torch.zeros(1, 2)
    weight = 1.0 + 2.0 * torch.rand(1, 2, 8, 8, generator=g)
    fused, branch = (SimpleNamespace(mask_logits=torch.randn(1, 2, 8, 8, generator=g), presence_logits=pres)
                     for _ in range(2))
    fused.branches = {"light": branch}
    cfg = LossConfig(dice=0.0, presence=0.0)
    out = fused_segmentation_loss(fused, target, valid, pres, cfg, branch_weight=0.5, pixel_weight=weight)
    want = {k: float(segmentation_loss(o.mask_logits, pres, target, valid, pres, cfg, pixel_weight=weight)["bce"])
            for k, o in (("fused", fused), ("light", branch))}
    assert float(out["bce"]) == pytest.approx(want["fused"])
    assert float(out["branch_light"]) == pytest.approx(want["light"])
    assert float(out["loss"]) == pytest.approx(want["fused"] + 0.5 * want["light"])
    unweighted = fused_segmentation_loss(fused, target, valid, pres, cfg, branch_weight=0.5)
    assert float(unweighted["bce"]) != pytest.approx(want["fused"])

def test_train_only_freezes_the_rest_and_frozen_modules_keep_their_statistics(tmp_path, tiny_corpus):
    import torch

    from pathsegmentor.training.segmentation import build_model_for_training, frozen_to_eval

    keep = "[mask_decoder.pixel_decoder,mask_decoder.dense_hypernetwork]"
    dense = ("model.overrides.mask_decoder={dense: true, hires: false, separation_channels: 4, "
             "dense_widths: [16, 16, 8, 8], dense_dim: 8, dense_fullres_dim: 8}")
    model = build_model_for_training(_cfg(tmp_path, tiny_corpus, dense, f"freeze.train_only={keep}"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("mask_decoder.pixel_decoder.", "mask_decoder.dense_hypernetwork."))
                             for n in trainable)
    assert any(".fullres." in n for n in trainable)
    model.train()
    names = frozen_to_eval(model)
    assert "image_encoder" in names and "mask_decoder.presence_head" in names
    assert not model.image_encoder.training and model.mask_decoder.pixel_decoder.training
    bn = next(m for m in model.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64) * 3, [["nuclei"], ["gland"]])
    assert torch.equal(bn.running_mean, before)  # a frozen encoder's BatchNorm is not re-estimated
    with pytest.raises(ConfigError, match="no submodule.*mask_decoder.nope"):
        build_model_for_training(_cfg(tmp_path, tiny_corpus, "freeze.train_only=[mask_decoder.nope]"))
    assert not any(tmp_path.iterdir())  # nothing written


def test_source_weights_multiply_the_balanced_shares():
    from types import SimpleNamespace

    from pathsegmentor.training.sampling import sampling_weights

    corpus = SimpleNamespace(images={"train": {"source": ["a"] * 6 + ["b"] * 2 + ["c"] * 2}})
    w = sampling_weights(corpus, "train", "source")
    np.testing.assert_allclose([w[:6].sum(), w[6:8].sum(), w[8:].sum()], [1 / 3] * 3)
    w = sampling_weights(corpus, "train", "source", source_weights={"b": 2.0})
    np.testing.assert_allclose([w[:6].sum(), w[6:8].sum(), w[8:].sum()], [0.25, 0.5, 0.25])
    assert np.allclose(w[6], w[7])  # within a source the balance is unchanged
    with pytest.raises(ValueError, match=r"'bb'.*\['a', 'b', 'c'\]"):
        sampling_weights(corpus, "train", "source", source_weights={"bb": 2.0})
    with pytest.raises(ValueError, match="must be > 0"):
        sampling_weights(corpus, "train", "source", source_weights={"a": 0.0})
    cfg = load_train_config(TEST_RECIPE, ["data.source_weights={folder: 3}"])
    assert cfg.data.source_weights == {"folder": 3}


def test_stain_concentrations_unmix_a_pure_haematoxylin_image():
    """Colour deconvolution (what hed_jitter perturbs and bench/stain_augment.py measures): glass is 0 OD, a colour made
    of haematoxylin alone comes back as haematoxylin alone at its density."""
    from pathsegmentor.training.augment import _RGB_FROM_HED, stain_concentrations

    white = np.full((4, 4, 3), 255, np.uint8)
    np.testing.assert_allclose(stain_concentrations(white), 0.0, atol=1e-5)
    od = 0.8 * _RGB_FROM_HED[0]                       # haematoxylin at 0.8 OD, no eosin or DAB
    rgb = np.clip(256.0 * np.exp(-od) - 1.0, 0, 255).round().astype(np.uint8)
    hed = stain_concentrations(np.broadcast_to(rgb, (2, 2, 3)).copy())
    assert hed.shape == (2, 2, 3) and hed.dtype == np.float32
    np.testing.assert_allclose(hed[0, 0], [0.8, 0.0, 0.0], atol=0.02)

