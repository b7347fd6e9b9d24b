"""How one prompt was understood and answered: :class:`PromptResolution` (made by :mod:`.prompts`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

VOCABULARY_MODES = ("model", "open")
MATCHES = ("exact", "synonym", "normalised", "nearest", "none", "open")
RELATIONS = ("same", "broader", "narrower", "nuclei-of", "refused", "open")


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


def geometric(label: str) -> PromptResolution:
    """Resolution of a prompt that is only points/boxes (no text to ground)."""
    return PromptResolution(label, None, label, "none", "same", 1.0, "")
