"""What a model can be asked for: its recorded trained concepts against the ontology."""
from __future__ import annotations

from .config import ModelConfig


def vocabulary_rows(config: ModelConfig) -> list[dict]:
    """One row per trained concept of ``config.vocabulary`` (see :meth:`PathSegmentor.vocabulary`)."""
    from ..ontology import Ontology

    onto = Ontology.load()
    vocab = config.vocabulary
    rows = []
    for name, c in onto.categories.items():
        if vocab and name not in vocab:
            continue
        v = vocab.get(name, {})
        rows.append({"concept": name, "region": c.region, "structure": c.structure, "object_type": c.object_type,
                     "parent": c.parent, "synonyms": list(c.synonyms), "sources": list(v.get("sources", [])),
                     "validation_dice": dict(v.get("validation_dice", {})), "recorded": bool(vocab)})
    return rows
