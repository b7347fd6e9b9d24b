"""CellSAM's teacher embeddings on disk, so the large frozen teacher runs once per tile across steps
and runs: one safetensors file per tile under a folder named by the teacher's weights."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Sequence

from ..modeling.config import ConfigError


def teacher_fingerprint(teacher, input_size: int) -> str:
    """A hash of the teacher's weights and input size: names the cache folder, so embeddings of another
    teacher (other weights, other variant) are never mixed in."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"input={input_size}".encode())
    for name, t in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class TeacherCache:
    """Teacher embeddings on disk, one safetensors file per tile (``embedding [C, h, w]`` + the tile key
    in the metadata), under ``root/<teacher fingerprint>/``. Writes are atomic (tmp + rename).

    :meth:`embeddings` returns the batch's embeddings, running ``teacher_fn`` only on the tiles not yet
    cached; ``hits``/``misses`` count distinct tiles per batch, ``teacher_calls`` teacher forwards.
    """

    def __init__(self, root: str | Path | None, fingerprint: str, dtype: str = "float32") -> None:
        import torch

        if dtype not in ("float32", "float16"):
            raise ConfigError(f"cache.dtype '{dtype}' unknown. Available: ['float16', 'float32']")
        self.dir = Path(root) / fingerprint if root else None
        self.dtype = getattr(torch, dtype)
        self.hits = self.misses = self.teacher_calls = 0

    def path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(key.split("|")[0]).stem)[-40:].strip("-") or "tile"
        return self.dir / f"{stem}_{digest}.safetensors"

    def get(self, key: str):
        from safetensors.torch import load_file

        if self.dir is None:
            return None
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return load_file(str(p))["embedding"]
        except Exception:  # noqa: BLE001 - a corrupt entry (killed mid-write elsewhere) is recomputed
            return None

    def put(self, key: str, embedding) -> None:
        import os

        from safetensors.torch import save_file

        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self.path(key)
        tmp = p.with_name(f"{p.stem}.{os.getpid()}.tmp")
        save_file({"embedding": embedding.detach().to("cpu", self.dtype).contiguous()}, str(tmp),
                  metadata={"key": key})
        os.replace(tmp, p)

    def embeddings(self, keys: Sequence[str], pixels, teacher_fn):
        """``pixels [B, 3, S, S]`` normalised; returns float ``[B, C, h, w]`` on ``pixels.device``."""
        import torch

        found: dict[str, Any] = {}
        for k in keys:
            if k not in found:
                found[k] = self.get(k)
        missing = [k for k, e in found.items() if e is None]  # unique tiles: a repeat in the batch runs once
        self.hits += len(found) - len(missing)
        self.misses += len(missing)
        if missing:
            rows = [list(keys).index(k) for k in missing]
            with torch.no_grad():
                emb = teacher_fn(pixels[rows])
            self.teacher_calls += 1
            for j, k in enumerate(missing):
                found[k] = emb[j]
                self.put(k, emb[j])
        return torch.stack([found[k].to(pixels.device, torch.float32) for k in keys])
