"""Image encodings kept per window, so a second prompt on the same pixels runs only the decoder (the design of SAM's
web demo: encode once, decode per click or phrase).

:class:`EmbeddingCache` is a byte-bounded, thread-safe LRU; :class:`~.predictor.Predictor` keys it by the network,
the state of its weights and a digest of the window's pixels, so an answer never comes from other pixels or from
weights that have changed since.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Hashable

import torch


def nbytes(value: Any) -> int:
    """Bytes held by the tensors of ``value`` (a tensor, a dataclass/object of tensors, or nested dicts/lists)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    if hasattr(value, "__dict__"):
        return sum(nbytes(v) for v in vars(value).values())
    return 0


class EmbeddingCache:
    """Least-recently-used values bounded in bytes (``max_bytes``; 0 keeps nothing); counts ``hits``, ``misses``."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes}: the cache size must be >= 0 bytes (0: no cache)")
        self.max_bytes, self.bytes = int(max_bytes), 0
        self.items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            hit = self.items.get(key)
            if hit is None:
                self.misses += 1
                return None
            self.items.move_to_end(key)
            self.hits += 1
            return hit[0]

    def put(self, key: Hashable, value: Any) -> None:
        if self.max_bytes == 0:
            return
        size = nbytes(value)
        with self._lock:
            if key in self.items:
                self.bytes -= self.items.pop(key)[1]
            self.items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes and len(self.items) > 1:
                _, (_, old) = self.items.popitem(last=False)
                self.bytes -= old

    def __getstate__(self) -> dict:
        """Copies and pickles keep the size, not the entries (they are a cache) nor the lock."""
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"])

    def clear(self) -> None:
        with self._lock:
            self.items.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self.items)
