"""Process splitting for slide runs: rank, world size and barrier (Accelerate's state under a
multi-process launch, trivial otherwise), and which bands each rank predicts."""
from __future__ import annotations

import os


class _Processes:
    """Rank/world/barrier: Accelerate's state when launched multi-process, trivial otherwise."""

    def __init__(self) -> None:
        self.rank, self.world, self.state = 0, 1, None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            self.state = PartialState(cpu=not torch.cuda.is_available())
            self.rank, self.world = self.state.process_index, self.state.num_processes

    @property
    def device(self):
        return self.state.device if self.state is not None else None

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def bands_for_rank(n_bands: int, rank: int, world: int) -> list[int]:
    """Bands a process predicts: interleaved (``b % world == rank``) so progress is even."""
    return [b for b in range(n_bands) if b % world == rank]

