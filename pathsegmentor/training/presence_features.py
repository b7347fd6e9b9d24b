"""Step 1 of the presence refit (:mod:`.presence_refit`): the presence head's inputs, collected on a
trained model's own decoder, with their truths, and their ``.npz`` cache.

For each image, the prompts of :func:`pathsegmentor.evaluation.presence.asked_prompts` (optionally with
ontology synonyms) go through ``model.segment(..., vocabulary="open")``; a forward hook on the presence head
records each prompt's input (:class:`PresenceFeatures`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..inference.mpp_estimate import MppEstimateError
from ..inference.predictor import as_predictor


@dataclass
class PresenceFeatures:
    """``x float32 [N, D]`` presence-head inputs, ``y bool [N]`` truths, and per row its source, kind, prompt,
    group (case id), view (``"corpus"``: the corpus' pixel size; ``"none"``: unknown; ``"auto"``: estimated by
    ``segment(mpp="auto")``) and the current head's presence."""

    x: np.ndarray
    y: np.ndarray
    source: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    prompt: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    view: list[str] = field(default_factory=list)
    presence: list[float] = field(default_factory=list)


def capture_presence_inputs(model, image: np.ndarray, prompts: Sequence[str], *, mpp) -> tuple[np.ndarray, np.ndarray]:
    """``(features float32 [n, D], presence float32 [n])`` for ``prompts`` on ``image``: the presence head's
    input that produced each prompt's reported presence (rows NaN where no decoder call matches it, e.g. a
    blank input answered without the decoder)."""
    rows: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = model.mask_decoder.presence_head.register_forward_hook(
        lambda _m, inp, out: rows.append((inp[0].detach().float(), torch.sigmoid(out.detach().float().reshape(-1)))))
    try:
        res = as_predictor(model).segment(image, list(prompts), mpp=mpp, vocabulary="open", instances="none")
    finally:
        hook.remove()
    n = len(prompts)
    dim = model.mask_decoder.presence_head.layers[0].in_features
    feats = np.full((n, dim), np.nan, np.float32)
    if rows:
        x = torch.cat([r[0] for r in rows]).numpy()
        p = torch.cat([r[1] for r in rows]).numpy()
        for k in range(n):
            d = np.abs(p - res.presence[k])
            j = int(np.argmin(d))
            if d[j] <= 1e-5:
                feats[k] = x[j]
    return feats, np.asarray(res.presence, np.float32)


def with_synonyms(asked: list[tuple[str, str, bool]], ontology, rng: np.random.Generator,
                  n: int) -> list[tuple[str, str, bool]]:
    """``asked`` plus, for each annotated or certainly absent category, up to ``n`` of its ontology synonyms
    (drawn with ``rng``) with the same kind and truth, so the refit head also sees the words users type."""
    out = list(asked)
    for prompt, kind, truth in asked:
        cat = ontology.categories.get(prompt) if kind in ("positive", "exhaustive") else None
        syns = list(cat.synonyms) if cat is not None else []
        for j in rng.choice(len(syns), min(n, len(syns)), replace=False) if syns and n else []:
            out.append((str(syns[j]), kind, truth))
    return out


def collect_features(model, corpus, *, split: str = "train", phrases: Sequence[str], views_none: Sequence[str] = (),
                     n_phrases: int = 4, n_organ: int = 3, n_synonyms: int = 0, only_synonyms: bool = False,
                     per_source: int = 0, seed: int = 0, progress: bool = True,
                     sources: Sequence[str] = (), views_auto: Sequence[str] = (),
                     corpus_view: bool = True) -> PresenceFeatures:
    """Presence-head inputs for every image of ``split`` (``sources``: only those sources; ``per_source``: at most
    N per source, evenly spaced) under the prompts of :func:`~pathsegmentor.evaluation.presence.asked_prompts` (plus
    ``n_synonyms`` synonyms per category, :func:`with_synonyms`; ``only_synonyms``: the synonyms alone, a cheap
    pass to add to an earlier collection). Each image is read at the corpus' pixel size (view ``"corpus"``; not
    with ``corpus_view=False``), and the images of ``views_none`` / ``views_auto`` sources also with the pixel size
    unknown (``"none"``) / estimated (``"auto"``; an image without an estimate, where ``segment()`` asks for the
    pixel size, has no ``"auto"`` rows)."""
    from tqdm.auto import tqdm

    from ..evaluation.presence import asked_prompts

    rng = np.random.default_rng(seed)
    table = corpus.images[split]
    by: dict[str, list[int]] = {}
    for i in range(len(table)):
        if not sources or table["source"][i] in sources:
            by.setdefault(table["source"][i], []).append(i)
    idx = sorted(j for v in by.values() for j in
                 (v if not per_source or len(v) <= per_source else
                  [v[int(k)] for k in np.linspace(0, len(v) - 1, per_source)]))
    xs: list[np.ndarray] = []
    out = PresenceFeatures(np.zeros((0, 0), np.float32), np.zeros(0, bool))
    ys: list[bool] = []
    for i in tqdm(idx, desc=f"presence features {split}", disable=not progress):
        s = corpus.sample(split, i)
        asked = asked_prompts(s, corpus.ontology, rng, phrases=phrases, n_phrases=n_phrases, n_organ=n_organ)
        if n_synonyms:
            asked = with_synonyms(asked, corpus.ontology, rng, n_synonyms)[len(asked) if only_synonyms else 0:]
        if not asked:
            continue
        views = ([("corpus", s.get("mpp"))] if corpus_view else []) + \
            ([("none", None)] if s["source"] in views_none else []) + \
            ([("auto", "auto")] if s["source"] in views_auto else [])
        for view, mpp in views:
            try:
                feats, pres = capture_presence_inputs(model, s["image"], [a[0] for a in asked], mpp=mpp)
            except MppEstimateError:  # only mpp="auto" raises it: no estimate, segment() would ask for the pixel size
                continue
            for k, (prompt, kind, truth) in enumerate(asked):
                if np.isnan(feats[k]).any():
                    continue
                xs.append(feats[k])
                ys.append(truth)
                out.source.append(str(s["source"]))
                out.kind.append(kind)
                out.prompt.append(prompt)
                out.group.append(str(s.get("patient_id") or s.get("sample_id") or s.get("image_id")))
                out.view.append(view)
                out.presence.append(float(pres[k]))
    out.x = np.stack(xs).astype(np.float32) if xs else np.zeros((0, 0), np.float32)
    out.y = np.asarray(ys, bool)
    return out


_META = ("source", "kind", "prompt", "group", "view", "presence")


def save_features(path: Path, feats: PresenceFeatures) -> None:
    """Write ``feats`` to the ``.npz`` ``path`` (its folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=feats.x, y=feats.y, **{k: np.asarray(getattr(feats, k)) for k in _META})


def load_features(path: Path) -> PresenceFeatures:
    """The features :func:`save_features` wrote to ``path``."""
    z = np.load(path, allow_pickle=False)
    return PresenceFeatures(z["x"], z["y"], *[z[k].tolist() for k in _META])


def concat_features(a: PresenceFeatures, b: PresenceFeatures) -> PresenceFeatures:
    """The rows of ``a`` then those of ``b`` (the other itself when one is empty)."""
    if not len(b.y):
        return a
    if not len(a.y):
        return b
    return PresenceFeatures(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]),
                            *[getattr(a, k) + getattr(b, k) for k in _META])


def select_features(feats: PresenceFeatures, rows: np.ndarray) -> PresenceFeatures:
    """The rows of ``feats`` where ``rows`` (``bool [N]``) is True, in order."""
    rows = np.asarray(rows, bool)
    return PresenceFeatures(feats.x[rows], feats.y[rows],
                            *[np.asarray(getattr(feats, k))[rows].tolist() for k in _META])
