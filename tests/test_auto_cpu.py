"""`auto` on a CPU box with OpenVINO keeps the fastest of OpenVINO and ONNX Runtime (and of the bundle's
FP32 and INT8 graphs: tests/test_int8.py) for the bundle (edge_ad/runtime/auto_cpu.py): real backends on
a real bundle; the slow one is made slow by a delay."""

from __future__ import annotations

import importlib.util
import time

import pytest

import edge_ad
from edge_ad.bundle import read_bundle
from edge_ad.runtime.auto_cpu import fastest_backend
from edge_ad.runtime.backend import LoadOptions
from edge_ad.runtime.registry import get_backend, openvino_for_cpu

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")


class Delayed:
    """A real backend, 30 ms slower per call, that records whether it was closed."""

    def __init__(self, backend) -> None:
        self.backend, self.name, self.closed = backend, backend.name, False

    def infer(self, batch):
        time.sleep(0.03)
        return self.backend.infer(batch)

    def close(self) -> None:
        self.closed = True
        self.backend.close()


def _opened(tiny_bundle, name: str):
    return get_backend(name).open(read_bundle(tiny_bundle), LoadOptions(device="cpu"))


@pytest.mark.parametrize("slow", ["openvino-cpu", "onnxruntime-cpu"])
def test_the_faster_is_kept_and_the_slower_closed(tiny_bundle, slow) -> None:
    made = {}

    def build(name):
        def make():
            backend = _opened(tiny_bundle, name)
            made[name] = Delayed(backend) if name == slow else backend
            return made[name]
        return make

    kept = fastest_backend([build("openvino-cpu"), build("onnxruntime-cpu")], 64, 64)
    fast = "onnxruntime" if slow == "openvino-cpu" else "openvino"
    assert kept.name == fast and made[slow].closed


def test_the_probe_can_be_switched_off(tiny_bundle, monkeypatch) -> None:
    monkeypatch.setenv("EDGE_AD_AUTO_PROBE", "0")
    called = []
    kept = fastest_backend([lambda: _opened(tiny_bundle, "openvino-cpu"), lambda: called.append(1)], 64, 64)
    assert kept.name == "openvino" and not called


def test_no_candidate_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        fastest_backend([], 64, 64)


@pytest.mark.skipif(not openvino_for_cpu(), reason="auto runs OpenVINO only on x86-64 CPUs")
def test_auto_loads_one_of_the_two_and_it_runs(tiny_bundle) -> None:
    with edge_ad.load(tiny_bundle) as detector:
        assert detector.backend.name in ("openvino", "onnxruntime")
        assert detector.scores([__import__("numpy").zeros((90, 120, 3), "uint8")]).shape == (1,)
