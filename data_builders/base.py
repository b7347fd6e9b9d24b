"""The contract every PathSeg source adapter implements.

An adapter reads one public dataset in its own on-disk format and yields :class:`SourceSample`
objects: one image with one mask per *source class* present (instance ids where the source has
them). The builder (``data_builders.builder``) maps source classes to ontology categories, tiles,
splits and writes the corpus; adapters never write anything.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterator

import numpy as np


class SourceFormatError(ValueError):
    """A file does not have the layout the adapter expects. The message names the file and the fix.

    Raised per file: the builder records it in ``rejects.csv`` and carries on with the next file.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass
class SourceSample:
    """One image of a source with its per-class masks, in the source's own pixel grid.

    Attributes:
        sample_id: unique within the source, stable across builds (e.g. file stem).
        patient_id: the patient / slide the image comes from (split grouping key); use the
            sample_id when the source does not identify patients.
        image: ``uint8 [H, W, 3]`` RGB.
        masks: source class name -> ``int32 [H, W]`` instance map (0 background, 1..K instances)
            or a binary ``{0, 1}`` map when the source has no instance ids (see ``has_instances``).
            Only classes present in the image appear; the builder derives negatives from the
            ontology's exhaustive-annotation list.
        has_instances: source class name -> whether ``masks[name]`` carries instance ids.
        ignore: optional ``bool [H, W]``, True where the source marks pixels as ambiguous/unlabelled.
        mpp: microns per pixel of ``image``.
        organ: organ / anatomical region as the source names it (mapped through the ontology), or "".
        split: the source's official split ("train", "validation", "test") or None to let the
            builder make a grouped split.
        meta: free-form extra fields kept in the build report (never used for training).
        exhaustive: optional per-sample override of the source's exhaustive category list (ontology
            category names), e.g. when one image lacks an annotation the rest of the source has.
    """

    sample_id: str
    patient_id: str
    image: np.ndarray
    masks: dict[str, np.ndarray]
    has_instances: dict[str, bool]
    mpp: float
    organ: str = ""
    split: str | None = None
    ignore: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    exhaustive: list[str] | None = None


class SourceAdapter(ABC):
    """Base class of all source adapters; subclasses are registered with :func:`register_source`.

    Subclasses set ``name``, ``classes`` (every source class name the format can contain, the
    keys used in :attr:`SourceSample.masks`), ``default_mpp`` and implement :meth:`list_items`
    and :meth:`load_item`. ``list_items`` must be cheap (no pixel decoding): the builder uses it
    for progress bars, resume and the rejects list; ``load_item`` decodes one item and raises
    :class:`SourceFormatError` for a bad file.
    """

    name: ClassVar[str] = ""
    classes: ClassVar[tuple[str, ...]] = ()
    default_mpp: ClassVar[float] = 0.25
    licence: ClassVar[str] = ""
    citation: ClassVar[str] = ""

    def __init__(self, root: str | Path, **options):
        self.root = Path(root)
        self.options = options
        if not self.root.exists():
            raise FileNotFoundError(
                f"{self.name}: source folder '{self.root}' does not exist. Pass the folder of the "
                f"extracted download, e.g. --source {self.name}=/data/{self.name}."
            )

    @abstractmethod
    def list_items(self) -> list[str]:
        """Stable, sorted identifiers of the items (usually relative file paths) under ``root``."""

    @abstractmethod
    def load_item(self, item: str) -> Iterator[SourceSample]:
        """Decode one item into one or more samples (a ``.npy`` fold yields many)."""

    def __iter__(self) -> Iterator[SourceSample]:
        for item in self.list_items():
            yield from self.load_item(item)


_SOURCES: dict[str, type[SourceAdapter]] = {}


def register_source(cls: type[SourceAdapter]) -> type[SourceAdapter]:
    """Class decorator: register an adapter under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no `name`")
    if cls.name in _SOURCES and _SOURCES[cls.name] is not cls:
        raise ValueError(f"source '{cls.name}' is registered twice ({_SOURCES[cls.name]} and {cls})")
    _SOURCES[cls.name] = cls
    return cls


def list_sources() -> list[str]:
    """Names of all registered source adapters, sorted."""
    from . import sources  # noqa: F401  (imports every adapter module, which registers it)

    return sorted(_SOURCES)


def get_source(name: str) -> type[SourceAdapter]:
    """The adapter class registered as ``name``; raises ``KeyError`` naming the valid choices."""
    names = list_sources()
    if name not in _SOURCES:
        raise KeyError(f"Unknown source '{name}'. Available: {names}")
    return _SOURCES[name]


ItemLoader = Callable[[str], Iterator[SourceSample]]
