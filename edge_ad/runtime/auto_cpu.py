"""`backend="auto"` on a CPU box with OpenVINO: the fastest configuration that keeps the bundle's verdicts.

Candidates: OpenVINO (f32 hint) and ONNX Runtime on the FP32 graph; with the bundle's INT8 graph (`edge-ad
export --int8`, written only when it changes no verdict on the run's images) OpenVINO and ONNX Runtime on
it; and, on CPUs that compute in bfloat16 and for bundles that carry a verdict set (`verdicts.npz`,
edge_ad/runtime/verdict_check.py), OpenVINO's bf16 hint on the FP32 graph and on the INT8 graph's float
parts. Which is fastest depends on the graph and the CPU, so it is measured at load: each candidate scores
one seeded prepared frame (a warm-up each, then 3 interleaved rounds of 2 calls; the median). Then,
fastest first, a candidate in reduced precision (INT8, bf16) is kept only if it changes no verdict of the
verdict set here, on this CPU, and keeps its AUROC (edge_ad/runtime/verdict_check.py); the FP32 ones need
no check. A bundle without a verdict set offers no bf16 candidate, and its INT8 graph counts as checked by
the export (which refuses one that changes a verdict of the run's images). Measured on the 2-core AMD EPYC
(benchmarks/results/cpu-peers.json): OpenVINO's f32 hint ran SimpleNet 1.5x and MKD 1.9x as fast as ONNX
Runtime and SPR 0.7x; on SimpleNet's `washer` run the bf16 hint flipped one verdict of the set and the
INT8 graph with bf16 float parts lowered its AUROC by 0.007, so auto ran the INT8 graph at f32. Load takes
about a second per candidate for these models. `EDGE_AD_AUTO_PROBE=0` skips the timing: the first
candidate that passes its check is kept. `backend.auto_probe` records what was timed and checked.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Callable, NamedTuple

import numpy as np

from edge_ad.runtime.backend import Backend

__all__ = ["Candidate", "fastest_backend"]

log = logging.getLogger(__name__)


class Candidate(NamedTuple):
    label: str                              # "openvino:int8", ...
    make: Callable[[], Backend]
    check: Callable[[Backend], dict] | None = None     # reduced precision: the verdict check, else None


def _medians_ms(backends: list[Backend], batch: np.ndarray, rounds: int = 3, calls: int = 2) -> list[float]:
    """Each backend's median time of one call on `batch`: a warm-up each (first-call allocations and
    compilation), then `rounds` passes over all of them, `calls` calls each, so that a machine whose speed
    drifts during the probe slows every candidate alike."""
    for backend in backends:
        backend.infer(batch)
    times: list[list[float]] = [[] for _ in backends]
    for _ in range(rounds):
        for k, backend in enumerate(backends):
            for _ in range(calls):
                start = time.perf_counter()
                backend.infer(batch)
                times[k].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def _opened(candidates: list[Candidate]) -> list[tuple[Candidate, Backend]]:
    """Each candidate's backend; one that cannot open here (a CPU without bf16, a graph OpenVINO cannot
    compile: ValueError, RuntimeError) is left out, unless none opens: then the first one's error. An
    unexpected error closes the ones already open."""
    out, first_error = [], None
    try:
        for cand in candidates:
            try:
                out.append((cand, cand.make()))
            except (ValueError, RuntimeError) as err:
                log.info("auto: %s cannot run here (%s)", cand.label, err)
                first_error = first_error or err
    except BaseException:
        _close_all(out)
        raise
    if not out:
        raise first_error if first_error else ValueError("fastest_backend needs at least one candidate")
    return out


def _close_all(opened: list[tuple[Candidate, Backend]], keep: Backend | None = None) -> None:
    for _, backend in opened:
        if backend is not keep:
            backend.close()


def _first_passing(candidates: list[Candidate], record: dict) -> Backend | None:
    """No probe: open the candidates one at a time, in order, and keep the first that opens and passes its
    check (the others are closed at once, so at most one extra backend is held)."""
    first_error = None
    for cand in candidates:
        try:
            backend = cand.make()
        except (ValueError, RuntimeError) as err:
            log.info("auto: %s cannot run here (%s)", cand.label, err)
            first_error = first_error or err
            continue
        try:
            verdict = cand.check(backend) if cand.check else None
        except BaseException:
            backend.close()
            raise
        record["candidates"][cand.label] = {"check": verdict}
        if verdict is None or verdict["kept"]:
            record["picked"] = cand.label
            return backend
        backend.close()
    if first_error is not None and not record["candidates"]:
        raise first_error                          # none could even open: say why
    return None


def _fastest_passing(candidates: list[Candidate], height: int, width: int, record: dict) -> Backend | None:
    """Open every candidate, time them, and keep the fastest that passes its check; the others are closed."""
    opened = _opened(candidates)
    keep = None
    try:
        if len(opened) > 1:
            frame = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
            for (cand, _), ms in zip(opened, _medians_ms([b for _, b in opened], frame)):
                record["candidates"][cand.label] = {"ms": round(ms, 3)}
            opened.sort(key=lambda item: record["candidates"][item[0].label]["ms"])
        for cand, backend in opened:
            verdict = cand.check(backend) if cand.check else None
            record["candidates"].setdefault(cand.label, {})["check"] = verdict
            if verdict is None or verdict["kept"]:
                keep, record["picked"] = backend, cand.label
                return keep
        return None
    finally:
        _close_all(opened, keep)


def fastest_backend(candidates: list[Candidate], height: int, width: int) -> Backend:
    """The fastest candidate that passes its check, timed on one seeded frame of the bundle's size (the
    first that passes, in the given order, when the probe is switched off); the others are closed. Raises
    ValueError, saying what each check found, when every candidate fails it (the FP32 ones have no check,
    so a caller that offers one never sees it)."""
    if not candidates:
        raise ValueError("fastest_backend needs at least one candidate")
    probe = os.environ.get("EDGE_AD_AUTO_PROBE", "1") != "0"
    record: dict = {"timed": probe, "candidates": {}}
    keep = _fastest_passing(candidates, height, width, record) if probe else _first_passing(candidates, record)
    if keep is None:
        found = "; ".join(f"{label}: {seen['check']['flips']} verdicts changed, set AUROC {seen['check']['auroc']} "
                          f"vs FP32 {seen['check']['auroc_fp32']}" for label, seen in record["candidates"].items()
                          if seen.get("check"))
        raise ValueError(f"no configuration kept the bundle's verdict set on this CPU ({found or 'none could run'}): "
                         "load it with precision='fp32', or name the backend and precision to run one unchecked "
                         "(e.g. backend='openvino', precision='int8')")
    keep.auto_probe = record
    log.info("auto: %s for this bundle (%s)", record["picked"], record["candidates"])
    return keep
