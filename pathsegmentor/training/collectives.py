"""Cross-rank gathers for metrics and summaries that cannot deadlock the process group's teardown.

Why not ``accelerate.utils.gather_object`` / ``accelerator.reduce``: with the gloo backend, the
worker thread that ran a collective frees the collective (and the Python tensors it holds) *after*
the waiting rank has already resumed. Freeing a Python-owned tensor needs the GIL. If the main thread
meanwhile drops the last reference to the process group (DDP's reducer at the end of a run), the
group's destructor joins that worker thread *while holding the GIL*: both wait for ever. On a loaded
machine two-process runs hung this way after their last ``gather_object`` (``bench/ddp_exit.py``
repeats such runs under load and counts the ones that do not exit).

The functions here keep the handles of their own collectives (and so their tensors) alive in this
module until the next gather has completed, so a gloo worker never frees a Python tensor: the
main thread does, when it replaces them. Single-process runs return at once with no collective.
"""
from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch

# handles and tensors of the latest gather; released by the main thread when the next one completes
_held: list[Any] = []


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_objects(obj: Any, device: torch.device | str = "cpu") -> list[Any]:
    """Gather one picklable object from every rank; returns them in rank order on every rank.

    ``device``: where the byte tensors live (``accelerator.device``; CUDA for NCCL). Without an
    initialised multi-process group this is ``[obj]``.
    """
    if not _distributed():
        return [obj]
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)
    size = torch.tensor([payload.numel()], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    size_work = dist.all_gather(sizes, size, async_op=True)
    size_work.wait()
    lengths = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    outs = [torch.empty_like(padded) for _ in range(world)]
    data_work = dist.all_gather(outs, padded, async_op=True)
    data_work.wait()
    objs = [pickle.loads(o[:n].cpu().numpy().tobytes()) for o, n in zip(outs, lengths)]
    _held[:] = [size_work, data_work, payload, size, sizes, padded, outs]
    return objs


def mean_across_ranks(values: Mapping[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Per-key mean of ``values`` over all ranks (each rank passes the same keys)."""
    gathered = all_gather_objects({k: float(v) for k, v in values.items()}, device)
    return {k: sum(g[k] for g in gathered) / len(gathered) for k in values}
