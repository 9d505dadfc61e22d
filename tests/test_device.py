"""The one device resolver (issue 10): its decisions, checked on CPU with torch.cuda simulated by monkeypatching."""
from __future__ import annotations

import pytest
import torch

from iagcn.device import resolve_device
from iagcn.errors import UserError


def _gpus(monkeypatch, count: int, current: int = 0) -> None:
    """Make torch.cuda report ``count`` visible devices (0: none) without touching a real GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


def test_cpu_and_auto_without_cuda(monkeypatch):
    _gpus(monkeypatch, 0)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" AUTO ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_one_line_naming_the_option(monkeypatch, name):
    _gpus(monkeypatch, 0)
    with pytest.raises(UserError) as e:
        resolve_device(name, option="--device")
    msg = str(e.value)
    assert msg.startswith(f"--device {name}:") and "not available" in msg and "--device cpu" in msg
    assert "\n" not in msg


def test_cuda_indices_with_simulated_gpus(monkeypatch):
    _gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UserError, match=r"--device cuda:2: there are 2 visible CUDA device\(s\) \(cuda:0 \.\. cuda:1\)"):
        resolve_device("cuda:2")
    _gpus(monkeypatch, 2, current=1)                  # torch.cuda.set_device(1) / CUDA_VISIBLE_DEVICES order
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "auto:1", "cuda1", "mps", "", "cuda:0:1"])
def test_malformed_values_are_refused(monkeypatch, name):
    _gpus(monkeypatch, 2)
    with pytest.raises(UserError) as e:
        resolve_device(name, option="--device")
    assert "unknown device" in str(e.value) and "auto | cpu | cuda[:k]" in str(e.value)


def test_every_command_refuses_an_unknown_device_through_the_cli(tmp_path):
    """One vocabulary everywhere: the same one-line refusal from each command that runs a model."""
    from tests.conftest import run_cli

    proc = run_cli(["train", "--train-cache", tmp_path / "a.h5", "--eval-cache", tmp_path / "b.h5", "--out",
                    tmp_path / "r", "--device", "gpu", "--quiet"])
    assert proc.returncode == 2 and "--device gpu: unknown device" in proc.stderr, proc.stderr
