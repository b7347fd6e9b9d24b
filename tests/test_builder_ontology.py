"""The PathSeg ontology: required categories, hierarchy, mapping tables of every registered source."""
from __future__ import annotations

import pytest

from data_builders import list_sources, get_source
from pathsegmentor.ontology import Ontology, OntologyError

REQUIRED = ["nuclei", "gland", "tumor nuclei", "healthy epithelial nuclei", "epithelial nuclei", "inflammatory nuclei",
            "fibroblast nuclei", "muscle nuclei", "endothelial nuclei", "other nuclei", "spindle-shaped nuclei",
            "lymphocyte nuclei", "stroma", "tumor", "necrosis"]


ALL_SOURCES = ["monuseg", "pannuke", "consep", "cpm17", "tnbc", "cryonuseg", "nuinsseg", "monusac", "lizard", "conic",
               "glas", "crag", "bcss", "segpath", "wsss4luad", "digestpath", "paip2019", "folder"]


@pytest.fixture(scope="module")
def onto():
    return Ontology.load()


def test_required_categories_and_synonyms(onto):
    for name in REQUIRED:
        assert name in onto.categories, name
    for syn in ("cell nuclei", "nucleus", "nuclei of cells"):
        assert onto.resolve(syn) == "nuclei"
    for syn in ("glands", "glandular structures", "colon gland"):
        assert onto.resolve(syn) == "gland"
    for syn in ("neoplastic nuclei", "malignant epithelial nuclei", "cancer cell nuclei", "Tumor Nuclei"):
        assert onto.resolve(syn) == "tumor nuclei"
    with pytest.raises(KeyError, match="Unknown category 'tumour nucleii'"):
        onto.resolve("tumour nucleii")


def test_breadth_and_hierarchy(onto):
    assert len(onto) >= 150
    assert len([r for r in onto.regions if r != "any"]) >= 20
    for c in onto.categories.values():
        assert c.name == c.name.lower() and c.structure and c.object_type and c.region in onto.regions
    assert onto.ancestors("tumor nuclei") == ["epithelial nuclei", "nuclei"]
    # CoNSeP's documented 4-class merge is the hierarchy
    assert onto.parent("healthy epithelial nuclei") == onto.parent("tumor nuclei") == "epithelial nuclei"
    for c in ("fibroblast nuclei", "muscle nuclei", "endothelial nuclei"):
        assert onto.parent(c) == "spindle-shaped nuclei"
    assert onto.variant("tumor nuclei", "breast") == "breast tumor nuclei"
    assert onto.parent("benign gland") == onto.parent("malignant gland") == "gland"
    assert onto.region("Adrenal_gland") == "adrenal gland"
    assert onto.region("18", "monuseg") == "liver" and onto.region("A7", "monuseg") == "breast"


def test_my_sources_map_every_class(onto):
    adapters = {s: get_source(s).classes for s in ("monuseg", "glas", "consep", "folder")}
    onto.validate(adapters, orphans=False)
    m = onto.mapping("consep")
    assert [m[c] for c in get_source("consep").classes] == [
        "other nuclei", "inflammatory nuclei", "healthy epithelial nuclei", "tumor nuclei", "fibroblast nuclei",
        "muscle nuclei", "endothelial nuclei"]


def test_every_registered_source_maps_and_no_orphans(onto):
    """Every registered adapter's classes map to exactly one category; every category is used."""
    adapters = {s: get_source(s).classes for s in list_sources()}
    missing = sorted(set(ALL_SOURCES) - set(adapters))
    if missing:  # the mapping check still runs on what is registered
        onto.validate(adapters, orphans=False)
        pytest.skip(f"orphan check needs every source adapter of issue 3; not registered yet: {missing}")
    onto.validate(adapters, orphans=True)


def test_validation_reports_problems(tmp_path):
    (tmp_path / "sources").mkdir()
    (tmp_path / "categories.yaml").write_text(
        "regions: {any: []}\ncategories:\n- {name: nuclei}\n- {name: tumor nuclei, parent: nuclei}\n- {name: orphan}\n")
    (tmp_path / "sources" / "x.yaml").write_text("source: x\nclasses: {a: nuclei, b: tumour nuclei}\n")
    o = Ontology.load(tmp_path)
    with pytest.raises(OntologyError) as e:
        o.validate({"x": ("a", "b", "c")})
    msg = str(e.value)
    assert "'b' maps to unknown category 'tumour nuclei'" in msg and "class 'c' is not mapped" in msg
    assert "'orphan' is orphaned" in msg
    (tmp_path / "sources" / "x.yaml").write_text("source: x\nclasses: {a: nuclei, a: tumor nuclei}\n")
    with pytest.raises(OntologyError, match="duplicate key 'a'"):
        Ontology.load(tmp_path)


def test_negatives(onto):
    ex = onto.exhaustive("consep")
    present = {"inflammatory nuclei", "colon inflammatory nuclei", "nuclei"}
    neg = onto.negatives(present, ex, "colon")
    assert "tumor nuclei" in neg and "colon tumor nuclei" in neg and "epithelial nuclei" in neg
    assert "spindle-shaped nuclei" in neg
    assert "lymphocyte nuclei" not in neg  # inflammatory nuclei are present: their subtype is unknown
    assert "inflammatory nuclei" not in neg and "nuclei" not in neg
    assert not any(n.startswith("breast ") for n in neg)
    # graded gland source: the other grade is a negative; nothing about a present parent's other children
    neg = onto.negatives({"malignant gland", "colon malignant gland", "gland"}, onto.exhaustive("glas"), "colon")
    assert "benign gland" in neg and "gland" not in neg and "normal acinus or duct" not in neg
    # ungraded: only absent glands are negatives
    assert onto.negatives({"gland"}, ["gland"], "colon") == []
    assert "benign gland" in onto.negatives(set(), ["gland"], "colon")
