"""Prompt resolution: every phrase is grounded in the category ontology before the model sees it.

A phrase resolves to a concept (:class:`~pathsegmentor.ontology.Category`) in this order:

1. **exact / synonym**: the canonical name or a listed synonym, case-insensitive;
2. **normalised**: the same after normalisation on both sides (case, punctuation and hyphens, UK to
   US spelling, plural to singular, stop words such as "all" / "the" / "segment", and the
   "cells" / "nuclei" wording: "tumour cells" -> "tumor nuclei", "lymphocytes" -> "lymphocyte nuclei");
3. **nearest**: the nearest name or synonym in the text tower's embedding space, if its cosine
   similarity reaches a threshold calibrated on the ontology itself (:func:`~pathsegmentor.inference.calibration.calibrate_threshold`);
4. otherwise no concept.

Then the model's vocabulary (the concepts it was trained on, ``config.vocabulary``) decides:
a trained concept is answered as itself; a known but untrained concept is answered by its nearest
trained relative in the hierarchy — an ancestor (``broader``) first, else a descendant
(``narrower``) — and said so; a whole-cell concept ("lymphocytes") with no trained relative is
answered by its cells' nuclei concept (or that concept's trained relative: ``nuclei-of``); anything else is refused (empty mask, presence 0) with the reason and
the three nearest answerable concepts. ``vocabulary="open"`` skips all of this and sends the raw text
to the text tower (research use); only the name/synonym lookup (step 1-2, no embeddings) still tells which
concept's handling the answer gets (working µm/px, instance decoding, plausibility: ``segmented_as``).

This module imports nothing from :mod:`pathsegmentor.modeling`: the text tower's ``encode`` is passed in.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..ontology import Ontology
from .calibration import OUT_OF_DOMAIN, calibrate_threshold
from .prompt_resolution import (MATCHES, RELATIONS, VOCABULARY_MODES, PromptResolution,  # noqa: F401 (re-exported)
                                check_vocabulary, geometric, open_resolution)
from .prompt_text import _wording_variants, normalise  # noqa: F401 (re-exported)


@lru_cache(maxsize=1)
def lookup_only() -> "PromptResolver":
    """A resolver of the package ontology without a text tower (name / synonym / normalised lookup only)."""
    return PromptResolver(Ontology.load())


@dataclass
class PromptResolver:
    """Resolves phrases against ``ontology`` for a model whose ``vocabulary`` lists its trained concepts.

    Args:
        ontology: the category ontology.
        encode: text tower, ``list[str] -> float [N, D]`` (torch or numpy); only used for the nearest
            step (embeddings of the ontology's names and synonyms are computed once, on first need).
        vocabulary: trained concept -> facts (sources, validation Dice); empty: every concept counts as
            trained (models that record no vocabulary, e.g. random test models).
        threshold: similarity threshold of the nearest step; None: :func:`calibrate_threshold`.
        index_dir: folder where the embeddings of the ontology's strings are kept between runs (one
            ``.npz`` per text tower and ontology, named by a hash of both); None: not kept.
    """

    ontology: Ontology
    encode: Callable[[list[str]], object] | None = None
    vocabulary: Mapping[str, Mapping] = field(default_factory=dict)
    threshold: float | None = None
    index_dir: Path | None = None

    def __post_init__(self) -> None:
        self._keys: dict[str, tuple[str, str]] = {}  # normalised key -> (concept, "exact"/"synonym")
        self._sorted_keys: dict[str, str] = {}
        for c in self.ontology.categories.values():
            for i, s in enumerate((c.name, *c.synonyms)):
                k = normalise(s)
                self._keys.setdefault(k, (c.name, "exact" if i == 0 else "synonym"))
                self._sorted_keys.setdefault(" ".join(sorted(k.split())), c.name)
        unknown = sorted(set(self.vocabulary) - set(self.ontology.categories))
        if unknown:
            raise ValueError(f"vocabulary lists concept(s) {unknown} that are not in the ontology "
                             f"({self.ontology.path}); fix the model config's `vocabulary`.")
        self._strings: list[str] | None = None
        self._owners: list[str] = []
        self._emb: np.ndarray | None = None

    # ------------------------------------------------------------------ vocabulary
    @property
    def trained(self) -> list[str]:
        """Concepts the model answers as themselves, in ontology order."""
        names = list(self.ontology.categories)
        return [n for n in names if n in self.vocabulary] if self.vocabulary else names

    def is_trained(self, concept: str) -> bool:
        return not self.vocabulary or concept in self.vocabulary

    # ------------------------------------------------------------------ embeddings
    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.encode is None:
            raise ValueError("this resolver has no text tower (encode=None): the nearest-concept step needs one")
        e = self.encode(list(texts))
        e = e.detach().float().cpu().numpy() if hasattr(e, "detach") else np.asarray(e, np.float32)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    def _index(self) -> tuple[list[str], list[str], np.ndarray]:
        if self._emb is None:
            strings, owners = [], []
            for c in self.ontology.categories.values():
                for s in (c.name, *c.synonyms):
                    strings.append(s)
                    owners.append(c.name)
            path = None
            if self.index_dir is not None:  # named by the strings and by what the tower makes of a probe
                h = hashlib.sha1("\n".join(strings + ["--"] + list(OUT_OF_DOMAIN)).encode())
                h.update(np.round(self._embed(["nuclei", "gland"]), 5).tobytes())
                path = Path(self.index_dir) / f"prompt-index-{h.hexdigest()[:16]}.npz"
            if path is not None and path.is_file():
                with np.load(path) as z:
                    emb, neg = z["strings"], z["negatives"]
            else:
                emb, neg = self._embed(strings), self._embed(list(OUT_OF_DOMAIN))
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
                    np.savez(tmp, strings=emb, negatives=neg)
                    os.replace(tmp, path)
            self._strings, self._owners, self._emb = strings, owners, emb
            if self.threshold is None:
                self.threshold = calibrate_threshold(emb, owners, neg)
        return self._strings, self._owners, self._emb

    def _ranked(self, text: str, allowed: Iterable[str] | None = None) -> list[tuple[str, float]]:
        """Concepts by best similarity of any of their strings to ``text`` (highest first)."""
        _, owners, emb = self._index()
        sims = emb @ self._embed([text])[0]
        allowed = set(allowed) if allowed is not None else None
        best: dict[str, float] = {}
        for o, s in zip(owners, sims):
            if (allowed is None or o in allowed) and s > best.get(o, -2.0):
                best[o] = float(s)
        return sorted(best.items(), key=lambda kv: -kv[1])

    # ------------------------------------------------------------------ resolution
    def lookup(self, prompt: str) -> tuple[str | None, str]:
        """Name / synonym / normalised lookup without embeddings: ``(concept or None, match)``."""
        k = " ".join(str(prompt).lower().replace("_", " ").split())
        if k in self.ontology:
            concept = self.ontology.resolve(k)
            return concept, "exact" if k == concept else "synonym"
        n = normalise(prompt)
        for v in _wording_variants(n):
            if v in self._keys:
                return self._keys[v][0], "normalised"
            s = " ".join(sorted(v.split()))
            if s in self._sorted_keys:
                return self._sorted_keys[s], "normalised"
        return None, "none"

    def resolve(self, prompt: str, vocabulary: str = "model") -> PromptResolution:
        """Resolve one phrase; see the module docstring for the order and the policy."""
        check_vocabulary(vocabulary)
        if vocabulary == "open":
            return open_resolution(prompt, self.lookup(prompt)[0])
        concept, match = self.lookup(prompt)
        similarity = 1.0
        if concept is None and self.encode is not None:
            ranked = self._ranked(prompt)
            if ranked and ranked[0][1] >= float(self.threshold):
                concept, similarity = ranked[0]
                match = "nearest"
            elif ranked:
                similarity = ranked[0][1]
        if concept is not None and self.is_trained(concept):
            reason = "" if match in ("exact", "synonym") else \
                f"'{prompt}' read as '{concept}' ({match}{f', similarity {similarity:.2f}' if match == 'nearest' else ''})"
            return PromptResolution(prompt, concept, concept, match, "same", similarity, reason)
        if concept is not None:
            hit, rel = self._trained_relative(concept)
            if hit is not None:
                return PromptResolution(
                    prompt, concept, hit, match, rel, similarity,
                    f"'{concept}' is not in this model's training; answered by its trained "
                    f"{'parent' if rel == 'broader' else 'sub'}-concept '{hit}'")
            nuc = self._nuclei_of(concept)
            if nuc is not None:
                hit = nuc if self.is_trained(nuc) else self._trained_relative(nuc)[0]
                if hit is not None:
                    return PromptResolution(
                        prompt, concept, hit, match, "nuclei-of", similarity,
                        f"'{concept}' (whole cells) is not in this model's training; answered by the nuclei of "
                        f"these cells, '{hit}'" + ("" if hit == nuc else f" (trained relative of '{nuc}')"))
        suggestions = self.suggest(prompt)
        if concept is not None:
            reason = (f"'{concept}' is a known concept but this model was not trained on it or on any concept "
                      f"containing or contained by it")
        else:
            reason = (f"'{prompt}' names no concept of the ontology (best similarity {similarity:.2f} < threshold "
                      f"{float(self.threshold or 0):.2f})" if self.encode is not None else
                      f"'{prompt}' names no concept of the ontology")
        return PromptResolution(prompt, concept, None, match, "refused", similarity,
                                reason + (f"; nearest answerable: {', '.join(suggestions)}" if suggestions else ""),
                                tuple(suggestions))

    def _trained_relative(self, concept: str) -> tuple[str | None, str]:
        """Nearest trained ancestor (``broader``), else nearest trained descendant (``narrower``)."""
        for rel, relatives in (("broader", self.ontology.ancestors(concept)),
                               ("narrower", self.ontology.descendants(concept))):
            hit = next((r for r in relatives if self.is_trained(r)), None)
            if hit is not None:
                return hit, rel
        return None, "refused"

    def _nuclei_of(self, concept: str) -> str | None:
        """The nucleus concept of a whole-cell concept ("lymphocytes" -> "lymphocyte nuclei"), if any: the
        "cells" / "nuclei" wording rule of :meth:`lookup` applied to the concept's names."""
        c = self.ontology.categories[concept]
        if c.object_type != "cell":
            return None
        for name in (c.name, *c.synonyms):
            for v in _wording_variants(normalise(name))[1:]:
                hit = self._keys.get(v)
                if hit is not None and self.ontology.categories[hit[0]].object_type == "nucleus":
                    return hit[0]
        return None

    def suggest(self, prompt: str, k: int = 3) -> list[str]:
        """The ``k`` answerable concepts nearest ``prompt`` (text tower), or by string similarity without one."""
        trained = self.trained
        if self.encode is not None:
            return [c for c, _ in self._ranked(prompt, allowed=trained)[:k]]
        import difflib

        return difflib.get_close_matches(normalise(prompt), trained, n=k, cutoff=0.0)

    def resolve_all(self, prompts: Sequence[str], vocabulary: str = "model") -> list[PromptResolution]:
        return [self.resolve(p, vocabulary) for p in prompts]
