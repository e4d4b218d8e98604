"""Which thread settings serve the CPU path best, model-only and end to end, measured in one run.

    python benchmarks/cpu_threads.py --json benchmarks/results/cpu-threads.json [--model simplenet]

On the model's paper-configuration bundle (SimpleNet: 288 px; untrained heads, the same graph as a
trained one), each configuration is timed with edge-ad bench's `measure` (model-only: a prepared
batch -> image scores; e2e: 640 x 480 BGR frames -> Results) at batch 1 and 8, in rounds: every
configuration once per round, the median of each over the rounds, so that drift on a shared box
falls on all of them alike.

- ONNX Runtime: intra-op threads (all cores, 1), spinning of the worker threads (edge_ad turns it off,
  ONNX Runtime's default is on), the heat-map kernel's threads (1, all cores);
- ONNX Runtime's own defaults (an InferenceSession with no options): the peer a user would try first;
- OpenVINO (where installed): its default and f32 hints, all cores and 1 thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable

from common import environment, write_json
from fps import build_bundle

BATCHES = (1, 8)


def ort_config(threads: int | None, spinning: bool, heatmap_threads: int, plain: bool = False):
    """A factory of a Detector on edge_ad's ONNX Runtime backend with these settings."""
    def make(bundle):
        from edge_ad.runtime import Detector
        from edge_ad.runtime.inputs import seeded_inputs
        from edge_ad.runtime.onnxruntime import OrtBackend

        backend = OrtBackend(bundle.file("model.onnx"), device="cpu", threads=threads, spinning=spinning,
                             feeds=seeded_inputs(bundle.meta.get("graph_inputs", {}), None))
        if plain:                      # ONNX Runtime as it comes: no edge_ad session options
            backend.session = _plain_session(bundle.file("model.onnx"))
        detector = Detector(bundle, backend)
        detector.heatmap_threads = heatmap_threads
        return detector
    return make


def _plain_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def load_config(backend: str, **kwargs):
    def make(bundle):
        import edge_ad

        return edge_ad.load(bundle.path, backend=backend, **kwargs)
    return make


def configurations() -> dict[str, Callable]:
    cores = os.cpu_count() or 1
    configs = {
        "ort edge_ad default (all cores, no spin, heat map 1 thread)": ort_config(None, False, 1),
        "ort spinning (all cores, heat map 1 thread)": ort_config(None, True, 1),
        "ort no spin, heat map all cores": ort_config(None, False, cores),
        "ort spinning, heat map all cores": ort_config(None, True, cores),
        "ort 1 thread, heat map 1 thread": ort_config(1, False, 1),
        "ort own defaults (InferenceSession, no options)": ort_config(None, True, 1, plain=True),
    }
    try:
        import openvino  # noqa: F401
    except ImportError:
        return configs
    configs.update({
        "openvino default hint, all cores": load_config("openvino-cpu"),
        "openvino f32 hint, all cores": load_config("openvino-cpu", precision="fp32"),
        "openvino f32 hint, 1 thread": load_config("openvino-cpu", precision="fp32", threads=1),
    })
    return configs


def measure_all(bundle, configs: dict[str, Callable], rounds: int, iters: int) -> dict:
    """{config: {batch: {"model": ..., "e2e": ...}}}: medians over `rounds` rounds of `iters` calls each."""
    from edge_ad.runtime.bench import measure

    detectors = {name: make(bundle) for name, make in configs.items()}
    samples: dict = {name: {b: {"model": [], "e2e": []} for b in BATCHES} for name in configs}
    for r in range(rounds):
        for name, det in detectors.items():
            for b in BATCHES:
                t = measure(det, b, iters=iters, warmup=3)
                for mode in ("model", "e2e"):
                    samples[name][b][mode].append(t[mode])
        print(f"round {r + 1}/{rounds} done", flush=True)
    out = {}
    for name, det in detectors.items():
        out[name] = {"precision": getattr(det.backend, "precision", "fp32")}
        for b in BATCHES:
            out[name][f"batch{b}"] = {mode: _median_of(samples[name][b][mode]) for mode in ("model", "e2e")}
        det.close()
    return out


def _median_of(timings: list[dict]) -> dict:
    p50 = statistics.median(t["p50_ms"] for t in timings)
    return {"p50_ms": p50, "p99_ms": statistics.median(t["p99_ms"] for t in timings), "fps": timings[0]["fps"]
            * timings[0]["p50_ms"] / p50, "rounds": len(timings)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="simplenet")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        _, bundle = build_bundle(args.model, Path(tmp) / "bundle", None)
        table = measure_all(bundle, configurations(), args.rounds, args.iters)
    for name, row in table.items():
        print(f"{name:60s} " + "  ".join(f"b{b}: model {row[f'batch{b}']['model']['fps']:6.1f} e2e "
                                          f"{row[f'batch{b}']['e2e']['fps']:6.1f}" for b in BATCHES))
    if args.json:
        write_json(args.json, {"model": args.model, "input": bundle.meta["geometry"]["crop"], "configs": table,
                               "environment": environment(("edge_ad", "onnxruntime", "openvino", "numpy"))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
