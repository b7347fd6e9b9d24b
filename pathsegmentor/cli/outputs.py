"""Input and output helpers shared by ``segment`` and ``demo``: ``--out`` checks, image reading,
file-name slugs for prompts, and the staging folder beside ``--out`` that receives each image's masks,
overlay and JSON summary and is moved in only once every image succeeded."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .errors import UsageError


def slugify(text: str) -> str:
    """File-name-safe form of a prompt: lower case, runs of other characters become ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "prompt"


def _unique_slugs(prompts: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        s = slugify(p)
        if s in seen:
            seen[s] += 1
            s = f"{s}-{seen[s]}"
        else:
            seen[s] = 1
        out.append(s)
    return out


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' exists and is not a directory; choose a directory path.")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out '{out}': '{parent}' is a file, so the directory cannot be created.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"--out '{out}': no write permission in '{parent}'.")
            break


def _read_images(paths: Sequence[str]) -> list[tuple[Path, Any]]:
    from ..inference.image_io import ImageReadError, read_image

    out = []
    for p in paths:
        try:
            out.append((Path(p), read_image(p)))
        except ImageReadError as e:
            raise UsageError(str(e)) from None
    return out


class _Staging:
    """Write outputs into a hidden folder beside ``out``; :meth:`commit` moves them in, else nothing stays."""

    def __init__(self, out: Path) -> None:
        self.out = out
        anchor = next(p for p in [out, *out.parents] if p.exists())
        self.dir = Path(tempfile.mkdtemp(prefix=".pathsegmentor-", dir=anchor))
        self.files: list[str] = []

    def path(self, name: str) -> Path:
        self.files.append(name)
        return self.dir / name

    def commit(self) -> list[Path]:
        self.out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in self.files:
            os.replace(self.dir / name, self.out / name)
            written.append(self.out / name)
        shutil.rmtree(self.dir, ignore_errors=True)
        return written

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _write_result(stage: _Staging, stem: str, rgb, result, extra: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from ..inference.overlay import render_result

    files = {"masks": {}}
    for prompt, slug, mask in zip(result.prompts, _unique_slugs(result.prompts), result.masks):
        name = f"{stem}_{slug}.png"
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(stage.path(name))
        files["masks"][prompt] = name
    counts = result.instance_counts
    for i, (prompt, slug) in enumerate(zip(result.prompts, _unique_slugs(result.prompts))):
        if counts[i] is not None:  # instance label map: 16-bit PNG, 0 background, 1..K objects
            name = f"{stem}_{slug}_instances.png"
            Image.fromarray(np.minimum(result.instances[i], 65535).astype(np.uint16)).save(stage.path(name))
            files.setdefault("instances", {})[prompt] = name
    files["overlay"] = f"{stem}_overlay.png"
    render_result(rgb, result).save(stage.path(files["overlay"]))
    summary = {**extra, **result.summary(), "files": files}
    name = f"{stem}_summary.json"
    stage.path(name).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _print_result(label: str, result) -> None:
    """One line per prompt (how it was answered, presence, area); a warning on stderr for every prompt
    answered by a relative or refused."""
    for lab, s, a, n in zip(result.labels, result.presence, result.area_fraction, result.instance_counts):
        objects = "" if n is None else f", {n} objects"
        print(f"  {label}  {lab!r}: presence {float(s):.3f}, area {100.0 * float(a):.2f}%{objects}")
    for w in result.warnings:
        print(f"warning: {label}: {w}", file=sys.stderr)

