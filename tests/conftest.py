"""Shared test helpers: run the real CLI in a subprocess against *this* checkout's code."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the installed iagcn.* namespace (editable install), never bare stage folders
    env.setdefault("OMP_NUM_THREADS", "2")
    env.update(extra)
    return env


def run_cli(args: list[str], *, timeout: float = 300, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m iagcn ARGS`` in a subprocess (this checkout, installed editable by `make setup`)."""
    proc = subprocess.run([sys.executable, "-m", "iagcn", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=kwargs.pop("env", None) or cli_env(), cwd=kwargs.pop("cwd", REPO_ROOT),
                          **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"iagcn {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli
