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


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch reports one CUDA device (cuda:0); every move of a module or tensor to it is recorded, then done on the
    CPU. Tests check *where the code sends* the model and its batches (the device logic) on a machine without a GPU;
    bench/gpu_check.sh runs the same paths on a real one. Yields the list of events
    ("module", class name, device) / ("tensor", shape, device), in call order."""
    import torch

    events: list[tuple] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def cuda_target(args, kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, (str, torch.device)):
            try:
                dev = torch.device(target)
            except RuntimeError:
                return None
            return dev if dev.type == "cuda" else None
        return None

    module_to, tensor_to = torch.nn.Module.to, torch.Tensor.to

    def fake_module_to(self, *args, **kwargs):
        dev = cuda_target(args, kwargs)
        if dev is None:
            return module_to(self, *args, **kwargs)
        events.append(("module", type(self).__name__, dev))
        return module_to(self, "cpu")

    def fake_tensor_to(self, *args, **kwargs):
        dev = cuda_target(args, kwargs)
        if dev is None:
            return tensor_to(self, *args, **kwargs)
        events.append(("tensor", tuple(self.shape), dev))
        rest = {k: v for k, v in kwargs.items() if k not in ("device", "non_blocking")}
        return tensor_to(self, "cpu", *args[1:], **rest)

    monkeypatch.setattr(torch.nn.Module, "to", fake_module_to)
    monkeypatch.setattr(torch.Tensor, "to", fake_tensor_to)
    yield events


def write_cache_pair(folder, *, n_train: int, n_eval: int, **kw) -> tuple[str, str]:
    """(train.h5, test.h5) fake caches in ``folder`` sharing their classes (seeds 0 and 1, one prototypes_seed)."""
    from iagcn.cache.fake import write_fake_cache

    return (write_fake_cache(folder / "train.h5", n=n_train, seed=0, split="train", **kw),
            write_fake_cache(folder / "test.h5", n=n_eval, seed=1, split="test", **kw))


@pytest.fixture(scope="module")
def tiny_caches(tmp_path_factory):
    """(train, eval) fake caches of 60 / 30 images, C = 4, N = 4, D = 8: a run of a few epochs takes seconds."""
    return write_cache_pair(tmp_path_factory.mktemp("tiny-caches"), n_train=60, n_eval=30, num_rois=4, dim=8,
                            num_classes=4, embedding_dim=5, prototypes_seed=0)
