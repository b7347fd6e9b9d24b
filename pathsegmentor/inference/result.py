"""What :meth:`PathSegmentor.segment` returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .prompts import PromptResolution


@dataclass
class SegmentationResult:
    """Masks for N prompts at the input image's full resolution.

    Attributes:
        prompts: the N prompts as given (text, or ``"<box 0>"``-style labels for geometric prompts).
        masks: ``bool [N, H, W]``; empty for prompts judged absent (presence < threshold).
        probs: ``float32 [N, H, W]`` in [0, 1], per-pixel probabilities (not gated by presence).
        presence: ``float32 [N]`` in [0, 1]: probability that the target is in the image at all.
        image_size: ``(H, W)`` of the input.
        mpp: microns per pixel of the input if given, else None.
        model: the model's name.
        resolutions: N :class:`~pathsegmentor.inference.prompts.PromptResolution` (concept, answered-as,
            relation, similarity, reason) in prompt order.
        mpp_estimate: with ``mpp="auto"``, the estimate (``mpp``, ``low``, ``high``, ``nuclei``, ``method``);
            ``mpp`` then holds the estimated value.
        instances: ``int32 [N, H, W]`` instance label maps (0 background, ids 1..K per prompt) for prompts of
            instance concepts (nuclei, cells, glands); all-zero rows for other prompts; None when no prompt
            is an instance concept (or ``instances="none"``).
        instance_rows: N flags: which prompts were separated into instances (the model's rule,
            :func:`~.separation.wants_instances`); None: none.
    """

    prompts: list[str]
    masks: np.ndarray
    probs: np.ndarray
    presence: np.ndarray
    image_size: tuple[int, int]
    mpp: float | None = None
    model: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)
    resolutions: list[PromptResolution] = field(default_factory=list)
    instances: np.ndarray | None = None
    mpp_estimate: dict | None = None
    instance_rows: list[bool] | None = None

    @property
    def instance_counts(self) -> list[int | None]:
        """Objects per prompt (None for prompts that are not instance concepts)."""
        if self.instances is None:
            return [None] * len(self.prompts)
        return [int(len(np.unique(m[m > 0]))) if self._is_instance_row(i) else None
                for i, m in enumerate(self.instances)]

    def _is_instance_row(self, i: int) -> bool:
        return bool(self.instance_rows[i]) if self.instance_rows is not None else False

    @property
    def labels(self) -> list[str]:
        """Legend text per prompt: ``"tumour cells -> tumor nuclei"``, ``"a red car (refused)"``."""
        return [r.label for r in self.resolutions] if self.resolutions else list(self.prompts)

    @property
    def warnings(self) -> list[str]:
        """One line per prompt that was substituted (answered by a relative) or refused, and one for an
        estimated pixel size."""
        lines = [f"prompt '{r.prompt}': {r.reason}" for r in self.resolutions if not r.answered or r.substituted]
        if self.mpp_estimate:
            e = self.mpp_estimate
            lines.append(f"mpp estimated from the image: {e['mpp']:.3g} µm/px (range {e['low']:.3g}-{e['high']:.3g}, "
                         f"{e['nuclei']} nuclei, {e['method']}); pass mpp=X if the pixel size is known")
        return lines

    @property
    def mask(self) -> np.ndarray:
        """``bool [H, W]``: the first prompt's mask."""
        return self.masks[0]

    @property
    def area_fraction(self) -> np.ndarray:
        """``float32 [N]``: fraction of the image each mask covers."""
        return self.masks.reshape(len(self.prompts), -1).mean(1).astype(np.float32)

    def summary(self) -> dict:
        """JSON-ready summary: per prompt presence, area and resolution; image size, model, mpp."""
        h, w = self.image_size
        counts = self.instance_counts
        return {
            "model": self.model,
            "image_size": {"height": int(h), "width": int(w)},
            "mpp": self.mpp,
            **({"mpp_estimate": self.mpp_estimate} if self.mpp_estimate else {}),
            "thresholds": self.thresholds,
            "prompts": [
                {"prompt": p, "presence": round(float(s), 6), "present": bool(m.any()),
                 "area_fraction": round(float(a), 6), "area_pixels": int(m.sum()),
                 **({"instances": counts[i]} if counts[i] is not None else {}),
                 **({"resolution": self.resolutions[i].to_dict()} if self.resolutions else {})}
                for i, (p, s, a, m) in enumerate(zip(self.prompts, self.presence, self.area_fraction, self.masks))
            ],
            "warnings": self.warnings,
        }
