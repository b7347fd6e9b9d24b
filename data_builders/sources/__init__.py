"""Source adapters: one module per public dataset, each registering itself with ``register_source``.

Importing this package imports every module in it (so ``list_sources()`` sees them all); a module that
fails to import raises at once with its name rather than silently dropping a source.
"""
from __future__ import annotations

import importlib
import pkgutil


def _import_all() -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


ADAPTER_MODULES = _import_all()
