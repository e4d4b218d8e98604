"""Many cameras, one Triton server, against the in-process ONNX Runtime backend: throughput and p50/p99
latency for 1 to 8 sources, on a real tritonserver (tests/servers/triton.py: the 2.51 binary of the
nvidia-pytriton wheel, CPU, its Python backend running the exported ONNX graph with ONNX Runtime).

Each source is a synthetic camera: 640 x 480 BGR frames at --fps, live (only the newest frame is kept;
frames that arrive while the last one waits are dropped and counted), as a real camera behaves. Two
set-ups per source count N, measured in the same synchronised window of --seconds:
- onnxruntime: one `edge-ad stream`-like process with all N cameras; the pipeline batches one frame
  per camera per round (batch N) into the in-process ONNX Runtime session: one box, N cameras;
- triton: N processes with one camera each, one frame per request (batch 1), on one server whose
  dynamic batcher (the exported config: max batch 8, preferred 4 and 8, 2 ms queue delay) merges them:
  N line PCs, one inference server. The batch sizes come from Triton's statistics API.
Latency = from the frame being read to its Result (resize, inference, heat-map kernel, decision).
FPS = frames with a Result per second, all sources together. Both set-ups share this machine's cores
with everything else running on it (the server included): figures for comparing the two here, not a
GPU server's capacity.

    python benchmarks/triton_scale.py --json benchmarks/results/triton-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))        # the test server helper (tests/servers/triton.py)


def camera(fps: float, seed: int, stop_at: float):
    """Frames of a synthetic 640 x 480 camera at `fps` until `stop_at` (time.time())."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    k, start = 0, time.monotonic()
    while time.time() < stop_at:
        time.sleep(max(0.0, start + k / fps - time.monotonic()))
        yield np.roll(base, 7 * k, axis=1)
        k += 1


def worker(args: argparse.Namespace) -> dict:
    """One process: load, warm up, wait for the common start, stream its cameras for the window."""
    import edge_ad
    from edge_ad.stream import IterableSource

    detector = edge_ad.load(args.bundle, backend=args.backend, triton_url=args.url)
    warm = next(camera(1000.0, 0, time.time() + 60))
    for _ in range(5):
        detector.predict([warm] * args.sources)
    time.sleep(max(0.0, args.start_at - time.time()))
    stop_at = args.start_at + args.seconds
    sources = [IterableSource(camera(args.fps, args.seed + i, stop_at), f"cam{args.seed + i}", live=True)
               for i in range(args.sources)]
    latencies = [item.latency_ms for item in detector.stream(sources, duration=args.seconds + 1.0)]
    dropped = sum(s.stats.frames_dropped for s in sources)
    return {"frames": len(latencies), "latencies_ms": [round(x, 3) for x in latencies], "dropped": dropped}


def run_workers(bundle: Path, backend: str, url: str | None, groups: list[int], fps: float, seconds: float,
                warmup_s: float, at_start: Callable[[], None] = lambda: None) -> dict:
    """Start one worker per group (its number of cameras), all measuring the same window; `at_start` is
    called when it opens (after the workers' warm-up)."""
    start_at = time.time() + warmup_s
    procs, seed = [], 0
    for n in groups:
        command = [sys.executable, __file__, "--worker", "--bundle", str(bundle), "--backend", backend,
                   "--sources", str(n), "--seed", str(seed), "--fps", str(fps), "--seconds", str(seconds),
                   "--start-at", str(start_at)] + (["--url", url] if url else [])
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        seed += n
    time.sleep(max(0.0, start_at - time.time()))
    at_start()
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=warmup_s + seconds + 300)
        if proc.returncode != 0:
            raise SystemExit(f"a {backend} worker failed: {err[-2000:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    latencies = np.concatenate([np.asarray(o["latencies_ms"], np.float64) for o in outs])
    frames = sum(o["frames"] for o in outs)
    return {"fps": round(frames / seconds, 1), "frames": frames, "dropped": sum(o["dropped"] for o in outs),
            "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1) if latencies.size else None,
            "latency_ms_p99": round(float(np.percentile(latencies, 99)), 1) if latencies.size else None}


def build(out: Path, image_size: int) -> tuple[Path, Path]:
    """SimpleNet (EfficientNet-Lite0 backbone, untrained head: weights do not change the timing) exported
    to a bundle, and the Triton repository `edge-ad export --triton` writes for it, served."""
    from fps import build_bundle

    from edge_ad.bundle import read_bundle
    from edge_ad_export.triton_repository import write_repository
    from servers.triton import serve_repository

    _, bundle = build_bundle("simplenet", out, image_size)
    write_repository(read_bundle(bundle.path), out / "exported")
    serve_repository(out / "exported", out / "served")
    return bundle.path, out / "served"


def measure(args: argparse.Namespace) -> dict:
    import onnxruntime

    from edge_ad.runtime.bench import environment
    from servers.triton import TritonServer, ensure_env

    env = ensure_env(onnxruntime.__version__)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle, served = build(Path(tmp), args.image_size)
        server = TritonServer(env, served, Path(tmp), ["simplenet_onnx"], threads=os.cpu_count() or 1).start()
        try:
            for n in args.sources:
                local = run_workers(bundle, "onnxruntime-cpu", None, [n], args.fps, args.seconds, args.warmup)
                before: dict[int, int] = {}
                remote = run_workers(bundle, "triton", server.url, [1] * n, args.fps, args.seconds, args.warmup,
                                     lambda: before.update(server.batch_executions("simplenet_onnx")))
                after = server.batch_executions("simplenet_onnx")
                batches = {s: c - before.get(s, 0) for s, c in after.items() if c > before.get(s, 0)}
                executions = sum(batches.values())
                remote["triton_batches"] = {str(s): c for s, c in sorted(batches.items())}
                remote["mean_batch"] = round(sum(s * c for s, c in batches.items()) / executions, 2) if executions else None
                rows.append({"sources": n, "demand_fps": n * args.fps, "onnxruntime": local, "triton": remote})
                print(f"{n} source(s): onnxruntime {local['fps']} FPS p50 {local['latency_ms_p50']} ms "
                      f"p99 {local['latency_ms_p99']} ms | triton {remote['fps']} FPS p50 {remote['latency_ms_p50']} ms "
                      f"p99 {remote['latency_ms_p99']} ms, mean batch {remote['mean_batch']}", flush=True)
        finally:
            server.stop()
    environ = environment()
    environ["versions"]["tritonserver"] = "2.51 (nvidia-pytriton 0.7.0 wheel, CPU, Python backend + ONNX Runtime)"
    return {"what": "triton_scale", "model": f"simplenet, tf_efficientnet_lite0, {args.image_size} px",
            "camera": f"640x480 BGR at {args.fps:g} FPS, live (newest frame kept)", "seconds": args.seconds,
            "setups": {"onnxruntime": "one process, all cameras, batch = cameras (in-process ONNX Runtime, CPU)",
                       "triton": "one process per camera, batch 1, one tritonserver on the same machine "
                                 "(dynamic batching: max 8, preferred 4/8, 2 ms delay)"},
            "environment": environ, "rows": rows,
            "note": "client processes, the server and anything else running share this machine's cores"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--fps", type=float, default=15.0, help="frame rate of each synthetic camera")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window of each set-up")
    parser.add_argument("--warmup", type=float, default=12.0, help="seconds the workers get to load and warm up")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name, kind in (("--bundle", str), ("--backend", str), ("--url", str), ("--seed", int), ("--start-at", float)):
        parser.add_argument(name, type=kind, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.sources = args.sources[0]
        print(json.dumps(worker(args)))
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    result = measure(args)
    if args.json:
        from common import write_json

        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
