"""The import graph runs one way: no cycle among gpuprobe's modules, lazy imports included.

import-linter (run by scripts/test.sh) keeps the layers and the cycles inside each folder;
this looks at the whole graph at once, across daemon/ and probes/.
"""

from __future__ import annotations

import sys

import pytest

from .conftest import ROOT

grimp = pytest.importorskip("grimp")


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    tree = tmp_path_factory.mktemp("tree")
    (tree / "gpuprobe").mkdir()
    (tree / "gpuprobe" / "__init__.py").write_text("")
    (tree / "gpuprobe" / "daemon").symlink_to(ROOT / "daemon")
    (tree / "gpuprobe" / "probes").symlink_to(ROOT / "probes")
    saved = dict(sys.modules)
    sys.path.insert(0, str(tree))
    try:
        for name in [m for m in sys.modules if m == "gpuprobe" or m.startswith("gpuprobe.")]:
            del sys.modules[name]  # let find_spec see the tree, not the installed package
        yield grimp.build_graph("gpuprobe", cache_dir=None)
    finally:
        sys.path.remove(str(tree))
        sys.modules.clear()
        sys.modules.update(saved)


def strongly_connected(graph) -> list[set[str]]:
    """Tarjan's components with more than one module: each is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def test_the_module_graph_has_no_cycle(graph):
    assert len(graph.modules) > 50  # the whole package was read
    assert strongly_connected(graph) == []


def test_the_cycle_finder_finds_a_cycle(graph):
    graph = graph.copy() if hasattr(graph, "copy") else graph
    graph.add_import(importer="gpuprobe.daemon.core.model",
                     imported="gpuprobe.daemon.service.app", line_number=1, line_contents="x")
    try:
        cycles = strongly_connected(graph)
        assert any("gpuprobe.daemon.core.model" in c for c in cycles)
    finally:
        graph.remove_import(importer="gpuprobe.daemon.core.model",
                            imported="gpuprobe.daemon.service.app")


def test_the_sources_use_only_the_core(graph):
    """No module under probes/ imports export, analysis or the service (import-linter checks
    the same in CI; here it fails in a plain pytest run too)."""
    above = ("gpuprobe.daemon.export", "gpuprobe.daemon.analysis", "gpuprobe.daemon.service")
    bad = [(m, i) for m in graph.find_descendants("gpuprobe.probes")
           for i in graph.find_modules_directly_imported_by(m) if i.startswith(above)]
    assert bad == []
