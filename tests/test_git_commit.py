"""git_commit() records the repository of the source tree, not whatever repository the venv or cwd sits in."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from iagcn.fsutil import git_commit

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "HOME": str(cwd), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def outer_repo(tmp_path):
    """A git repository with one commit that holds a venv-like folder with an installed copy of the package."""
    repo = tmp_path / "outer"
    site = repo / ".venv" / "lib" / "site-packages"
    (site / "iagcn").mkdir(parents=True)
    (site / "iagcn" / "fsutil.py").write_text("# installed copy\n")
    (repo / "README").write_text("another project\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "README")
    _git(repo, "commit", "-q", "-m", "outer")
    return repo, site


def test_an_installed_copy_inside_another_repository_records_unknown(outer_repo):
    repo, site = outer_repo
    assert _git(site, "rev-parse", "HEAD")  # plain git would report the outer repository from there
    assert git_commit(site) == "unknown"


def test_a_checkout_records_its_own_commit(outer_repo):
    repo, _ = outer_repo
    head = _git(repo, "rev-parse", "HEAD")
    assert git_commit(repo) == head  # clean tracked files: no +dirty
    (repo / "README").write_text("changed\n")
    assert git_commit(repo) == head + "+dirty"


def test_outside_any_repository(tmp_path):
    assert git_commit(tmp_path) == "unknown"


def test_this_checkout():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    assert git_commit().split("+")[0] == head
