"""The PathSeg category ontology and the per-source mapping tables.

``configs/ontology/categories.yaml`` holds the categories (a three-level hierarchy: region/organ ->
structure -> object type, plus a ``parent`` link from specific to general categories) and the
canonical regions; ``configs/ontology/sources/<source>.yaml`` maps each source's classes to
categories::

    source: consep
    mpp: 0.25
    licence: ...
    region: colon                   # default region of the source's images (optional)
    classes: {fibroblast: fibroblast nuclei, ...}   # source class -> category (null: pixels ignored)
    exhaustive: [fibroblast nuclei, ...]            # absent in an image => true negative
    organ_map: {Breast: breast, ...}                # source organ name -> region
    identity: false                 # true: source classes are category names (the ``folder`` adapter)

Lookups are case-insensitive and accept synonyms. The error and data types, name normalisation and the
YAML reading live in :mod:`pathsegmentor.ontology_files` (importable from here too).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .ontology_files import ANY_REGION, Category, OntologyError, SourceMapping, norm, read_tables, snapshot
from .resources import configs_dir

__all__ = ["ANY_REGION", "Category", "DEFAULT_DIR", "Ontology", "OntologyError", "SourceMapping"]

DEFAULT_DIR = configs_dir() / "ontology"


class Ontology:
    """Categories, regions and source mappings. Build with :meth:`load`."""

    def __init__(self, categories: Iterable[Category], regions: dict[str, list[str]],
                 sources: dict[str, SourceMapping] | None = None, path: str = ""):
        self.categories: dict[str, Category] = {}
        self.regions: dict[str, list[str]] = {r: list(s or []) for r, s in regions.items()}
        self.sources: dict[str, SourceMapping] = dict(sources or {})
        self.path = path
        problems: list[str] = []
        for c in categories:
            if c.name in self.categories:
                problems.append(f"category '{c.name}' is defined twice")
            self.categories[c.name] = c
        self._lookup: dict[str, str] = {}
        for c in self.categories.values():
            for s in (c.name, *c.synonyms):
                k = norm(s)
                if k in self._lookup and self._lookup[k] != c.name:
                    problems.append(f"'{s}' names both '{self._lookup[k]}' and '{c.name}'")
                self._lookup[k] = c.name
        self._region_lookup: dict[str, str] = {}
        for r, syn in self.regions.items():
            for s in (r, *syn):
                self._region_lookup[norm(s)] = r
        self._children: dict[str, list[str]] = {n: [] for n in self.categories}
        self._variants: dict[tuple[str, str], str] = {}
        for c in self.categories.values():
            if c.parent is not None:
                if c.parent not in self.categories:
                    problems.append(f"category '{c.name}': parent '{c.parent}' is not a category")
                    continue
                self._children[c.parent].append(c.name)
                if c.region != ANY_REGION:
                    self._variants[(c.parent, c.region)] = c.name
            if c.region not in self.regions:
                problems.append(f"category '{c.name}': region '{c.region}' is not in `regions`")
        for c in self.categories.values():  # cycles
            seen, p = {c.name}, c.parent
            while p is not None and p in self.categories:
                if p in seen:
                    problems.append(f"category '{c.name}': parent chain has a cycle through '{p}'")
                    break
                seen.add(p)
                p = self.categories[p].parent
        if problems:
            raise OntologyError(f"{path or 'ontology'}:\n  " + "\n  ".join(problems))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path | None = None) -> "Ontology":
        """Load ``categories.yaml`` (a file, or a directory holding it) and the ``sources/*.yaml`` next to it.

        A corpus snapshot (``OUT/ontology.yaml``, with the mappings inlined under ``sources:``) loads too.
        """
        p = Path(path) if path is not None else DEFAULT_DIR
        if p.is_dir():
            p = p / "categories.yaml"
        if not p.is_file():
            raise FileNotFoundError(f"ontology file not found: '{p}'")
        cats, regions, sources = read_tables(p)
        return cls(cats, regions, sources, path=str(p))

    def to_dict(self, sources: Iterable[str] | None = None) -> dict:
        """A self-contained snapshot (categories, regions and the given sources' mappings)."""
        names = self.sources if sources is None else [s for s in sources if s in self.sources]
        return snapshot(self.categories, self.regions, {n: self.sources[n] for n in names})

    def save(self, path: str | Path, sources: Iterable[str] | None = None) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(sources), sort_keys=False, width=120, allow_unicode=True))

    # ------------------------------------------------------------------ lookups
    def __contains__(self, name: str) -> bool:
        return norm(name) in self._lookup

    def __len__(self) -> int:
        return len(self.categories)

    def resolve(self, name: str) -> str:
        """Canonical name of a category given its name or a synonym (case-insensitive)."""
        k = norm(name)
        if k not in self._lookup:
            import difflib

            close = difflib.get_close_matches(k, list(self._lookup), n=5)
            raise KeyError(f"Unknown category '{name}'. Close matches: {close or 'none'} "
                           f"({len(self.categories)} categories in {self.path or 'the ontology'})")
        return self._lookup[k]

    def get(self, name: str) -> Category:
        return self.categories[self.resolve(name)]

    def parent(self, name: str) -> str | None:
        return self.get(name).parent

    def ancestors(self, name: str) -> list[str]:
        """Parents of ``name``, nearest first."""
        out, p = [], self.get(name).parent
        while p is not None:
            out.append(p)
            p = self.categories[p].parent
        return out

    def children(self, name: str, *, region: str | None = None) -> list[str]:
        """Direct children; with ``region``, organ-specific children of other regions are left out."""
        kids = self._children[self.resolve(name)]
        if region is None:
            return list(kids)
        return [k for k in kids if self.categories[k].region in (ANY_REGION, region)]

    def descendants(self, name: str, *, region: str | None = None) -> list[str]:
        out, stack = [], list(self.children(name, region=region))
        while stack:
            c = stack.pop(0)
            out.append(c)
            stack.extend(self.children(c, region=region))
        return out

    def variant(self, name: str, region: str) -> str | None:
        """The organ-specific child of ``name`` for ``region`` (e.g. tumor nuclei, breast -> breast tumor nuclei)."""
        return self._variants.get((self.resolve(name), region))

    def specialize(self, name: str, region: str) -> str:
        """``variant(name, region)`` when it exists, else ``name``."""
        return self.variant(name, region) or self.resolve(name)

    def region(self, organ: str, source: str | None = None) -> str:
        """Canonical region of an organ name (through the source's ``organ_map``, then region synonyms).

        Empty/unknown organs give the source's default region, else ``"any"``.
        """
        m = self.sources.get(source) if source else None
        if organ:
            if m is not None:
                for k, v in m.organ_map.items():
                    if norm(k) == norm(organ):
                        return self._region_lookup.get(norm(v), v)
            r = self._region_lookup.get(norm(organ))
            if r is not None:
                return r
        if m is not None and m.region:
            return self._region_lookup.get(norm(m.region), m.region)
        return ANY_REGION

    def mapping(self, source: str) -> dict[str, str | None]:
        """Source class -> canonical category (None: pixels ignored) for ``source``."""
        return dict(self.source(source).classes)

    def exhaustive(self, source: str) -> list[str]:
        return list(self.source(source).exhaustive)

    def source(self, source: str) -> SourceMapping:
        if source not in self.sources:
            raise KeyError(f"No mapping table for source '{source}'. Add configs/ontology/sources/{source}.yaml "
                           f"(have: {sorted(self.sources)})")
        return self.sources[source]

    def negatives(self, present: Iterable[str], exhaustive: Iterable[str], region: str) -> list[str]:
        """Categories that are true negatives of an image of ``region`` annotated with ``present``.

        An exhaustively annotated category (or its organ variant for ``region``) that is absent is a
        negative, and so are all its descendants (of ``region``); an absent ancestor is a negative when
        every one of its children is. ``present`` should already hold ancestors and variants.
        """
        present = set(present)
        neg: set[str] = set()
        for e in exhaustive:
            e = self.resolve(e)
            for c in (e, self.variant(e, region)):
                if c is not None and c not in present:
                    neg.add(c)
                    neg.update(d for d in self.descendants(c, region=region) if d not in present)
        changed = True
        while changed:
            changed = False
            for c in {a for n in neg for a in self.ancestors(n)}:
                if c in neg or c in present:
                    continue
                kids = [k for k in self.children(c, region=region) if self.categories[k].region == ANY_REGION]
                if kids and all(k in neg for k in kids):
                    neg.add(c)
                    v = self.variant(c, region)
                    if v is not None and v not in present:
                        neg.add(v)
                    changed = True
        return sorted(neg)

    # ------------------------------------------------------------------ validation
    def validate(self, adapters: dict[str, Iterable[str]] | None = None, *, orphans: bool = True) -> None:
        """Raise :class:`OntologyError` listing every problem.

        Checks each mapping table: classes map to existing categories (by canonical name), exhaustive
        categories exist, organ_map targets are regions. ``adapters`` (source -> its class names)
        additionally checks that every class an adapter can yield is mapped, and only those. With
        ``orphans``, every category must be used: mapped by some source, an ancestor of a mapped one,
        or the organ variant of a mapped one for a region the source can produce.
        """
        problems: list[str] = []
        for name, m in self.sources.items():
            for cls, cat in m.classes.items():
                if cat is not None and cat not in self.categories:
                    hint = f" (did you mean '{self._lookup[norm(cat)]}'?)" if norm(cat) in self._lookup else ""
                    problems.append(f"{name}: class '{cls}' maps to unknown category '{cat}'{hint}")
            for e in m.exhaustive:
                if e not in self.categories:
                    problems.append(f"{name}: exhaustive category '{e}' is not a category")
            for organ, r in m.organ_map.items():
                if norm(r) not in self._region_lookup:
                    problems.append(f"{name}: organ '{organ}' maps to unknown region '{r}'")
            if m.region and norm(m.region) not in self._region_lookup:
                problems.append(f"{name}: default region '{m.region}' is not a region")
        for name, classes in (adapters or {}).items():
            if name not in self.sources:
                problems.append(f"{name}: registered adapter has no mapping table sources/{name}.yaml")
                continue
            m = self.sources[name]
            if m.identity:
                continue
            classes = list(classes)
            for c in classes:
                if c not in m.classes:
                    problems.append(f"{name}: source class '{c}' is not mapped (add it to sources/{name}.yaml)")
            for c in m.classes:
                if c not in classes:
                    problems.append(f"{name}: mapping lists '{c}', which the adapter never yields "
                                    f"(adapter classes: {classes})")
        if orphans:
            used = self.used_categories()
            for c in self.categories:
                if c not in used:
                    problems.append(f"category '{c}' is orphaned: no source maps to it or to a descendant")
        if problems:
            raise OntologyError(f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))

    def used_categories(self) -> set[str]:
        """Categories reachable from the mapping tables (mapped, ancestors, organ variants)."""
        used: set[str] = set()
        for m in self.sources.values():
            regions = {self._region_lookup.get(norm(r), r) for r in m.organ_map.values()}
            if m.region:
                regions.add(self._region_lookup.get(norm(m.region), m.region))
            if m.identity:
                regions |= set(self.regions)
            mapped = {c for c in m.classes.values() if c in self.categories}
            for c in mapped:
                chain = [c, *self.ancestors(c)]
                used.update(chain)
                for r in regions:
                    for a in chain:
                        v = self._variants.get((a, r))
                        if v is not None:
                            used.add(v)
        return used
