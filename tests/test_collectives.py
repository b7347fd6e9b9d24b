"""Cross-rank gathers: the single-process path (no collective) and the gloo path on a real one-rank group,
with the collectives' handles kept for the main thread to release.

The two-process paths run for real in tests/test_train.py (torchrun training and evaluation)."""
from __future__ import annotations

from pathsegmentor.training import collectives


def test_single_process_gather_is_identity_without_a_group():
    obj = {"rows": [1, 2, 3], "name": "x"}
    assert collectives.all_gather_objects(obj) == [obj]
    assert collectives.mean_across_ranks({"loss": 2, "dice": 0.5}) == {"loss": 2.0, "dice": 0.5}


def test_gloo_path_round_trips_and_keeps_handles_until_the_next_gather(tmp_path, monkeypatch):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    monkeypatch.setattr(collectives, "_distributed", lambda: True)  # world size 1 skips gloo otherwise
    try:
        assert collectives.all_gather_objects(["a" * 1000, 7]) == [["a" * 1000, 7]]
        first = list(collectives._held)
        assert sum(isinstance(h, dist.Work) for h in first) == 2
        assert collectives.mean_across_ranks({"loss": 3.0}) == {"loss": 3.0}
        assert len(collectives._held) == len(first) and all(a is not b for a, b in zip(first, collectives._held))
    finally:
        dist.destroy_process_group()
        collectives._held.clear()
