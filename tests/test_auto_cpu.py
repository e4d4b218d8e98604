"""`auto` on a CPU box with OpenVINO keeps the fastest of OpenVINO and ONNX Runtime (and of the bundle's
FP32 and INT8 graphs: tests/test_int8.py) for the bundle (edge_ad/runtime/auto_cpu.py): real backends on
a real bundle; the slow one is made slow by a delay."""

from __future__ import annotations

import importlib.util
import time

import pytest

import edge_ad
from edge_ad.bundle import read_bundle
from edge_ad.runtime.auto_cpu import Candidate, fastest_backend
from edge_ad.runtime.backend import LoadOptions
from edge_ad.runtime.registry import get_backend, openvino_for_cpu

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")


class Delayed:
    """A real backend, `delay` s (30 ms) slower per call, that records whether it was closed."""

    def __init__(self, backend, delay: float = 0.03) -> None:
        self.backend, self.name, self.closed, self.delay = backend, backend.name, False, delay

    def infer(self, batch):
        time.sleep(self.delay)
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

    kept = fastest_backend([Candidate("ov", build("openvino-cpu")), Candidate("ort", build("onnxruntime-cpu"))], 64, 64)
    fast = "onnxruntime" if slow == "openvino-cpu" else "openvino"
    assert kept.name == fast and made[slow].closed


def test_the_probe_can_be_switched_off(tiny_bundle, monkeypatch) -> None:
    monkeypatch.setenv("EDGE_AD_AUTO_PROBE", "0")
    called = []
    kept = fastest_backend([Candidate("ov", lambda: _opened(tiny_bundle, "openvino-cpu")),
                            Candidate("ort", lambda: called.append(1) or _opened(tiny_bundle, "onnxruntime-cpu"))],
                           64, 64)
    assert kept.name == "openvino" and kept.auto_probe["picked"] == "ov" and not kept.auto_probe["timed"]
    assert not called                                # opened lazily: the second candidate was never built


def test_without_the_probe_a_failed_check_moves_on_to_the_next(tiny_bundle, monkeypatch) -> None:
    monkeypatch.setenv("EDGE_AD_AUTO_PROBE", "0")
    made = []

    def build(name):
        def make():
            made.append(Delayed(_opened(tiny_bundle, name), 0.0))
            return made[-1]
        return make

    refuse = lambda backend: {"kept": False, "flips": 2, "auroc": 0.5, "auroc_fp32": 0.9}  # noqa: E731
    kept = fastest_backend([Candidate("reduced", build("openvino-cpu"), refuse),
                            Candidate("fp32", build("onnxruntime-cpu"))], 64, 64)
    assert kept is made[1] and made[0].closed and kept.auto_probe["picked"] == "fp32"
    with pytest.raises(ValueError, match="reduced: 2 verdicts changed.*precision='fp32'"):
        fastest_backend([Candidate("reduced", build("openvino-cpu"), refuse)], 64, 64)
    assert made[-1].closed


def test_the_fastest_that_fails_its_check_is_passed_over(tiny_bundle) -> None:
    """A reduced precision is kept only when its check passes: the faster backend here fails it."""
    made = {}

    def build(name, slow):
        def make():
            backend = _opened(tiny_bundle, name)
            made[name] = Delayed(backend, 0.03 if slow else 0.0)
            return made[name]
        return make

    refuse = lambda backend: {"kept": False, "flips": 1, "max_abs_diff": 0.5}  # noqa: E731
    kept = fastest_backend([Candidate("fast-reduced", build("openvino-cpu", False), refuse),
                            Candidate("slow-fp32", build("onnxruntime-cpu", True))], 64, 64)
    assert kept is made["onnxruntime-cpu"] and made["openvino-cpu"].closed and not kept.closed
    probe = kept.auto_probe
    assert probe["picked"] == "slow-fp32" and probe["candidates"]["fast-reduced"]["check"]["flips"] == 1
    assert probe["candidates"]["fast-reduced"]["ms"] < probe["candidates"]["slow-fp32"]["ms"]


def test_a_candidate_that_cannot_open_here_is_left_out(tiny_bundle) -> None:
    def refuse():
        raise ValueError("this CPU does not compute in bf16")

    kept = fastest_backend([Candidate("bf16", refuse), Candidate("ort", lambda: _opened(tiny_bundle, "onnxruntime-cpu"))],
                           64, 64)
    assert kept.name == "onnxruntime" and "bf16" not in kept.auto_probe["candidates"]
    with pytest.raises(ValueError, match="bf16"):
        fastest_backend([Candidate("bf16", refuse)], 64, 64)


def test_no_candidate_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        fastest_backend([], 64, 64)


@pytest.mark.skipif(not openvino_for_cpu(), reason="auto runs OpenVINO only on x86-64 CPUs")
def test_auto_loads_one_of_the_two_and_it_runs(tiny_bundle) -> None:
    with edge_ad.load(tiny_bundle) as detector:
        assert detector.backend.name in ("openvino", "onnxruntime")
        assert detector.scores([__import__("numpy").zeros((90, 120, 3), "uint8")]).shape == (1,)
