"""The measurements of the GPU check (benchmarks/gpu_check.py): heat-map kernel, DDIM update, models.

Each function takes a `Bench` (where and how to time) and returns JSON-ready rows. On a CUDA device
every case is timed two ways, both medians of repeated runs after warm-up:
- wall: one call from Python, synchronized (what an application waits for, launch overhead included);
- graph: `calls` back-to-back calls captured in one CUDA graph, timed with CUDA events per replay
  (the device's own time, what the heat-map kernel costs inside an engine's captured frame).
On the CPU (the check's smoke mode, run by `make test`) only wall times exist.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

SIGMA = 4.0


@dataclass
class Bench:
    """Where the cases run, and how many times each is repeated."""

    torch: object
    device: str            # "cuda" or "cpu"
    iters: int = 100
    warmup: int = 10
    graph_calls: int = 20
    graph_replays: int = 30

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def wall_ms(self, fn: Callable[[], object], iters: int | None = None) -> dict:
        """Median and p99 of synchronized single calls, in milliseconds."""
        for _ in range(self.warmup):
            fn()
        self.sync()
        samples = []
        for _ in range(iters or self.iters):
            start = time.perf_counter()
            fn()
            self.sync()
            samples.append((time.perf_counter() - start) * 1e3)
        samples.sort()
        return {"median_ms": statistics.median(samples), "p99_ms": samples[min(len(samples) - 1, int(0.99 * len(samples)))],
                "repeats": len(samples)}

    def graph_ms(self, fn: Callable[[], object]) -> float | None:
        """Device time of one call: `graph_calls` calls captured in a CUDA graph, replays timed with
        events, median over `graph_replays`, divided by `graph_calls`. None on the CPU."""
        if not self.cuda:
            return None
        torch = self.torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(self.graph_calls):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.graph_replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / self.graph_calls)
        del graph
        return statistics.median(times)


# ------------------------------------------------------------------------------ device bandwidth


def copy_bandwidth(bench: Bench, mib: int = 2048) -> dict:
    """The device's achievable bandwidth: a large device-to-device copy, bytes read + written."""
    torch = bench.torch
    src = torch.empty(mib * 2 ** 20, dtype=torch.uint8, device=bench.device).random_()
    dst = torch.empty_like(src)
    timing = bench.wall_ms(lambda: dst.copy_(src), iters=20)
    moved = 2 * src.numel()
    del src, dst
    return {"bytes": moved, **timing, "gb_per_s": moved / (timing["median_ms"] * 1e-3) / 1e9}


# ------------------------------------------------------------------------------------- heat map


def heatmap_cases(bench: Bench, cases: list[tuple[int, int, int]], peak_gb_s: float | None) -> list[dict]:
    """edge_ad's fused heat-map kernel vs the same work in torch ops (bilinear F.interpolate,
    separable 33-tap Gaussian conv2d, amax), per (batch, raw size, output size)."""
    rows = []
    for n, h, out in cases:
        raw = bench.torch.randn((n, h, h), device=bench.device)
        ours, theirs = _heatmap_pair(bench, raw, out)
        diff = _interior_diff(bench, ours()[0], theirs()[0])
        row = {"batch": n, "in": h, "out": out, "max_abs_diff_interior": diff}
        for name, fn in (("edge_ad", ours), ("torch_ops", theirs)):
            row[name] = {**bench.wall_ms(fn), "graph_ms": bench.graph_ms(fn)}
        row["speedup_wall"] = row["torch_ops"]["median_ms"] / row["edge_ad"]["median_ms"]
        if bench.cuda:
            row["speedup_graph"] = row["torch_ops"]["graph_ms"] / row["edge_ad"]["graph_ms"]
            row.update(_bandwidth(n, h, out, row["edge_ad"]["graph_ms"], peak_gb_s))
        rows.append(row)
        print(f"  heatmap b{n} {h}->{out}: edge_ad {row['edge_ad']['median_ms']:.4f} ms, torch ops "
              f"{row['torch_ops']['median_ms']:.4f} ms wall ({row['speedup_wall']:.2f}x)"
              + (f"; graph {row['edge_ad']['graph_ms'] * 1e3:.1f} vs {row['torch_ops']['graph_ms'] * 1e3:.1f} us "
                 f"({row['speedup_graph']:.2f}x), {row['achieved_gb_s_min_bytes']:.0f} GB/s" if bench.cuda else ""),
              flush=True)
    return rows


def _heatmap_pair(bench: Bench, raw, out: int) -> tuple[Callable, Callable]:
    import torch.nn.functional as F

    from edge_ad.postprocess import heatmap

    torch = bench.torch
    radius = int(4 * SIGMA + 0.5)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / SIGMA) ** 2)
    taps = (taps / taps.sum()).to(bench.device)
    row_taps, col_taps = taps.view(1, 1, 1, -1), taps.view(1, 1, -1, 1)
    kernel_input = raw if bench.cuda else raw.numpy()

    def ours():
        return heatmap(kernel_input, out, sigma=SIGMA, threads=0 if bench.cuda else 1)

    def torch_ops():
        up = F.interpolate(raw[:, None], size=(out, out), mode="bilinear", align_corners=False)
        up = F.pad(up, (radius, radius, radius, radius), mode="replicate")
        up = F.conv2d(F.conv2d(up, row_taps), col_taps)
        return up[:, 0], up.amax(dim=(1, 2, 3))

    return ours, torch_ops


def _interior_diff(bench: Bench, a, b) -> float:
    """Largest difference away from the border, where replicate (torch) and reflect (edge_ad)
    padding agree; it shows that both sides compute the same maps."""
    a = bench.torch.as_tensor(a).to(b.device)
    r = int(4 * SIGMA + 0.5) + 1
    return float((a[:, r:-r, r:-r] - b[:, r:-r, r:-r]).abs().max())


def _bandwidth(n: int, h: int, out: int, graph_ms: float, peak_gb_s: float | None) -> dict:
    """Bytes the kernel must move (raw maps read once, full maps and scores written once) and the bytes
    it does move (plus its N x h x out intermediate, written and read back), over its device time."""
    least = 4 * n * h * h + 4 * n * out * out + 4 * n
    moved = least + 2 * 4 * n * h * out
    seconds = graph_ms * 1e-3
    row = {"bytes_min": least, "bytes_with_intermediate": moved,
           "achieved_gb_s_min_bytes": least / seconds / 1e9, "achieved_gb_s_all_bytes": moved / seconds / 1e9}
    if peak_gb_s:
        row["fraction_of_copy_bandwidth"] = row["achieved_gb_s_all_bytes"] / peak_gb_s
    return row


# ---------------------------------------------------------------------------------- DDIM update


def ddim_cases(bench: Bench, shapes: list[tuple[int, ...]], dtype: str) -> list[dict]:
    """The fused `ddim_step` kernel vs the same update in torch ops, one step on a latent."""
    from edge_ad.postprocess import ddim_step

    torch = bench.torch
    rows = []
    for shape in shapes:
        z = torch.randn(shape, device=bench.device, dtype=getattr(torch, dtype))
        eps = torch.randn_like(z)
        a_t, a_prev = 0.3, 0.6
        want = (a_prev ** 0.5 * (z - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5 + (1 - a_prev) ** 0.5 * eps)

        def ops():
            x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
            return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps

        def kernel():
            if bench.cuda:
                return ddim_step(z, eps, a_t, a_prev)
            return torch.from_numpy(ddim_step(z.numpy(), eps.numpy(), a_t, a_prev))

        row = {"shape": list(shape), "dtype": dtype,
               "max_abs_diff": float((kernel().float() - want.float()).abs().max())}
        for name, fn in (("ddim_step", kernel), ("torch_ops", ops)):
            row[name] = {**bench.wall_ms(fn), "graph_ms": bench.graph_ms(fn)}
        row["speedup_wall"] = row["torch_ops"]["median_ms"] / row["ddim_step"]["median_ms"]
        if bench.cuda:
            row["speedup_graph"] = row["torch_ops"]["graph_ms"] / row["ddim_step"]["graph_ms"]
        rows.append(row)
        print(f"  ddim {tuple(shape)} {dtype}: kernel {row['ddim_step']['median_ms']:.4f} ms, torch ops "
              f"{row['torch_ops']['median_ms']:.4f} ms ({row['speedup_wall']:.2f}x wall)", flush=True)
    return rows


# --------------------------------------------------------------------------------------- models


class EagerFp32:
    """The model as trained, eager FP32 (TF32 off on CUDA), with the same post-processing as the
    runtime: the heat-map kernel on the device's raw maps, scores back to the host."""

    def __init__(self, bench: Bench, model, spec: dict, steps: int | None) -> None:
        from edge_ad.postprocess import HeatmapSpec
        from edge_ad.training.adapter import UInt8Input

        self.bench, self.spec, self.steps = bench, HeatmapSpec.from_meta(spec), steps
        self.module = UInt8Input(model, model.mean, model.std).eval().to(bench.device)

    def scores(self, batch: np.ndarray) -> np.ndarray:
        torch = self.bench.torch
        with torch.inference_mode():
            images = torch.from_numpy(batch).to(self.bench.device)
            if self.steps is None:
                raw = self.module(images)
            else:
                raw = self.module.model(self.module.normalize(images), steps=self.steps)
            raw = raw.float().contiguous()
            if not self.bench.cuda:
                raw = raw.numpy()
            _, scores = self.spec.apply(raw, threads=1)
        return scores.cpu().numpy() if self.bench.cuda else scores


def tf32_off(torch) -> None:
    """FP32 means FP32: no TF32 in cuBLAS or cuDNN (both default to allowing some)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def model_rows(bench: Bench, model, bundle, batches: list[int], steps: int | None) -> list[dict]:
    """Eager FP32 vs edge_ad's torch backend (FP16 autocast + CUDA graphs, and without graphs), per batch;
    parity of the scores between them and against ONNX Runtime on the CPU."""
    import edge_ad

    name = bundle.model_name
    size = bundle.meta["geometry"]["crop"][0]
    eager = EagerFp32(bench, model, bundle.meta["heatmap"], steps)
    variants = {"eager-fp32": eager.scores}
    kind = "torch-cuda" if bench.cuda else "torch-cpu"
    graphs = edge_ad.load(bundle.path, backend=kind, steps=steps)
    variants[f"{kind}-fp16-graphs" if bench.cuda else kind] = lambda b: graphs.heatmaps(b, maps=False)[1]
    if bench.cuda:
        from edge_ad.runtime import Detector
        from edge_ad.training.torch_backend import TorchBackend

        plain = edge_ad.load(bundle.path, backend=kind, steps=steps, cuda_graph=False)
        variants["torch-cuda-fp16"] = lambda b: plain.heatmaps(b, maps=False)[1]
        # the backend's options off by default: channels-last memory and cuDNN's autotuner
        tuned = Detector(bundle, TorchBackend(bundle, device="cuda", steps=steps, channels_last=True, autotune=True))
        variants["torch-cuda-fp16-graphs-channels-last"] = lambda b: tuned.heatmaps(b, maps=False)[1]
    rows = []
    for n in batches:
        batch = np.random.default_rng(n).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        scores = {k: fn(batch) for k, fn in variants.items()}
        for k, fn in variants.items():
            timing = bench.wall_ms(lambda: fn(batch), iters=max(20, bench.iters // (2 if n > 1 else 1)))
            rows.append({"model": name, "variant": k, "batch": n, "steps": steps, "input": size,
                         "fps": n * 1e3 / timing["median_ms"], **timing,
                         "parity_vs_eager": _parity(scores["eager-fp32"], scores[k])})
        print(f"  {name} b{n}" + (f" steps {steps}" if steps else "") + ": "
              + ", ".join(f"{r['variant']} {r['fps']:.1f} FPS" for r in rows if r["batch"] == n), flush=True)
    graphs.close()
    return rows


def ort_parity(bundle, reference: np.ndarray, batch: np.ndarray, steps: int | None) -> dict:
    """Scores of the bundle's ONNX graph on ONNX Runtime's CPU provider vs the given reference scores."""
    import edge_ad

    with edge_ad.load(bundle.path, backend="onnxruntime-cpu", steps=steps) as ort:
        return _parity(ort.heatmaps(batch, maps=False)[1], reference)


def _parity(reference: np.ndarray, got: np.ndarray) -> dict:
    """Largest score difference, relative to the reference's range, and whether the order agrees."""
    reference, got = np.asarray(reference, np.float64), np.asarray(got, np.float64)
    spread = float(np.ptp(reference)) or float(np.abs(reference).max()) or 1.0
    order = len(reference) < 2 or bool(np.array_equal(np.argsort(reference), np.argsort(got)))
    return {"max_abs_diff": float(np.abs(reference - got).max()), "max_diff_over_range": float(np.abs(reference - got).max()) / spread,
            "same_order": order, "finite": bool(np.isfinite(got).all())}
