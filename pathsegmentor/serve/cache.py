"""Image embeddings kept per window, so a second prompt on the same view runs only the decoder (the
design of SAM's web demo: encode once, decode per click or phrase).

:class:`EmbeddingCache` is a byte-bounded LRU of image features keyed by ``(file, level, window, model,
pixels digest)``. :class:`CachedModel` wraps a model for :func:`pathsegmentor.inference.segment.segment_image`:
the model's own code runs, with ``encode_image`` answered from the cache when the same window pixels
(digest of the normalised input) were encoded before.
"""
from __future__ import annotations

import hashlib
import inspect
import threading
import types
from collections import OrderedDict
from typing import Any, Hashable

import numpy as np


def _nbytes(features: Any) -> int:
    tensors = [features.embedding, *getattr(features, "skips", {}).values()]
    return sum(t.numel() * t.element_size() for t in tensors)


class EmbeddingCache:
    """Least-recently-used image features, bounded in bytes; counts ``hits`` and ``misses``."""

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            v = self.items.get(key)
            if v is None:
                self.misses += 1
                return None
            self.items.move_to_end(key)
            self.hits += 1
            return v

    def put(self, key: Hashable, features: Any) -> None:
        with self._lock:
            if key in self.items:
                self.bytes -= _nbytes(self.items.pop(key))
            self.items[key] = features
            self.bytes += _nbytes(features)
            while self.bytes > self.max_bytes and len(self.items) > 1:
                _, old = self.items.popitem(last=False)
                self.bytes -= _nbytes(old)

    def __len__(self) -> int:
        return len(self.items)


class CachedModel:
    """``model`` with its image encodings cached under ``key`` (``(file, level, window)``).

    Every method of the model's class is run with this wrapper as ``self`` (attributes, buffers and
    submodules come from the model), so whichever of them calls ``self.encode_image`` gets the cached
    one below: the same pixels, padding and decoding as the model's own path. One instance per request:
    ``encoded`` / ``reused`` count this request's windows.
    """

    def __init__(self, model: Any, cache: EmbeddingCache, key: tuple) -> None:
        from ..inference.prompts import resolver_for

        self._model, self._cache = model, cache
        self._key = (*key, model.name, id(model))
        self.encoded = self.reused = 0
        # the model's prompt resolver (built once per model and kept on it), not one per request and wrapper
        self.__dict__["_prompt_resolver"] = resolver_for(model)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(type(self._model), name, None)
        if inspect.isfunction(attr):
            return types.MethodType(attr, self)
        return getattr(self._model, name)

    def encode_image(self, pixels):
        """The model's ``encode_image``, answered from the cache for pixels encoded before."""
        data = pixels.detach().contiguous().cpu().numpy()
        digest = hashlib.blake2b(data.data, digest_size=16).hexdigest()
        key = (*self._key, digest, tuple(pixels.shape))
        feats = self._cache.get(key)
        if feats is None:
            feats = self._model.encode_image(pixels)
            self._cache.put(key, feats)
            self.encoded += 1
        else:
            self.reused += 1
        return feats
