"""The viewer's image-encoding cache: one :class:`~pathsegmentor.inference.embedding_cache.EmbeddingCache` for the
server's life, shared by every view request through the model's predictor
(:meth:`~pathsegmentor.inference.predictor.Predictor.with_cache`), so a second prompt on the same view runs only the
decoder (the design of SAM's web demo: encode once, decode per click or phrase)."""
from __future__ import annotations

from ..inference.embedding_cache import EmbeddingCache

__all__ = ["EmbeddingCache"]
