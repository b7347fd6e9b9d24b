"""The P prompt rows of one training crop (:meth:`~pathsegmentor.training.data.PromptedCrops.with_prompts`):
geometric rows from instance ground truth, text rows for labels and negatives, repeats to fill P, and the
item the loader batches.

Rows are filled in the order the random draws are made, so a crop's prompts stay a pure function of its
seed and position.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..inference.separation import separation_targets
from .prompt_sampling import geometric_prompt

TextOf = Callable[[str, np.random.Generator], str]  # label -> the phrase asked (the label or a synonym)


@dataclass
class PromptRows:
    """P prompt rows for a ``c x c`` crop: ``target float32 [P, c, c]`` (0/1), ``valid bool [P, c, c]``,
    ``presence float32 [P]``, ``boxes float32 [P, 4]`` XYXY and ``points float32 [P, 2]`` XY (NaN where a
    row has none), ``sep_valid bool [P]``, ``sep_target float32 [P, K, c, c]`` (``None`` without
    separation), and per filled row its text (``""`` for a geometric prompt without text) and name."""

    target: np.ndarray
    valid: np.ndarray
    presence: np.ndarray
    boxes: np.ndarray
    points: np.ndarray
    sep_valid: np.ndarray
    sep_target: np.ndarray | None
    texts: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int, crop: int, separation_channels: int | None) -> PromptRows:
        """``n`` unfilled rows (targets 0, all valid, no box/point); ``separation_channels=None``: no
        separation targets."""
        sep = None if separation_channels is None else np.zeros((n, separation_channels, crop, crop), np.float32)
        return cls(np.zeros((n, crop, crop), np.float32), np.ones((n, crop, crop), bool), np.zeros(n, np.float32),
                   np.full((n, 4), np.nan, np.float32), np.full((n, 2), np.nan, np.float32), np.zeros(n, bool), sep)

    def add_geometric(self, geo: Sequence[tuple[str, str]], view: dict[str, Any], rng: np.random.Generator,
                      text_of: TextOf) -> None:
        """A row per ``(kind, label)`` of ``geo`` whose geometric prompt could be drawn (present, presence 1)."""
        tgt, ign, instances = view["targets"], view["ignore"], view.get("instances") or {}
        for kind, lb in geo:
            got = geometric_prompt(kind, tgt[lb], instances[lb], rng)
            if got is None:
                continue
            j = len(self.names)
            self.target[j], box, point = got
            if box is not None:
                self.boxes[j] = box
            if point is not None:
                self.points[j] = point
            if ign.get(lb) is not None:
                self.valid[j] = ign[lb] == 0
            self.presence[j] = 1.0
            self.texts.append(text_of(lb, rng) if kind == "text+box" else "")
            self.names.append(f"<{kind}> {lb}")

    def add_text(self, labels: Sequence[str], view: dict[str, Any], rng: np.random.Generator,
                 text_of: TextOf) -> None:
        """A text row per label: its target and ignore mask where the crop annotates it (presence: any
        pixel), separation targets of its instances, else an empty target (a negative)."""
        tgt, ign, instances = view["targets"], view["ignore"], view.get("instances") or {}
        channels = None if self.sep_target is None else self.sep_target.shape[1]
        sep_cache: dict[str, np.ndarray] = {}
        for lb in labels:
            j = len(self.names)
            if lb in tgt:
                self.target[j] = tgt[lb] > 0
                if ign.get(lb) is not None:
                    self.valid[j] = ign[lb] == 0
                self.presence[j] = float(self.target[j].any())
                if self.sep_target is not None and lb in instances:
                    if lb not in sep_cache:
                        sep_cache[lb] = separation_targets(instances[lb], channels)
                    self.sep_target[j] = sep_cache[lb]
                    self.sep_valid[j] = True
            self.texts.append(text_of(lb, rng))
            self.names.append(lb)

    def fill(self) -> None:
        """Repeat a text row (the first with text, else row 0) until all P rows are filled (too few objects
        for the geometric rows asked for)."""
        while len(self.names) < len(self.presence):
            k = len(self.names)
            src = next(i for i, t in enumerate(self.texts) if t) if any(self.texts) else 0
            for arr in (self.target, self.valid, self.presence, self.boxes, self.points, self.sep_valid):
                arr[k] = arr[src]
            if self.sep_target is not None:
                self.sep_target[k] = self.sep_target[src]
            self.texts.append(self.texts[src])
            self.names.append(self.names[src])

    def item(self, view: dict[str, Any], *, geometry: bool) -> dict[str, Any]:
        """The training item (see :class:`~pathsegmentor.training.data.PromptedCrops`); ``geometry``: with
        ``boxes`` and ``points``."""
        item = {
            "pixels": torch.from_numpy(np.ascontiguousarray(view["image"].transpose(2, 0, 1))),
            "target": torch.from_numpy(self.target),
            "valid": torch.from_numpy(self.valid),
            "presence": torch.from_numpy(self.presence),
            "prompts": self.texts,
            "labels": self.names,
            "source": view["source"],
        }
        if geometry:
            item["boxes"] = torch.from_numpy(self.boxes)
            item["points"] = torch.from_numpy(self.points)
        if self.sep_target is not None:
            item["sep_target"] = torch.from_numpy(self.sep_target)
            item["sep_valid"] = torch.from_numpy(self.sep_valid)
        return item


def choose_text_labels(labels: Sequence[str], negatives: Sequence[str], *, room: int, n_extra: int,
                       negatives_per_image: int, rng: np.random.Generator) -> list[str]:
    """The labels of the text rows before the certain negatives: up to ``negatives_per_image`` of
    ``negatives`` (exhaustive-absent categories) and the rest drawn round-robin from a permutation of
    ``labels`` (of ``negatives`` when the crop has no labels); ``room - n_extra`` rows in all."""
    n_neg = min(negatives_per_image, len(negatives), room - n_extra) if negatives else 0
    pos_pool = labels or negatives
    chosen: list[str] = []
    n_pos = room - n_neg - n_extra
    if pos_pool and n_pos > 0:
        order = rng.permutation(len(pos_pool))
        chosen = [pos_pool[order[j % len(order)]] for j in range(n_pos)]
    if n_neg:
        chosen += [negatives[j] for j in rng.choice(len(negatives), n_neg, replace=False)]
    return chosen
