"""What a build is asked to do: the build option ``DEFAULTS``, one :class:`SourceSpec` per source, dataset
recipe YAMLs (:func:`load_recipe`) and :class:`BuildError`, raised when a build cannot proceed."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = dict(tile=1024, overlap=0, mpp=None, val_fraction=0.2, test_fraction=0.0, seed=0,
                                emit_ancestors=True, region_variants=True, drop_empty=True, min_tissue=0.05,
                                limit=None)


class BuildError(RuntimeError):
    """The build cannot proceed (bad output folder, a source that yields nothing, bad options)."""


@dataclass
class SourceSpec:
    """One source of a build: ``name`` in the corpus, the ``adapter`` that reads it, its ``root`` and options."""

    name: str
    adapter: str
    root: str
    options: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, value: Any, base: Path | None = None) -> "SourceSpec":
        if isinstance(value, (str, os.PathLike)):
            value = {"root": str(value)}
        if not isinstance(value, dict) or "root" not in value:
            raise BuildError(f"source '{name}': expected a path or a mapping with `root`, got {value!r}")
        value = dict(value)
        root = Path(os.path.expanduser(str(value.pop("root"))))
        if base is not None and not root.is_absolute():
            root = base / root
        adapter = str(value.pop("adapter", name))
        return cls(name=name, adapter=adapter, root=str(root.resolve()), options=value)


def load_recipe(path: str | Path) -> tuple[dict, dict, Path]:
    """A dataset recipe YAML -> (sources, options, base_dir). Relative roots resolve against the recipe's folder."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise BuildError(f"recipe '{path}' not found")
    data = yaml.safe_load(path.read_text()) or {}
    sources = data.get("sources") or {}
    if not isinstance(sources, dict) or not sources:
        raise BuildError(f"recipe '{path}' has no `sources:` mapping")
    options = dict(data.get("options") or {})
    return sources, options, path.resolve().parent
