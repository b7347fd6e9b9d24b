"""PathSeg: public pathology datasets harmonised into one corpus of image-mask-label triples.

``build(sources, out, **options)`` writes a corpus, ``load_pathseg(out)`` reads it back. Heavy
dependencies (datasets, tifffile, scipy) are imported inside the functions that use them.
"""
from __future__ import annotations

from .base import SourceAdapter, SourceFormatError, SourceSample, get_source, list_sources, register_source
from pathsegmentor.ontology import Ontology, OntologyError

__all__ = [
    "SourceAdapter", "SourceFormatError", "SourceSample", "get_source", "list_sources", "register_source",
    "Ontology", "OntologyError", "build", "load_pathseg", "PathSegCorpus", "BuildError",
]


def __getattr__(name):  # lazy: keep `import data_builders` light
    if name == "build":
        from .builder import build

        return build
    if name == "BuildError":
        from .recipe import BuildError

        return BuildError
    if name in ("load_pathseg", "PathSegCorpus"):
        from . import corpus

        return getattr(corpus, name)
    raise AttributeError(f"module 'data_builders' has no attribute '{name}'")
