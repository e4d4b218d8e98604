"""Time the heatmap kernel against the same work done by other libraries, in one run.

CPU: edge_ad's fused kernel vs OpenCV (cv2.resize bilinear + cv2.GaussianBlur 33 taps with reflect
border + max) vs scipy.ndimage (zoom order 1 + gaussian_filter + max), at 28x28 -> 224x224 and
36x36 -> 288x288 (SimpleNet's map sizes), batch 1 and 8. Each result carries the largest difference
from the kernel's maps, to show the three do the same work.

GPU (--device cuda, needs torch with CUDA): the CUDA kernel vs torch ops (F.interpolate + separable
conv2d Gaussian + amax), timed with synchronization, medians of repeated runs.

    python benchmarks/kernels.py --json benchmarks/results/kernels-cpu.json
    python benchmarks/kernels.py --device cuda --json benchmarks/results/kernels-gpu.json
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from common import environment, time_call, write_json

SIZES = ((28, 224), (36, 288))
SIGMA = 4.0


def cpu_cases(batches: tuple[int, ...], repeats: int) -> list[dict]:
    import cv2
    import scipy.ndimage as ndi

    from edge_ad.postprocess import heatmap

    ksize = 2 * int(4 * SIGMA + 0.5) + 1
    rows = []
    for (h, out), n in [(s, b) for s in SIZES for b in batches]:
        raw = np.random.default_rng(0).standard_normal((n, h, h)).astype(np.float32)

        def ours():
            return heatmap(raw, out, sigma=SIGMA)

        def opencv():
            maps = np.empty((n, out, out), np.float32)
            for i in range(n):
                up = cv2.resize(raw[i], (out, out), interpolation=cv2.INTER_LINEAR)
                maps[i] = cv2.GaussianBlur(up, (ksize, ksize), SIGMA, borderType=cv2.BORDER_REFLECT)
            return maps, maps.reshape(n, -1).max(axis=1)

        def scipy_ndimage():
            up = ndi.zoom(raw, (1, out / h, out / h), order=1, grid_mode=True, mode="nearest")
            maps = ndi.gaussian_filter(up, (0, SIGMA, SIGMA), mode="reflect", truncate=4.0)
            return maps, maps.reshape(n, -1).max(axis=1)

        reference = ours()[0]
        reps = repeats if n == 1 else max(20, repeats // 4)
        for name, fn in (("edge_ad", ours), ("opencv", opencv), ("scipy", scipy_ndimage)):
            row = {"impl": name, "in": h, "out": out, "batch": n, **time_call(fn, repeats=reps)}
            row["max_abs_diff_vs_edge_ad"] = float(np.abs(fn()[0] - reference).max())
            rows.append(row)
            print(f"{h}->{out} batch {n} {name:8s} median {row['median_ms']:.3f} ms  "
                  f"(diff {row['max_abs_diff_vs_edge_ad']:.1e})")
    return rows


def gpu_cases(batches: tuple[int, ...], repeats: int) -> list[dict]:
    """Unverified until run on a GPU: CUDA kernel vs torch CUDA ops, same inputs."""
    import torch
    import torch.nn.functional as F

    from edge_ad.postprocess import heatmap

    radius = int(4 * SIGMA + 0.5)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / SIGMA) ** 2)
    taps = (taps / taps.sum()).cuda()
    rows = []
    for (h, out), n in [(s, b) for s in SIZES for b in batches]:
        raw = torch.randn((n, h, h), device="cuda")

        def torch_ops():
            up = F.interpolate(raw[:, None], size=(out, out), mode="bilinear", align_corners=False)
            up = F.pad(up, (radius, radius, radius, radius), mode="replicate")
            up = F.conv2d(up, taps.view(1, 1, 1, -1))
            up = F.conv2d(up, taps.view(1, 1, -1, 1))
            return up[:, 0], up.amax(dim=(1, 2, 3))

        def ours():
            return heatmap(raw, out, sigma=SIGMA)

        reference = ours()[0]
        for name, fn in (("edge_ad_cuda", ours), ("torch_ops", torch_ops)):
            row = {"impl": name, "in": h, "out": out, "batch": n,
                   **time_call(fn, repeats=repeats, sync=torch.cuda.synchronize)}
            # torch's replicate padding differs from reflect only within `radius` of the border.
            row["max_abs_diff_vs_edge_ad"] = float((fn()[0] - reference).abs().max())
            rows.append(row)
            print(f"{h}->{out} batch {n} {name:12s} median {row['median_ms']:.4f} ms")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    env = environment(("edge_ad", "numpy", "opencv-python", "scipy", "torch"))
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: run this on a machine with an NVIDIA GPU", file=sys.stderr)
            return 2
        env["gpu"] = torch.cuda.get_device_name(0)
        rows = gpu_cases(batches, args.repeats)
    else:
        import cv2

        env["opencv_threads"] = cv2.getNumThreads()
        rows = cpu_cases(batches, args.repeats)
    speedups = _speedups(rows)
    for line in speedups:
        print(line["summary"])
    if args.json:
        write_json(args.json, {"device": args.device, "environment": env, "sigma": SIGMA,
                               "rows": rows, "speedups": speedups})
    return 0


def _speedups(rows: list[dict]) -> list[dict]:
    """Median time of each other implementation divided by the edge_ad kernel's, per case."""
    out = []
    for r in rows:
        if r["impl"].startswith("edge_ad"):
            ours = r
            continue
        ratio = r["median_ms"] / ours["median_ms"]
        out.append({"case": f"{r['in']}->{r['out']} batch {r['batch']}", "vs": r["impl"], "speedup": ratio,
                    "summary": f"{r['in']}->{r['out']} batch {r['batch']}: edge_ad is {ratio:.2f}x {r['impl']}"})
    return out


if __name__ == "__main__":
    sys.exit(main())
