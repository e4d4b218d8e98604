"""`backend="auto"` on a CPU box with OpenVINO: the fastest of the bundle's checked graphs on the two libraries.

Candidates, in this order: OpenVINO (f32 hint) on the INT8 graph and ONNX Runtime on it, when the bundle
has one (`edge-ad export --int8` writes it only when it changes no verdict on the run's images), then
OpenVINO (f32 hint) and ONNX Runtime on the FP32 graph. Which is fastest depends on the graph, so it is
measured at load, not assumed: on the 2-core AMD EPYC (benchmarks/results/cpu-peers.json) OpenVINO's f32
hint ran SimpleNet and MKD 1.7x faster than ONNX Runtime, SPR 3.6x slower, and SimpleNet's INT8 graph
on OpenVINO 2.4x faster than ONNX Runtime's FP32. Each candidate scores one seeded prepared frame (a
warm-up, then the median of 3 calls) and all but the fastest are closed: well under a second per
candidate for these models. `precision="fp32"` leaves out the INT8 graph, `precision="int8"` the FP32
one. Diffusion bundles (several seconds a frame on a CPU) are not probed and stay on ONNX Runtime.
`EDGE_AD_AUTO_PROBE=0` skips the timing and keeps the first candidate.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Callable

import numpy as np

from edge_ad.runtime.backend import Backend

__all__ = ["fastest_backend"]

log = logging.getLogger(__name__)

Factory = Callable[[], Backend]


def _median_ms(backend: Backend, batch: np.ndarray, calls: int = 3) -> float:
    backend.infer(batch)                                   # warm-up: first-call allocations and compilation
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        backend.infer(batch)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _label(backend: Backend) -> str:
    precision = getattr(backend, "precision", None)
    return f"{backend.name}:{precision}" if precision else backend.name


def fastest_backend(candidates: list[Factory], height: int, width: int) -> Backend:
    """The fastest of the backends the callables build, on one seeded frame of the bundle's size; the
    first alone when there is one candidate or the probe is switched off. The others are closed."""
    if not candidates:
        raise ValueError("fastest_backend needs at least one candidate")
    first = candidates[0]()
    if len(candidates) == 1 or os.environ.get("EDGE_AD_AUTO_PROBE", "1") == "0":
        return first
    frame = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    timed = [(first, _median_ms(first, frame))]
    for make in candidates[1:]:
        backend = make()
        timed.append((backend, _median_ms(backend, frame)))
    keep = min(timed, key=lambda item: item[1])[0]
    for backend, _ in timed:
        if backend is not keep:
            backend.close()
    log.info("auto: %s for this bundle (%s)", _label(keep), ", ".join(f"{_label(b)} {ms:.1f} ms" for b, ms in timed))
    return keep
