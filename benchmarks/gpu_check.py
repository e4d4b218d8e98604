"""The GPU check: one command that builds, tests and times edge_ad's GPU path on this machine.

    make gpu-check                                   # = python3 benchmarks/gpu_check.py --build
    python3 benchmarks/gpu_check.py --build --out DIR
    python3 benchmarks/gpu_check.py --smoke --out DIR   # CPU smoke mode (run by `make test`)

Stages, each recorded with its status, duration and, when it fails, the error; a failed stage never
stops the next one, and the JSON is rewritten after every stage, so a run cut short still reports:

1. build:    the kernels for this GPU only (pip install --no-deps --no-build-isolation -e ., with
             CMAKE_CUDA_ARCHITECTURES=native and EDGE_AD_REQUIRE_CUDA=ON); a direct CMake build into
             edge_ad/ when pip cannot install into this Python;
2. pytest:   `pytest -m gpu` on the test files that hold GPU tests (log in pytest-gpu.log);
3. bandwidth: a large device-to-device copy, the ceiling for the heat-map kernel;
4. heatmap:  the CUDA heat-map kernel vs torch CUDA ops, batch 1 and 8, 288 and 1024 px output;
5. ddim:     the DDIM update kernel vs torch ops, and DiffAD's loop per step with each;
6. models:   each model at its paper input size, batch 1 and 8: eager FP32 (TF32 off) vs the torch
             backend (FP16 autocast + CUDA graphs; and without graphs), the same heat-map post-processing
             in each, score parity between them and against ONNX Runtime on the CPU, FPS beside the paper;
7. tensorrt: where TensorRT is installed, each bundle's FP16 engine: built, parity vs ONNX Runtime CPU,
             timed; the failing step is named.

The bundles are exported in worker processes while the tests run (DiffAD's takes the longest).
Writes gpu-check-<gpu>.json (or gpu-check-smoke.json) naming GPU, driver, CUDA, torch and TensorRT.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "export"))       # the export pipeline, installed as edge_ad_export
sys.path.insert(0, str(ROOT / "benchmarks"))

MODELS = ("diffad", "spr", "uniad", "simplenet", "mkd")      # longest export first
GPU_TEST_FILES = ("tests/test_heatmap_kernel.py", "tests/test_ddim_kernel.py", "tests/test_backends.py",
                  "tests/test_diffusion_end_to_end.py")


class Report:
    """The check's results, rewritten to `path` after every stage."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        self.data: dict = {"mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stages": {}}

    def stage(self, name: str, fn: Callable[[], object]) -> object | None:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        entry: dict = {}
        try:
            result = fn()
            partial = isinstance(result, dict) and result.get("errors")
            entry = {"status": "failed" if partial else "ok", "result": result}
            if partial:
                entry["error"] = f"failed for: {', '.join(result['errors'])} (details in the stage's result)"
        except Skipped as why:
            result, entry = None, {"status": "skipped", "reason": str(why)}
        except Exception as err:  # noqa: BLE001 - a failed stage is reported, and the next one runs
            result = None
            entry = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            print(entry["traceback"], file=sys.stderr, flush=True)
        entry["seconds"] = round(time.perf_counter() - start, 2)
        self.data["stages"][name] = entry
        self.write()
        print(f"== {name}: {entry['status']} in {entry['seconds']} s"
              + (f" ({entry.get('error') or entry.get('reason')})" if entry["status"] != "ok" else ""), flush=True)
        return result

    def write(self) -> None:
        from common import write_json

        write_json(self.path, json.loads(json.dumps(self.data, default=str)), quiet=True)


class Skipped(Exception):
    """A stage that cannot run on this machine (the reason says why)."""


# ---------------------------------------------------------------------------------------- build


def build_kernels(log: Path) -> dict:
    """The compiled module for this GPU alone; pip first, then a plain CMake build into edge_ad/."""
    env = {**os.environ, "EDGE_AD_REQUIRE_CUDA": "ON"}
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-e", str(ROOT),
           "--config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=native",
           "--config-settings=build-dir=build/gpu-check"]
    with log.open("w") as out:
        done = subprocess.run(pip, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    if done.returncode == 0:
        import site
        import sysconfig

        site.addsitedir(sysconfig.get_paths()["purelib"])     # the editable install's .pth, in this process too
        return {"how": "pip install -e (editable)", "log": log.name}
    return {"how": "cmake (pip failed, see the log)", **_cmake_build(log)}


def _cmake_build(log: Path) -> dict:
    import pybind11

    build = ROOT / "build" / "gpu-check-cmake"
    steps = [["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DEDGE_AD_REQUIRE_CUDA=ON",
              "-DCMAKE_CUDA_ARCHITECTURES=native", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
              f"-DPython_EXECUTABLE={sys.executable}"],
             ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 4)]]
    with log.open("a") as out:
        for cmd in steps:
            subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=600)
    built = sorted(build.glob("_kernels*.so"))
    if not built:
        raise RuntimeError(f"CMake built no _kernels module (see {log.name})")
    (ROOT / "edge_ad" / built[0].name).write_bytes(built[0].read_bytes())
    return {"module": built[0].name}


# ---------------------------------------------------------------------------------- environment


def environment() -> dict:
    """GPU, driver, CUDA, torch, TensorRT, ONNX Runtime: what every number of the check ran on."""
    from common import environment as base

    import torch

    from edge_ad import _kernels
    from edge_ad.runtime.tensorrt import tensorrt_missing

    env = base(("edge_ad", "torch", "onnxruntime", "onnx", "numpy", "timm", "tensorrt"))
    env["torch_cuda"] = torch.version.cuda
    env["kernels_have_cuda"] = bool(_kernels.has_cuda)
    env["cuda_devices"] = _kernels.cuda_device_count()
    env["cuda_error"] = _kernels.cuda_init_error() if env["cuda_devices"] == 0 else None
    if env["cuda_devices"]:
        env["gpu"] = _kernels.cuda_device_name(0)
        env["compute_capability"] = ".".join(map(str, _kernels.cuda_device_capability(0)))
    env["nvidia_smi"] = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"])
    env["nvcc"] = (_run(["nvcc", "--version"]) or "").strip().splitlines()[-1:] or None
    env["tensorrt_missing"] = tensorrt_missing()
    return env


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------------------- tests


def run_gpu_tests(log: Path) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs", *GPU_TEST_FILES]
    with log.open("w") as out:
        done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=240)
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if re.search(r"\b(passed|failed|skipped|error)", ln)), "")
    failures = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    if done.returncode != 0:
        raise RuntimeError(f"pytest -m gpu exited {done.returncode}: {summary}; " + " | ".join(failures[:20]))
    return {"summary": summary, "log": log.name}


# -------------------------------------------------------------------------------------- bundles


def _export(name: str, folder: str, image_size: int | None, config: str) -> str:
    """Worker process: one model at its configuration, exported to a bundle; returns its path."""
    import torch

    from fps import build_bundle

    torch.set_num_threads(4)
    _, bundle = build_bundle(name, Path(folder), image_size, config)
    return str(bundle.path)


def start_exports(models: list[str], folder: Path, smoke: bool) -> tuple[ProcessPoolExecutor, dict[str, Future]]:
    pool = ProcessPoolExecutor(max_workers=1 if smoke else 3, mp_context=get_context("spawn"))
    size, config = (64, "cpu") if smoke else (None, "paper")
    return pool, {m: pool.submit(_export, m, str(folder), size, config) for m in models}


# ---------------------------------------------------------------------------------- the stages


def measure_models(bench, exports: dict[str, Future], batches: list[int], step_counts: list[int]) -> dict:
    from fps import backbone_of, load_bundle_model
    from gpu_cases import model_rows, ort_parity, tf32_off
    from papers import PAPERS

    import numpy as np

    if bench.cuda:
        tf32_off(bench.torch)
    out: dict = {"rows": [], "ort_parity": {}, "errors": {}, "papers": PAPERS}
    for name, future in exports.items():
        try:
            model, bundle = load_bundle_model(Path(future.result(timeout=900)))
            diffusion = "pipeline" in bundle.meta
            for steps in (step_counts if diffusion and bench.cuda else [5] if diffusion else [None]):
                rows = model_rows(bench, model, bundle, batches if steps in (None, step_counts[0]) else [1], steps)
                for row in rows:
                    row["backbone"] = backbone_of(model)
                    row["vs_paper"] = _vs_paper(row, PAPERS.get(name), bench)
                out["rows"] += rows
            size = bundle.meta["geometry"]["crop"][0]
            batch = np.random.default_rng(7).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
            kind = "torch-cuda" if bench.cuda else "torch-cpu"
            import edge_ad

            with edge_ad.load(bundle.path, backend=kind, steps=5 if diffusion else None) as det:
                reference = det.heatmaps(batch, maps=False)[1]
            out["ort_parity"][name] = ort_parity(bundle, reference, batch, 5 if diffusion else None)
        except Exception as err:  # noqa: BLE001 - one model failing must not hide the others
            out["errors"][name] = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
            print(out["errors"][name], file=sys.stderr, flush=True)
    return out


def _vs_paper(row: dict, paper: dict | None, bench) -> str | None:
    if not paper:
        return None
    gpu = bench.torch.cuda.get_device_name(0) if bench.cuda else "this CPU"
    note = f"{row['fps'] / paper['fps']:.2f}x the paper's {paper['fps']:.0f} FPS ({paper['hardware']}; measured on {gpu})"
    if row["steps"] is not None and row["steps"] != paper.get("steps"):
        note += f" (paper at {paper['steps']} steps)"
    return note


def measure_ddim(bench, smoke: bool, folder: Path) -> dict:
    from gpu_cases import ddim_cases

    dtype = "float32" if smoke else "float16"
    shapes = [(1, 4, 8, 8)] if smoke else [(1, 4, 32, 32), (8, 4, 32, 32)]
    out = {"update": ddim_cases(bench, shapes, dtype)}
    if not smoke:
        import ddim_loop

        path = folder / "ddim-loop.json"
        ddim_loop.main(["--device", "cuda", "--dtype", "fp16", "--steps", "5", "--repeats", "30", "--json", str(path)])
        out["loop"] = json.loads(path.read_text())
    return out


def tensorrt_stage(bench, exports: dict[str, Future]) -> dict:
    """Unverified until TensorRT is installed where the check runs: engine per bundle, parity, timing."""
    from edge_ad.runtime.tensorrt import tensorrt_missing

    reason = tensorrt_missing()
    if reason:
        raise Skipped(reason)
    import edge_ad
    import numpy as np

    out: dict = {}
    for name, future in exports.items():
        step = "reading the bundle"
        try:
            path = future.result(timeout=900)
            step = "building the engine"
            det = edge_ad.load(path, backend="tensorrt", batch=(1, 1, 8))
            size = det.geometry.crop[0]
            batch = np.random.default_rng(3).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
            step = "running the engine"
            got = det.heatmaps(batch, maps=False)[1]
            step = "ONNX Runtime reference"
            with edge_ad.load(path, backend="onnxruntime-cpu") as ort:
                from gpu_cases import _parity

                parity = _parity(ort.heatmaps(batch, maps=False)[1], got)
            step = "timing"
            timing = {n: bench.wall_ms(lambda n=n: det.heatmaps(batch[:n], maps=False)) for n in (1, 8)}
            out[name] = {"parity_vs_onnxruntime_cpu": parity, "timing": timing}
            det.close()
        except Exception as err:  # noqa: BLE001 - name the step that failed, go on with the next model
            out[name] = {"failed_at": step, "error": f"{type(err).__name__}: {err}"}
    return out


# ----------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", action="store_true", help="build the kernels for this GPU first")
    parser.add_argument("--smoke", action="store_true", help="CPU smoke mode: tiny sizes, no build, no pytest")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON and logs")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--skip", default="", help="stages to leave out, comma-separated")
    parser.add_argument("--steps", default="5,1,10", help="DiffAD's DDIM step counts (the first at every batch size)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = {s for s in args.skip.split(",") if s}
    report = Report(out / ("gpu-check-smoke.json" if args.smoke else "gpu-check.json"), "smoke" if args.smoke else "gpu")
    if args.build and not args.smoke:
        report.stage("build", lambda: build_kernels(out / "build.log"))
    report.data["environment"] = report.stage("environment", environment)
    return run_stages(report, args, out, skip)


def run_stages(report: Report, args, out: Path, skip: set[str]) -> int:
    import torch

    from gpu_cases import Bench, copy_bandwidth, heatmap_cases

    cuda = not args.smoke and torch.cuda.is_available()
    if not args.smoke and not cuda:
        report.data["error"] = "no CUDA device visible to torch: run this on an NVIDIA GPU, or use --smoke"
        report.write()
        print(report.data["error"], file=sys.stderr)
        return 2
    bench = Bench(torch, "cuda" if cuda else "cpu", iters=100 if cuda else 5, warmup=10 if cuda else 1)
    models = [m for m in args.models.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        pool, exports = start_exports(models if "models" not in skip else [], Path(tmp), args.smoke)
        stages: list[tuple[str, Callable[[], object]]] = [
            ("pytest", lambda: run_gpu_tests(out / "pytest-gpu.log") if not args.smoke else _skip("smoke mode")),
            ("bandwidth", lambda: copy_bandwidth(bench) if cuda else _skip("CPU")),
            ("heatmap", lambda: heatmap_cases(bench, [(1, 8, 64), (2, 8, 64)] if args.smoke else
                                              [(1, 36, 288), (8, 36, 288), (1, 128, 1024), (8, 128, 1024)], _peak(report))),
            ("ddim", lambda: measure_ddim(bench, args.smoke, out)),
            ("models", lambda: measure_models(bench, exports, [1, 2] if args.smoke else [1, 8],
                                              [int(s) for s in args.steps.split(",")])),
            ("tensorrt", lambda: tensorrt_stage(bench, exports)),
        ]
        for name, fn in stages:
            if name not in skip:
                report.stage(name, fn)
        pool.shutdown(cancel_futures=True)
    _summary(report)
    failed = [k for k, v in report.data["stages"].items() if v["status"] == "failed"]
    return 1 if failed else 0


def _skip(reason: str):
    raise Skipped(reason)


def _peak(report: Report) -> float | None:
    stage = report.data["stages"].get("bandwidth", {})
    return (stage.get("result") or {}).get("gb_per_s")


def _summary(report: Report) -> None:
    """A short table last, for a reader of the output's tail."""
    env = report.data.get("environment") or {}
    print(f"\ngpu check ({report.data['mode']}): {env.get('gpu') or env.get('cpu')}, driver/smi: {env.get('nvidia_smi')}, "
          f"torch {env.get('versions', {}).get('torch')} (CUDA {env.get('torch_cuda')}), TensorRT: "
          f"{env.get('versions', {}).get('tensorrt') or env.get('tensorrt_missing')}")
    for name, st in report.data["stages"].items():
        print(f"  {name:12s} {st['status']:8s} {st['seconds']:7.1f} s  {st.get('error') or st.get('reason') or ''}"[:300])
    heat = report.data["stages"].get("heatmap", {}).get("result") or []
    for r in heat:
        print(f"  heatmap b{r['batch']} {r['in']}->{r['out']}: {r['speedup_wall']:.2f}x wall"
              + (f", {r['speedup_graph']:.2f}x graph, {r['achieved_gb_s_all_bytes']:.0f} GB/s" if "speedup_graph" in r else ""))
    models = (report.data["stages"].get("models", {}).get("result") or {}).get("rows", [])
    for r in models:
        print(f"  {r['model']:9s} {r['variant']:24s} b{r['batch']} s{r['steps'] or '-'}: {r['fps']:9.1f} FPS  "
              f"p50 {r['median_ms']:7.3f} ms  diff/range {r['parity_vs_eager']['max_diff_over_range']:.3g}")
    print(f"wrote {report.path}")


if __name__ == "__main__":
    sys.exit(main())
