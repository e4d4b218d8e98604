"""Shared fixtures and the skip rules of the gpu and tensorrt markers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from typing import Callable

import pytest


def _cuda_reason() -> str | None:
    from edge_ad import _kernels

    if not _kernels.has_cuda:
        return "edge_ad was built without CUDA kernels"
    if _kernels.cuda_device_count() == 0:
        return f"no usable CUDA GPU: {_kernels.cuda_init_error()}"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch has no CUDA device"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_reason = _cuda_reason() if any("gpu" in item.keywords for item in items) else None
    trt_reason = None if importlib.util.find_spec("tensorrt") else "TensorRT not installed"
    for item in items:
        if "tensorrt" in item.keywords and trt_reason:
            item.add_marker(pytest.mark.skip(reason=trt_reason))     # the first reason a reader needs
        elif "gpu" in item.keywords and gpu_reason:
            item.add_marker(pytest.mark.skip(reason=gpu_reason))


_BLOCK_TORCH = """
import sys
class _BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _BlockTorch())
"""


@pytest.fixture
def run_without_torch() -> Callable[[str], str]:
    """Run Python code in a fresh process where importing torch raises; returns its stdout."""

    def run(code: str) -> str:
        script = _BLOCK_TORCH + textwrap.dedent(code) + '\nassert "torch" not in sys.modules\n'
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    return run


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A SimpleNet bundle trained for one epoch on a tiny synthetic conveyor category (64 px):
    a real model for the stream tests, built once per session (a few seconds)."""
    from edge_ad.data.synthetic import Counts, make_category
    from edge_ad.training.run import TrainConfig, train
    from export.bundle import export_run

    root = tmp_path_factory.mktemp("tiny")
    data = make_category(root / "data", "conveyor", counts=Counts(train=8, test_good=2, test_per_defect=1), seed=3)
    train(TrainConfig(data=str(data), out=str(root / "run"), epochs=1, batch_size=4,
                      model_kwargs={"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32}))
    return export_run(root / "run", root / "bundle").path
