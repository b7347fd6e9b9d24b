"""The dependency rules of ARCHITECTURE.md, checked on the source: every import (module level and
inside functions; ``if TYPE_CHECKING:`` blocks excepted, they never run) is parsed with ``ast``."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pathsegmentor", "data_builders")

# (importing package prefix, forbidden imported prefix)
FORBIDDEN = [
    ("pathsegmentor.modeling", "pathsegmentor.inference"),  # the network never calls the predictor above it
    ("pathsegmentor.modeling", "pathsegmentor.segmentor"),
    ("pathsegmentor.inference", "pathsegmentor.segmentor"),  # PathSegmentor = network + predictor, above both
    ("pathsegmentor.modeling", "pathsegmentor.training"),
    ("pathsegmentor.modeling", "pathsegmentor.evaluation"),
    ("pathsegmentor.modeling", "pathsegmentor.slide"),
    ("pathsegmentor.modeling", "pathsegmentor.cli"),
    ("pathsegmentor.modeling", "pathsegmentor.cellsam"),  # CellSAM registers itself (modeling.plugins)
    ("pathsegmentor.modeling", "data_builders"),
    ("pathsegmentor.inference", "pathsegmentor.training"),
    ("pathsegmentor.inference", "pathsegmentor.evaluation"),
    ("pathsegmentor.inference", "pathsegmentor.slide"),
    ("pathsegmentor.inference", "pathsegmentor.cli"),
    ("pathsegmentor.inference", "pathsegmentor.modeling"),  # the model is passed in
    ("pathsegmentor.cellsam", "pathsegmentor.training"),
    ("pathsegmentor.cellsam", "pathsegmentor.evaluation"),
    ("pathsegmentor.cellsam", "pathsegmentor.slide"),
    ("pathsegmentor.cellsam", "pathsegmentor.cli"),
    ("pathsegmentor.slide", "pathsegmentor.training"),
    ("pathsegmentor.evaluation", "pathsegmentor.slide"),
    ("pathsegmentor.ontology", "pathsegmentor.modeling"),
    ("data_builders", "pathsegmentor.modeling"),
    ("data_builders", "pathsegmentor.inference"),
    ("data_builders", "pathsegmentor.training"),
    ("data_builders", "pathsegmentor.cellsam"),
] + [(layer, "pathsegmentor.serve")  # the web viewer sits on top: only the CLI imports it (lazily)
     for layer in ("pathsegmentor.resources", "pathsegmentor._compat", "pathsegmentor.ontology",
                   "pathsegmentor.modeling", "pathsegmentor.cellsam", "pathsegmentor.inference",
                   "pathsegmentor.slide", "pathsegmentor.training", "pathsegmentor.evaluation", "data_builders")]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(source: str, module: str, is_package: bool) -> set[tuple[str, str]]:
    """What ``module`` imports, as ``(module, name)`` pairs: ``import a.b`` gives ``("a.b", "")``,
    ``from a import b`` gives ``("a", "b")`` (a dependency on ``a.b`` if that is a module, else on ``a``)."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: set[tuple[str, str]] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update((a.name, "") for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.update((target, a.name) for a in child.names)
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path = REPO, packages: tuple[str, ...] = PACKAGES,
                 extra: dict[str, str] | None = None) -> dict[str, set[str]]:
    """Module -> the project modules it imports. ``extra`` adds (or replaces) modules by source text."""
    sources: dict[str, tuple[str, bool]] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            sources[module_name(path, root)] = (path.read_text(), path.name == "__init__.py")
    for name, text in (extra or {}).items():
        sources[name] = (text, False)
    graph: dict[str, set[str]] = {}
    for name, (text, is_pkg) in sources.items():
        deps = set()
        for target, attr in imports_of(text, name, is_pkg):
            dep = f"{target}.{attr}" if f"{target}.{attr}" in sources else target
            if dep in sources and dep != name:
                deps.add(dep)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = dfs(dep)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            if cycle:
                return cycle
    return None


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            for src, dst in FORBIDDEN:
                if _within(mod, src) and _within(dep, dst):
                    out.append(f"{mod} imports {dep} ({src} must not import {dst})")
    return out


def test_no_forbidden_import():
    assert violations(import_graph()) == []


def test_no_import_cycle():
    # a package's __init__ is a module like any other: a cycle through one is a cycle. A parent package
    # is not counted as a dependency of its submodules (Python imports it first, whatever it holds).
    assert find_cycle(import_graph()) is None


def test_the_rule_test_fails_on_a_forbidden_import():
    """The checker itself: a lazy import of the trainer from inside modeling is caught, as is a cycle."""
    bad = (REPO / "pathsegmentor/modeling/prompt_adapter.py").read_text() + (
        "\n\ndef _sneaky():\n    from ..training.trainer import fit\n    return fit\n")
    graph = import_graph(extra={"pathsegmentor.modeling.prompt_adapter": bad})
    assert violations(graph) == ["pathsegmentor.modeling.prompt_adapter imports pathsegmentor.training.trainer "
                                 "(pathsegmentor.modeling must not import pathsegmentor.training)"]
    looped = (REPO / "pathsegmentor/modeling/config.py").read_text() + (
        "\n\ndef _back():\n    from .registry import list_models\n    return list_models\n")
    cycle = find_cycle(import_graph(extra={"pathsegmentor.modeling.config": looped}))
    assert cycle is not None and "pathsegmentor.modeling.config" in cycle and "pathsegmentor.modeling.registry" in cycle


def test_a_lazy_modeling_to_inference_import_is_caught():
    """Issue 30's rule: the network (modeling) never imports the predictor layer, not even inside a function."""
    bad = (REPO / "pathsegmentor/modeling/model.py").read_text() + (
        "\n\ndef _segment(self, image):\n    from ..inference.segment import segment_image\n"
        "    return segment_image(self, image)\n")
    found = violations(import_graph(extra={"pathsegmentor.modeling.model": bad}))
    assert found == ["pathsegmentor.modeling.model imports pathsegmentor.inference.segment "
                     "(pathsegmentor.modeling must not import pathsegmentor.inference)"]


def test_type_checking_imports_are_not_dependencies():
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..modeling.model import PathSegmentor\n"
    assert imports_of(src, "pathsegmentor.inference.x", False) == {("typing", "TYPE_CHECKING")}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_library_file_over_15kb(package):
    big = [f"{p.relative_to(REPO)} ({p.stat().st_size} B)" for p in (REPO / package).rglob("*.py")
           if p.stat().st_size > 15_000]
    assert big == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_library_function_over_80_lines(package):
    long = []
    for p in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                n = node.end_lineno - node.lineno + 1
                long.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_tests_and_bench_files_under_20kb():
    big = [f"{p.relative_to(REPO)} ({p.stat().st_size} B)" for d in ("tests", "bench") for p in (REPO / d).glob("*.py")
           if p.stat().st_size > 20_000]
    assert big == []


def test_at_most_eight_top_level_modules():
    top = sorted(p.name for p in (REPO / "pathsegmentor").iterdir() if p.suffix == ".py")
    assert len(top) <= 8, top
