"""What a training crop is asked: certain negatives and geometric prompts.

Negatives are only ever *certain*:

* categories the source annotates exhaustively and that are absent from the crop (the corpus'
  ``negatives``, :mod:`pathsegmentor.training.data`);
* **phrases from outside pathology** (``configs/ontology/negative_phrases.yaml``, its ``train`` list; the
  ``heldout`` list is kept for evaluation only);
* **categories of another organ**: an organ-specific concept (``region`` not ``any``) on a crop whose
  source organ is known and different;
* **blank inputs**: glass-only, near-uniform and black crops, on which every prompt is absent.

Geometric prompts come from instance ground truth (nucleus instances, glands as components): a box around
one object (target: that object), a point inside one (target: that object), or text with a box around a
few objects (target: the text's category inside the box).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

GEOMETRIC_KINDS = ("box", "point", "text+box")


@lru_cache(maxsize=1)
def negative_phrases() -> dict[str, tuple[str, ...]]:
    """``{"train": (...), "heldout": (...)}`` phrases from outside pathology."""
    import yaml

    from ..resources import configs_dir

    path = configs_dir() / "ontology" / "negative_phrases.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    out = {k: tuple(str(p) for p in data.get(k) or ()) for k in ("train", "heldout")}
    overlap = set(out["train"]) & set(out["heldout"])
    if overlap:
        raise ValueError(f"{path}: phrases in both the train and heldout lists: {sorted(overlap)}")
    return out


def other_organ_concepts(ontology, region: str) -> list[str]:
    """Organ-specific concepts of organs other than ``region`` (empty when the crop's organ is unknown)."""
    if not region or region in ("any", "unknown"):
        return []
    return [n for n, c in ontology.categories.items() if c.region not in ("", "any", region)]


def blank_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A crop with no tissue: glass (near-white with noise), a near-uniform random colour, or black."""
    kind = int(rng.integers(0, 3))
    if kind == 0:
        base = rng.uniform(215, 250, 3)
    elif kind == 1:
        base = rng.uniform(0, 255, 3)
    else:
        base = rng.uniform(0, 20, 3)
    noise = rng.normal(0, rng.uniform(0.5, 6.0), (size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _bbox(obj: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(obj)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def geometric_prompt(kind: str, label_mask: np.ndarray, instances: np.ndarray, rng: np.random.Generator,
                     *, min_area: int = 12) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
    """One geometric prompt on a crop.

    Args:
        kind: ``"box"``, ``"point"`` or ``"text+box"``.
        label_mask: ``[H, W]`` the category's mask (text+box target).
        instances: ``int [H, W]`` the category's instance ids.
    Objects inside the crop are preferred; when every object is cut by the crop border (glands are often
    larger than a crop), a cut object's visible part is the target and its box is clipped to the crop, as
    a user's box at an image edge would be.

    Returns ``(target float32 [H, W], box float32 [4] XYXY or None, point float32 [2] XY or None)``, or None when
    the crop holds no object of at least ``min_area`` px.
    """
    ids, counts = np.unique(instances[instances > 0], return_counts=True)
    h, w = instances.shape
    border = np.unique(np.concatenate([instances[0], instances[-1], instances[:, 0], instances[:, -1]]))
    big = counts >= min_area
    ok = ids[big & ~np.isin(ids, border)]
    if ok.size == 0:
        ok = ids[big]
    if ok.size == 0:
        return None
    oid = int(ok[rng.integers(0, ok.size)])
    obj = instances == oid
    x0, y0, x1, y1 = _bbox(obj)
    if kind == "point":
        ys, xs = np.nonzero(obj)
        j = int(rng.integers(0, ys.size))
        return obj.astype(np.float32), None, np.array([xs[j] + 0.5, ys[j] + 0.5], np.float32)
    bw, bh = x1 - x0, y1 - y0
    if kind == "box":  # a user's box: a few pixels of slack around the object
        jit = rng.uniform(-0.1, 0.15, 4) * np.array([bw, bh, bw, bh])
        box = np.array([x0 - jit[0], y0 - jit[1], x1 + jit[2], y1 + jit[3]], np.float32)
        box = np.clip(box, 0, [w, h, w, h]).astype(np.float32)
        return obj.astype(np.float32), box, None
    if kind != "text+box":
        raise ValueError(f"Unknown geometric prompt kind '{kind}'. Available: {list(GEOMETRIC_KINDS)}")
    grow = rng.uniform(1.5, 4.0)  # a region around a few objects; target: the category inside it
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = bw * grow / 2, bh * grow / 2
    box = np.clip(np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h]), 0, [w, h, w, h]).astype(np.float32)
    target = np.zeros((h, w), np.float32)
    bx0, by0, bx1, by1 = (int(round(v)) for v in box)
    target[by0:by1, bx0:bx1] = label_mask[by0:by1, bx0:bx1] > 0
    return target, box, None


def choose_geometric(kinds: Sequence[str], labels_with_instances: Sequence[str], n: int,
                     rng: np.random.Generator) -> list[tuple[str, str]]:
    """``n`` (kind, label) pairs drawn uniformly (no geometric prompt without instance ground truth)."""
    if n <= 0 or not labels_with_instances or not kinds:
        return []
    return [(str(kinds[int(rng.integers(0, len(kinds)))]),
             str(labels_with_instances[int(rng.integers(0, len(labels_with_instances)))])) for _ in range(n)]
