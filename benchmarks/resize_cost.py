"""Host-side cost of shrinking a camera frame to the model input: OpenCV's INTER_AREA vs edge_ad's kernel.

    python benchmarks/resize_cost.py --json benchmarks/results/resize-cpu.json

For 640x480, 1280x720 and 1920x1080 RGB frames and the letterbox content sizes of 224 and 288 inputs:
cv2.resize(..., INTER_AREA) with one OpenCV thread and with OpenCV's default, the compiled kernel
(edge_ad._kernels.resize_area_cpu, one thread) in its AVX2 build (where the CPU has AVX2) and its
baseline build, and the whole prepare() (resize + letterbox padding) with and without the kernel.
Times are medians over `--rounds` rounds of `--repeats` calls, the methods taking turns each round so
a busy machine slows them alike; every case first checks the kernel's pixels equal OpenCV's.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from common import environment, time_call, write_json

from edge_ad import _kernels
from edge_ad.runtime import preprocess
from edge_ad.runtime.preprocess import Geometry, prepare

FRAMES = [(480, 640), (720, 1280), (1080, 1920)]
INPUTS = [224, 288]


def timed_rounds(methods: dict[str, tuple[int, Callable[[], object]]], rounds: int, repeats: int) -> dict[str, dict]:
    """Median and min (ms) of each (OpenCV threads, call) over `rounds` turns of `repeats` calls, the
    methods interleaved."""
    medians: dict[str, list[float]] = {name: [] for name in methods}
    mins: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, (threads, fn) in methods.items():
            cv2.setNumThreads(threads)
            t = time_call(fn, repeats=repeats, warmup=5)
            medians[name].append(t["median_ms"])
            mins[name].append(t["min_ms"])
    return {name: {"median_ms": round(statistics.median(medians[name]), 4), "min_ms": round(min(mins[name]), 4)}
            for name in methods}


def prepare_without_kernel(frame: np.ndarray, geometry: Geometry) -> np.ndarray:
    kernel, preprocess._AREA_KERNEL = preprocess._AREA_KERNEL, None
    try:
        return prepare(frame, geometry)
    finally:
        preprocess._AREA_KERNEL = kernel


def case(h: int, w: int, size: int, rounds: int, repeats: int, default_threads: int) -> dict:
    """One frame size -> one model input size: pixels checked, then every method timed."""
    frame = np.random.default_rng(h + size).integers(0, 256, (h, w, 3), dtype=np.uint8)
    geometry = Geometry.for_model(size, size, "letterbox")
    _, _, dh, dw = geometry.letterbox(h, w)
    reference = cv2.resize(frame, (dw, dh), interpolation=cv2.INTER_AREA)
    for avx2 in (True, False):
        if not np.array_equal(_kernels.resize_area_cpu(frame, dh, dw, avx2=avx2), reference):
            raise SystemExit(f"{w}x{h} -> {dw}x{dh}: the kernel's pixels differ from OpenCV's (avx2={avx2})")
    if not np.array_equal(prepare(frame, geometry), prepare_without_kernel(frame, geometry)):
        raise SystemExit(f"{w}x{h} -> {size}: prepare() differs with and without the kernel")
    area = lambda: cv2.resize(frame, (dw, dh), interpolation=cv2.INTER_AREA)  # noqa: E731
    times = timed_rounds({
        "cv2_area_1_thread": (1, area),
        "cv2_area_default_threads": (default_threads, area),
        "kernel": (1, lambda: _kernels.resize_area_cpu(frame, dh, dw)),
        "kernel_baseline_build": (1, lambda: _kernels.resize_area_cpu(frame, dh, dw, avx2=False)),
        "cv2_linear_1_thread": (1, lambda: cv2.resize(frame, (dw, dh), interpolation=cv2.INTER_LINEAR)),
        "prepare_with_kernel": (1, lambda: prepare(frame, geometry)),
        "prepare_without_kernel": (1, lambda: prepare_without_kernel(frame, geometry)),
    }, rounds, repeats)
    cv2.setNumThreads(default_threads)
    speedup = times["cv2_area_1_thread"]["median_ms"] / times["kernel"]["median_ms"]
    print(f"{w}x{h} -> {dw}x{dh} (input {size}): cv2 {times['cv2_area_1_thread']['median_ms']:.3f} ms, "
          f"kernel {times['kernel']['median_ms']:.3f} ms ({speedup:.1f}x), "
          f"baseline build {times['kernel_baseline_build']['median_ms']:.3f} ms")
    return {"frame": [h, w, 3], "model_input": size, "resized_to": [dh, dw], "pixels_equal_opencv": True,
            "times": times, "kernel_speedup_vs_cv2_1_thread": round(speedup, 2)}


def cpu_has(flag: str) -> bool | None:
    """Whether /proc/cpuinfo lists `flag` (None where there is no /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return any(flag in line.split() for line in text.splitlines() if line.startswith("flags"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="turns of every method")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per method and turn")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if preprocess._AREA_KERNEL is None:
        raise SystemExit("edge_ad._kernels has no resize_area_cpu (or EDGE_AD_KERNELS=numpy); rebuild: make install")
    default_threads = cv2.getNumThreads()
    cases = [case(h, w, size, args.rounds, args.repeats, default_threads) for h, w in FRAMES for size in INPUTS]
    result = {
        "what": "cv2.resize INTER_AREA vs edge_ad._kernels.resize_area_cpu on RGB uint8 frames, to the letterbox "
                "content size of a square model input; prepare() = resize + letterbox padding",
        "rounds": args.rounds, "repeats": args.repeats, "opencv_default_threads": default_threads,
        "cpu_has_avx2": cpu_has("avx2"),
        "cases": cases, "environment": environment(("opencv-python", "numpy", "pybind11")),
    }
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
