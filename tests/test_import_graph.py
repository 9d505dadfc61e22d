"""The project's modules import each other one way only: no import cycle, counting imports inside functions too.

A cycle (e.g. ``extract/proposers.py`` <-> ``extract/detectron2_rpn.py``, issue 18) works only as long as one side
imports lazily and in the right order; a refactor that hoists the import breaks it with a half-initialised module.
"""
from __future__ import annotations

import ast
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every package that setup.cfg installs (its package_dir mapping)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    mapping = dict(line.split("=", 1) for line in cfg["options"]["package_dir"].strip().splitlines())
    out = {}
    for pkg, folder in ((k.strip(), v.strip()) for k, v in mapping.items()):
        for f in (ROOT / folder).glob("*.py"):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that ``name`` imports anywhere in its file (absolute and relative imports)."""
    deps = set()
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        deps |= {m for m in found if m in known and m != name}
    return deps


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    mods = _modules()
    assert "iagcn.extract.proposers" in mods and "iagcn.extract.detectron2_rpn" in mods, sorted(mods)
    graph = {name: _imports(name, path, set(mods)) for name, path in mods.items()}
    assert _cycles(graph) == []
    assert "iagcn.extract.proposal_common" in graph["iagcn.extract.detectron2_rpn"]


def test_the_cycle_finder_finds_a_lazy_cycle():
    """The checker itself: a cycle through an import inside a function is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
