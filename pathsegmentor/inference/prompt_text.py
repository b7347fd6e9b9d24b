"""Normalisation of phrases for the ontology lookup: case, punctuation, UK -> US spelling, plurals, stop words, and the
"cells" / "nuclei" wording (:func:`normalise`, used by :mod:`.prompts`)."""
from __future__ import annotations

import re

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
