"""What the ontology's YAML files hold and how they are read: the error type, the data types
(:class:`Category`, :class:`SourceMapping`), name normalisation for lookups, YAML reading that rejects
duplicate keys, and the conversions between the files and the data types (:func:`read_tables`,
:func:`snapshot`). :mod:`pathsegmentor.ontology` builds the :class:`~pathsegmentor.ontology.Ontology` on top.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ANY_REGION = "any"


class OntologyError(ValueError):
    """The ontology or a mapping table is inconsistent; the message lists every problem."""


@dataclass(frozen=True)
class Category:
    """A concept: its canonical ``name``, ``synonyms``, prompt ``template``, ``region`` (organ, or ``"any"``),
    ``structure`` and ``object_type`` (the hierarchy's lower levels) and ``parent`` (its general category)."""

    name: str
    synonyms: tuple[str, ...] = ()
    template: str = "{name}"
    region: str = ANY_REGION
    structure: str = ""
    object_type: str = ""
    parent: str | None = None

    def prompt(self, region: str | None = None) -> str:
        """The prompt from the template (``{name}``, ``{region}``); pan-tissue categories drop the region."""
        region = region or self.region
        if region in ("", ANY_REGION) and "{region}" in self.template:
            return self.name
        return self.template.format(name=self.name, region=region)


@dataclass
class SourceMapping:
    """One ``sources/<source>.yaml`` table."""

    source: str
    classes: dict[str, str | None] = field(default_factory=dict)
    exhaustive: list[str] = field(default_factory=list)
    organ_map: dict[str, str] = field(default_factory=dict)
    region: str = ""
    mpp: float | None = None
    licence: str = ""
    identity: bool = False
    path: str = ""


def norm(s: str) -> str:
    """``s`` as lookups compare it: stripped, lower case, ``_`` as space, runs of spaces as one."""
    return " ".join(str(s).strip().lower().replace("_", " ").split())


def _unique_key_loader():
    """A yaml SafeLoader that rejects duplicate mapping keys (a class mapped twice is an error)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        keys = set()
        for k, _ in node.value:
            key = loader.construct_object(k, deep=deep)
            if key in keys:
                raise OntologyError(f"duplicate key '{key}' at line {k.start_mark.line + 1} of {node.start_mark.name}")
            keys.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return Loader


def read_yaml(path: Path):
    """The YAML file ``path``, duplicate mapping keys refused (:class:`OntologyError`)."""
    import yaml

    with open(path) as f:
        return yaml.load(f, Loader=_unique_key_loader())


def read_tables(p: Path) -> tuple[list[Category], dict[str, list[str]], dict[str, SourceMapping]]:
    """``(categories, regions, sources)`` of the ontology file ``p``: its categories and regions, and the source
    mappings inlined under ``sources:`` (a corpus snapshot) or else read from the ``sources/*.yaml`` next to it."""
    data = read_yaml(p) or {}
    cats = []
    for i, c in enumerate(data.get("categories") or []):
        if not isinstance(c, dict) or not c.get("name"):
            raise OntologyError(f"{p}: categories[{i}] has no name: {c!r}")
        cats.append(Category(
            name=str(c["name"]), synonyms=tuple(str(s) for s in (c.get("synonyms") or [])),
            template=str(c.get("template") or "{name}"), region=str(c.get("region") or ANY_REGION),
            structure=str(c.get("structure") or ""), object_type=str(c.get("object_type") or ""),
            parent=(str(c["parent"]) if c.get("parent") else None)))
    sources: dict[str, SourceMapping] = {}
    inline = data.get("sources") or {}
    for name, s in inline.items():
        sources[name] = mapping_from_dict(s, name, str(p))
    sdir = p.parent / "sources"
    if not inline and sdir.is_dir():
        for f in sorted(sdir.glob("*.yaml")):
            s = read_yaml(f) or {}
            m = mapping_from_dict(s, f.stem, str(f))
            sources[m.source] = m
    return cats, data.get("regions") or {ANY_REGION: []}, sources


def snapshot(categories: dict[str, Category], regions: dict[str, list[str]],
             sources: dict[str, SourceMapping]) -> dict:
    """A self-contained, YAML-ready snapshot of categories, regions and the given source mappings."""
    return {
        "version": 1,
        "regions": regions,
        "categories": [{"name": c.name, "synonyms": list(c.synonyms), "template": c.template,
                        "region": c.region, "structure": c.structure, "object_type": c.object_type,
                        "parent": c.parent} for c in categories.values()],
        "sources": {n: {"source": n, "classes": sources[n].classes,
                        "exhaustive": sources[n].exhaustive, "organ_map": sources[n].organ_map,
                        "region": sources[n].region, "mpp": sources[n].mpp,
                        "licence": sources[n].licence, "identity": sources[n].identity}
                    for n in sources},
    }


def mapping_from_dict(s: dict, default_name: str, path: str) -> SourceMapping:
    """A :class:`SourceMapping` from a ``sources/<source>.yaml`` table (``default_name``: its file's stem)."""
    classes = {str(k): (None if v is None else str(v)) for k, v in (s.get("classes") or {}).items()}
    return SourceMapping(
        source=str(s.get("source") or default_name), classes=classes,
        exhaustive=[str(e) for e in (s.get("exhaustive") or [])],
        organ_map={str(k): str(v) for k, v in (s.get("organ_map") or {}).items()},
        region=str(s.get("region") or ""), mpp=(float(s["mpp"]) if s.get("mpp") is not None else None),
        licence=str(s.get("licence") or ""), identity=bool(s.get("identity", False)), path=path)
