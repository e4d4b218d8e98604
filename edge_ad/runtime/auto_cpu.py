"""`backend="auto"` on a CPU box with OpenVINO: the faster of OpenVINO (f32 hint) and ONNX Runtime for this bundle.

Which library is faster depends on the graph, so it is measured at load, not assumed: on the 2-core
AMD EPYC (benchmarks/results/cpu-peers.json) OpenVINO's f32 hint ran SimpleNet 1.7x and MKD 1.7x
faster than ONNX Runtime, and SPR 3.6x slower. Both backends are opened, each scores one seeded
prepared frame (a warm-up, then the median of 3 calls), and the slower is closed; it costs well under
a second for these models. Diffusion bundles (several seconds a frame on a CPU) are not probed and stay
on ONNX Runtime. `EDGE_AD_AUTO_PROBE=0` skips the probe and keeps OpenVINO.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Callable

import numpy as np

from edge_ad.runtime.backend import Backend

__all__ = ["faster_backend"]

log = logging.getLogger(__name__)


def _median_ms(backend: Backend, batch: np.ndarray, calls: int = 3) -> float:
    backend.infer(batch)                                   # warm-up: first-call allocations and compilation
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        backend.infer(batch)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def faster_backend(openvino: Callable[[], Backend], onnxruntime: Callable[[], Backend] | None,
                   height: int, width: int) -> Backend:
    """The faster of the two backends (built by the callables) on one seeded frame of the bundle's size;
    OpenVINO alone when ONNX Runtime is not installed (`onnxruntime` None) or the probe is switched off."""
    first = openvino()
    if onnxruntime is None or os.environ.get("EDGE_AD_AUTO_PROBE", "1") == "0":
        return first
    second = onnxruntime()
    frame = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    times = {b.name: _median_ms(b, frame) for b in (first, second)}
    keep, drop = (first, second) if times[first.name] <= times[second.name] else (second, first)
    drop.close()
    log.info("auto: %s for this bundle (%s)", keep.name, ", ".join(f"{k} {v:.1f} ms" for k, v in times.items()))
    return keep
