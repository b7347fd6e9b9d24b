"""An exponential moving average of the weights a run trains (``train.ema_decay``), saved with every checkpoint.

With batches of 4 crops on 2 CPU cores, the weights at the end of a leg are one noisy point of a wandering path:
consecutive legs of one recipe moved CoNSeP's Dice by a few hundredths on every tile (MODEL_CARD.md, v16 section).
The average of the last ~1 / (1 - decay) steps' weights (Polyak averaging; timm's ``ModelEmaV2``, the "EMA" of
most detection and segmentation recipes) is a steadier point of the same path. The final model a run saves is that
average; the raw weights stay in the checkpoints. Each checkpoint holds the average too (registered with
Accelerate), so a resumed run continues it exactly.
"""
from __future__ import annotations

from typing import Any

import torch

from ..modeling.config import ConfigError

__all__ = ["WeightAverage", "check_ema_decay"]


def check_ema_decay(decay: float) -> float:
    """Validate ``train.ema_decay``: 0 (off) or a decay in (0, 1); returns it as a float."""
    decay = float(decay)
    if decay != 0.0 and not 0.0 < decay < 1.0:
        raise ConfigError(f"train.ema_decay={decay}: give 0 (no average) or a decay in (0, 1), e.g. 0.999 (about the "
                         "last 1000 steps' weights)")
    return decay


class WeightAverage:
    """The moving average of ``model``'s trainable parameters and floating-point buffers (BatchNorm statistics).

    ``decay`` in (0, 1); the rate used at update ``n`` is ``min(decay, (1 + n) / (10 + n))``, so the first updates
    follow the weights closely instead of remembering the start (the TensorFlow / timm warm-up).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = check_ema_decay(decay)
        self.updates = 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.shadow.update({n: b.detach().clone() for n, b in model.named_buffers() if b.is_floating_point()})

    def _live(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        live = dict(model.named_parameters())
        live.update(model.named_buffers())
        missing = sorted(set(self.shadow) - set(live))
        if missing:
            raise ValueError(f"the weight average tracks {missing[:5]} that the model lacks: it was built for "
                             "another architecture")
        return live

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average toward ``model``'s current weights (once per optimiser step)."""
        self.updates += 1
        keep = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        live = self._live(model)
        for name, avg in self.shadow.items():
            avg.lerp_(live[name].detach().to(avg.dtype), 1.0 - keep)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the average into ``model`` (the final model of a run)."""
        live = self._live(model)
        for name, avg in self.shadow.items():
            live[name].copy_(avg)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("the checkpoint's weight average tracks other weights than this run trains (a changed "
                             "freeze section?); resume with the recipe the run started with")
        self.updates = int(state["updates"])
        for name, avg in state["shadow"].items():
            self.shadow[name].copy_(avg)
