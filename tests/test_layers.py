"""The layers (docs/architecture.md): core < cache < extract / train < evaluate < CLI.

A module may import its own package and any layer below its own, never a layer above it nor a peer stage
(extract and train know nothing of each other). The CLI layer (each stage's ``cli.py``, ``iagcn/cli.py``,
``iagcn/entry.py``, ``iagcn/__main__.py``) may import anything. Every import counts, including the ones inside functions: read from
each module's AST, nothing is executed. tests/ and bench/ are tooling, outside the layers.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES = ("cache", "extract", "train", "evaluate")
RANK = {"core": 0, "cache": 1, "extract": 2, "train": 2, "evaluate": 3, "cli": 4}
CLI_MODULES = {"iagcn.cli", "iagcn.entry", "iagcn.__main__"} | {f"iagcn.{s}.cli" for s in STAGES}


def layer_of(module: str) -> str:
    """The layer of a dotted ``iagcn...`` module name (``iagcn.train.run`` -> train, ``iagcn.metrics`` -> core)."""
    if module in CLI_MODULES:
        return "cli"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in STAGES:
        return parts[1]
    return "core"


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO_ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["iagcn", *parts]) if parts[0] != "iagcn" else ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted iagcn module) for every import of the project's code in ``source`` (module ``module``)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package upwards
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            if base == "iagcn" or base in {f"iagcn.{s}" for s in STAGES}:  # from iagcn import metrics, train, ...
                found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if name == "iagcn" or name.startswith("iagcn.")]


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    mine = layer_of(module)
    if mine == "cli":
        return []
    out = []
    for line, name in imported_modules(source, module, is_package=is_package):
        if name in ("iagcn", f"iagcn.{mine}") or (name.count(".") == 1 and name.split(".")[1] in STAGES
                                                  and name.split(".")[1] == mine):
            continue
        theirs = layer_of(name)
        if theirs == mine:
            continue
        if RANK[theirs] >= RANK[mine]:
            out.append(f"{module}:{line}: imports {name} ({theirs}); {mine} may import only "
                       f"{', '.join(k for k, r in RANK.items() if r < RANK[mine]) or 'nothing of the project'}")
    return out


def project_modules() -> list[Path]:
    return sorted(p for folder in ("iagcn", *STAGES) for p in (REPO_ROOT / folder).rglob("*.py"))


def test_no_module_imports_a_layer_above_its_own():
    offenders = [v for p in project_modules()
                 for v in violations(p.read_text(), module_name(p), is_package=p.name == "__init__.py")]
    assert offenders == [], "layering violations (docs/architecture.md):\n" + "\n".join(offenders)


def test_the_layers_cover_every_module():
    names = {module_name(p) for p in project_modules()}
    assert {"iagcn.metrics", "iagcn.train.runfolder", "iagcn.cache.format", "iagcn.evaluate.ablation"} <= names
    assert layer_of("iagcn.metrics") == "core" and layer_of("iagcn.train.runfolder") == "train"
    assert layer_of("iagcn.train.cli") == "cli" and layer_of("iagcn.cli") == "cli"


@pytest.mark.parametrize("module, source, expected", [
    ("iagcn.train.probe", "from iagcn.evaluate.stats import x\nimport iagcn.evaluate.metrics\n"
                          "from iagcn import evaluate\nfrom iagcn.evaluate import report\n",
     ["iagcn.evaluate.stats", "iagcn.evaluate.metrics", "iagcn.evaluate", "iagcn.evaluate",
      "iagcn.evaluate.report"]),
    ("iagcn.train.probe", "def f():\n    from iagcn.extract.features import region_features\n",  # a peer stage
     ["iagcn.extract.features"]),
    ("iagcn.cache.probe", "from iagcn.train.data import CacheData\n", ["iagcn.train.data"]),
    ("iagcn.probe", "from iagcn.cache.format import FeatureCache\nfrom iagcn.cli import main\n",
     ["iagcn.cache.format", "iagcn.cli"]),
    ("iagcn.evaluate.probe", "from iagcn.train import cli\n", ["iagcn.train.cli"]),
    ("iagcn.evaluate.probe", "from .stats import x\nfrom iagcn.train import runfolder\nfrom iagcn.metrics import y\n"
                             "from iagcn.extract.config import ExtractConfig\nimport numpy\n", []),
    ("iagcn.train.cli", "from iagcn.evaluate.ablation import write_ablation\n", []),
])
def test_the_checker_sees_a_violation(module, source, expected):
    found = [v.split(": imports ")[1].split(" ")[0] for v in violations(source, module)]
    assert found == expected
