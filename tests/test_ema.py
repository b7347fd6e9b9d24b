"""The moving average of the weights (``train.ema_decay``): what it tracks, that it is the final model, exact resume."""
from __future__ import annotations

import pytest

from pathsegmentor.modeling.config import ConfigError
from train_helpers import TEST_RECIPE, run_cli as _run_cli, weights as _weights


def test_weight_average_follows_the_weights_and_round_trips():
    import torch

    from pathsegmentor.training.ema import WeightAverage, check_ema_decay

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    net[0].bias.requires_grad_(False)  # frozen: not tracked
    ema = WeightAverage(net, 0.9)
    assert "0.bias" not in ema.shadow and "1.running_mean" in ema.shadow and "1.num_batches_tracked" not in ema.shadow
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update(net)  # first update: rate min(0.9, 2 / 11), so the average moves 9/11 of the way
    torch.testing.assert_close(ema.shadow["0.weight"], start + 9.0 / 11.0)
    for _ in range(200):
        ema.update(net)
    torch.testing.assert_close(ema.shadow["0.weight"], start + 1.0)  # converges to constant weights
    other = WeightAverage(net, 0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 201
    fresh = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    fresh[0].bias.requires_grad_(False)
    ema.copy_to(fresh)
    torch.testing.assert_close(fresh[0].weight, ema.shadow["0.weight"])
    with pytest.raises(ValueError, match="other weights"):
        WeightAverage(torch.nn.Linear(2, 2), 0.9).load_state_dict(ema.state_dict())
    for bad in (1.0, -0.5, 2):
        with pytest.raises(ConfigError, match=f"train.ema_decay={float(bad)}"):
            check_ema_decay(bad)
    assert check_ema_decay(0) == 0.0


def test_weight_average_is_the_final_model_and_resumes_exactly(tmp_path, tiny_corpus):
    """train.ema_decay: the saved model is the average (not the raw weights, which the checkpoint keeps), and a leg
    stopped and resumed ends at the same average as a straight run; resuming with another decay and a bad decay
    are refused before any output."""
    common = ["--config", str(TEST_RECIPE), f"data.corpus={tiny_corpus}", "train.steps=6", "train.save_every=3"]
    runs = {}
    for name, extra in (("raw", []), ("straight", ["train.ema_decay=0.5"])):
        r = _run_cli(common + [f"output_dir={tmp_path / name}", *extra])
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = _weights(tmp_path / name)
    leg = tmp_path / "leg"
    r = _run_cli(common + [f"output_dir={leg}", "train.ema_decay=0.5", "train.stop_after=3"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run_cli(common + [f"output_dir={leg}", "--resume"])  # without the average it started with: refused
    assert r.returncode == 2 and "train.ema_decay=0.5" in r.stderr and not (leg / "model").exists()
    r = _run_cli(common + [f"output_dir={leg}", "train.ema_decay=0.5", "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((leg / "checkpoints" / "step_0000003").glob("custom_checkpoint_*"))  # the average is checkpointed
    resumed = _weights(leg)
    assert any(not (runs["raw"][k] == runs["straight"][k]).all() for k in runs["raw"])  # the average, not the raw
    for k in runs["straight"]:
        assert (runs["straight"][k] == resumed[k]).all(), f"{k} differs after resume"
    bad = tmp_path / "bad"
    r = _run_cli(common + [f"output_dir={bad}", "train.ema_decay=1.5"])
    assert r.returncode == 2 and "train.ema_decay=1.5" in r.stderr and not bad.exists()
