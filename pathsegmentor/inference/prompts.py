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
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..ontology import Ontology
from ..resources import cache_dir
from .calibration import OUT_OF_DOMAIN, calibrate_threshold

VOCABULARY_MODES = ("model", "open")
MATCHES = ("exact", "synonym", "normalised", "nearest", "none", "open")
RELATIONS = ("same", "broader", "narrower", "nuclei-of", "refused", "open")

_UK_US = {"tumour": "tumor", "tumours": "tumors", "haematoxylin": "hematoxylin", "leucocyte": "leukocyte",
          "leucocytes": "leukocytes", "oesophagus": "esophagus", "oesophageal": "esophageal", "oedema": "edema",
          "haemorrhage": "hemorrhage", "fibre": "fiber", "fibres": "fibers", "centre": "center", "anaemia": "anemia",
          "haematopoietic": "hematopoietic", "foetal": "fetal", "colour": "color", "tumoural": "tumoral"}
_IRREGULAR = {"nuclei": "nucleus", "lumina": "lumen", "mitoses": "mitosis", "metastases": "metastasis",
              "stromata": "stroma", "necroses": "necrosis", "epithelia": "epithelium", "criteria": "criterion"}
_STOP = {"a", "an", "the", "all", "any", "some", "every", "each", "of", "please", "segment", "segmentation", "show",
         "find", "highlight", "detect", "outline", "mask", "masks", "me", "image", "picture", "this", "these",
         "those", "only", "and", "visible", "present"}
_KEEP_S = ("ss", "us", "is", "os")


def _singular(token: str) -> str:
    if token in _IRREGULAR:
        return _IRREGULAR[token]
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 3 and token.endswith("s") and not token.endswith(_KEEP_S):
        return token[:-1]
    return token


def normalise(text: str) -> str:
    """Lower case, punctuation and hyphens to spaces, UK -> US spelling, singular, stop words dropped."""
    words = re.sub(r"[^a-z0-9]+", " ", str(text).lower()).split()
    words = [_singular(_UK_US.get(w, w)) for w in words]
    return " ".join(w for w in words if w not in _STOP)


def _wording_variants(key: str) -> list[str]:
    """The "cells" / "nuclei" wording: a cell type named without "nuclei" means its nuclei."""
    words = key.split()
    out = [key]
    if words and words[-1] == "cell":
        out += [" ".join(words[:-1] + ["nucleus"]), " ".join(words[:-1] + ["cell", "nucleus"])]
    elif words and words[-1] != "nucleus":
        out.append(key + " nucleus")
    return out


@dataclass(frozen=True)
class PromptResolution:
    """How one prompt was understood and answered.

    Attributes:
        prompt: the phrase as given.
        concept: the ontology concept it names (None: none found).
        answered_as: the concept the model answers with (None: refused); with ``vocabulary="open"`` the
            raw prompt.
        match: how the phrase met ``concept``: ``exact``, ``synonym``, ``normalised``, ``nearest``,
            ``none`` or ``open``.
        relation: ``answered_as`` against ``concept``: ``same``, ``broader`` (an ancestor answers),
            ``narrower`` (a descendant answers), ``nuclei-of`` (a whole-cell concept answered by the
            nuclei of those cells), ``refused`` or ``open``.
        similarity: cosine similarity in the text tower's space for ``nearest`` (and the best one found
            when refused); 1.0 for name and synonym lookups.
        reason: one sentence for people (empty when answered as itself).
        suggestions: up to three answerable concepts nearest the phrase (refused prompts).
    """

    prompt: str
    concept: str | None
    answered_as: str | None
    match: str
    relation: str
    similarity: float
    reason: str = ""
    suggestions: tuple[str, ...] = ()

    @property
    def answered(self) -> bool:
        return self.answered_as is not None

    @property
    def segmented_as(self) -> str | None:
        """The concept whose handling the answer gets (working µm/px, instance decoding, size limits):
        ``answered_as``; with ``vocabulary="open"`` the concept the raw phrase names by name, synonym or
        normalised lookup (``concept``; None: it names none, and the model's defaults apply)."""
        return self.concept if self.match == "open" else self.answered_as

    @property
    def substituted(self) -> bool:
        """True when the model answers with a concept other than the one the phrase names."""
        return self.relation in ("broader", "narrower", "nuclei-of")

    @property
    def label(self) -> str:
        """Short text for legends: ``"tumour cells -> tumor nuclei"``, ``"zzz (refused)"``."""
        if not self.answered:
            return f"{self.prompt} (refused)"
        if self.answered_as != self.prompt:
            return f"{self.prompt} -> {self.answered_as}"
        return self.prompt

    def to_dict(self) -> dict:
        d = asdict(self)
        d["similarity"] = round(float(self.similarity), 4)
        d["suggestions"] = list(self.suggestions)
        return d


def check_vocabulary(vocabulary: str) -> None:
    """ValueError naming the choices when ``vocabulary`` is not one of :data:`VOCABULARY_MODES`."""
    if vocabulary not in VOCABULARY_MODES:
        raise ValueError(f"vocabulary={vocabulary!r} unknown. Available: {list(VOCABULARY_MODES)} ('model': prompts "
                         f"grounded in the ontology and the model's trained concepts; 'open': raw text, unchecked)")


def open_resolution(prompt: str, concept: str | None = None) -> PromptResolution:
    """``vocabulary="open"``: the raw text goes to the text tower, unchecked; ``concept``: the one the phrase
    names by lookup (its handling is used: :attr:`PromptResolution.segmented_as`)."""
    handled = f"; segmented as '{concept}' (its working resolution and instances)" if concept else ""
    return PromptResolution(prompt, concept, prompt, "open", "open", 1.0,
                            f"vocabulary='open': raw text sent to the text tower, not checked{handled}")


@lru_cache(maxsize=1)
def _lookup_only() -> "PromptResolver":
    """A resolver of the package ontology without a text tower (name / synonym / normalised lookup only)."""
    return PromptResolver(Ontology.load())


def geometric(label: str) -> PromptResolution:
    """Resolution of a prompt that is only points/boxes (no text to ground)."""
    return PromptResolution(label, None, label, "none", "same", 1.0, "")


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


def resolver_for(model) -> PromptResolver:
    """The model's resolver (built once per model and kept on it): the package ontology, the model's text
    tower and ``config.vocabulary``; the nearest-step threshold is ``config.inference.prompt_similarity``
    or, when 0, calibrated; the string index is kept under the user cache."""
    r = model.__dict__.get("_prompt_resolver")
    if r is None:
        thr = float(model.config.inference.prompt_similarity) or None
        r = PromptResolver(Ontology.load(), model.text_encoder.encode, dict(model.config.vocabulary), thr,
                           index_dir=cache_dir() / "prompt_index")
        model.__dict__["_prompt_resolver"] = r
    return r


def resolve_prompts(model, prompts: Sequence[str], vocabulary: str = "model") -> list[PromptResolution]:
    """Resolutions of ``prompts`` for ``model`` (``vocabulary="open"`` needs nothing of the model)."""
    check_vocabulary(vocabulary)
    if vocabulary == "open":
        return _lookup_only().resolve_all(prompts, "open")
    return resolver_for(model).resolve_all(prompts, vocabulary)
