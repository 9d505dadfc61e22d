"""The installed namespace: every module imports stage packages as ``iagcn.<stage>``, never by a bare top-level name.

The repository keeps its stage folders at the top level (extract/, train/, evaluate/, cache/); setup.cfg installs them
as iagcn.extract, iagcn.train, ... A bare ``import train`` would work only from the repository root (and clash with
other packages of that name), so it is refused here by reading every module's imports (AST, no execution).
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES = ("extract", "train", "evaluate", "cache")
BARE = set(STAGES) | {"bench"}


def python_files() -> list[Path]:
    folders = [*STAGES, "iagcn", "bench", "tests"]
    return sorted(p for f in folders for p in (REPO_ROOT / f).rglob("*.py"))


def bare_imports(path: Path) -> list[str]:
    """Imports in ``path`` whose first component is a stage folder name (``bench`` allowed only in bench/ and tests/)."""
    allowed = {"bench"} if path.relative_to(REPO_ROOT).parts[0] in ("bench", "tests") else set()
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "importorskip", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
            names = [str(node.args[0].value)]
        found += [f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {n}" for n in names
                  if n.split(".")[0] in BARE - allowed]
    return found


def test_no_module_imports_a_bare_stage_name():
    offenders = [hit for p in python_files() for hit in bare_imports(p)]
    assert offenders == [], "import these as iagcn.<stage>:\n" + "\n".join(offenders)


def test_the_checker_sees_a_bare_import(tmp_path, monkeypatch):
    bad = REPO_ROOT / "tests" / "_tmp_bare_import_probe.py"
    bad.write_text("import train.config\nfrom evaluate import metrics\nimport iagcn.train\n")
    try:
        assert [h.split(": ")[1] for h in bare_imports(bad)] == ["train.config", "evaluate"]
    finally:
        bad.unlink()


@pytest.mark.parametrize("stage", STAGES)
def test_stage_installs_under_the_namespace(stage):
    module = importlib.import_module(f"iagcn.{stage}")
    assert Path(module.__file__).resolve().parent == REPO_ROOT / stage
