"""DiffAD's few-step DDIM loop in PyTorch: the `ddim_step` kernel vs the same update in plain torch ops.

    python benchmarks/ddim_loop.py --device cuda --dtype fp16 --json benchmarks/results/ddim-loop-cuda.json
    python benchmarks/ddim_loop.py --device cpu --dtype fp32 --json benchmarks/results/ddim-loop-cpu.json

The denoiser is DiffAD's at the paper's configuration (random weights: they do not change the time)
on a batch of 4 x 32 x 32 latents (256 px images). Each variant runs the whole loop; the table gives
the median time of one step (denoiser + update) and of the update alone, over --repeats loops after
--warmup. On CUDA the kernel runs on torch's current stream through `edge_ad.postprocess.ddim_step`;
on the CPU the tensors are shared with numpy and the CPU kernel updates them in place.

The CUDA path is unverified until it has run on a GPU (none was lent when this was written).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from common import cpu_name, environment, write_json


def update_torch(z, eps, a_t: float, a_prev: float):
    x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def update_kernel(z, eps, a_t: float, a_prev: float):
    from edge_ad.postprocess import ddim_step

    if z.is_cuda:
        return ddim_step(z, eps.contiguous(), a_t, a_prev, out=z)
    ddim_step(z.numpy(), eps.contiguous().numpy(), a_t, a_prev, out=z.numpy())
    return z


def run_loop(model, cond, plan, update, sync) -> tuple[float, float]:
    """One loop; returns (total ms, update-only ms), timed with device synchronization around each part."""
    import torch

    z = model.start_latent.to(cond).expand_as(cond).contiguous()
    total = upd = 0.0
    for t, a_t, a_prev in zip(plan.timesteps, plan.alpha_bar, plan.alpha_bar_prev):
        sync()
        start = time.perf_counter()
        eps = model.denoise(z, cond, torch.full((cond.shape[0],), float(t), device=cond.device, dtype=cond.dtype))
        sync()
        mid = time.perf_counter()
        z = update(z, eps, a_t, a_prev)
        sync()
        end = time.perf_counter()
        total += end - start
        upd += end - mid
    return total * 1e3 / len(plan), upd * 1e3 / len(plan)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    import torch

    from edge_ad.models.diffad import DiffAD
    from edge_ad.runtime.noise_schedules import ddim_schedule

    if args.device == "cpu" and args.dtype == "fp16":
        raise SystemExit("fp16 is timed on CUDA only; use --dtype fp32 on the CPU")
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    torch.manual_seed(0)
    model = DiffAD().eval().to(args.device, dtype)
    cond = torch.randn(args.batch, *model.latent_shape, device=args.device, dtype=dtype)
    plan = ddim_schedule(args.steps)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rows = []
    with torch.no_grad():
        for name, update in (("torch ops", update_torch), ("ddim_step kernel", update_kernel)):
            for _ in range(args.warmup):
                run_loop(model, cond, plan, update, sync)
            samples = [run_loop(model, cond, plan, update, sync) for _ in range(args.repeats)]
            rows.append({"update": name, "step_ms_p50": statistics.median(s[0] for s in samples),
                         "update_ms_p50": statistics.median(s[1] for s in samples)})
            print(f"{name:18s} step {rows[-1]['step_ms_p50']:.3f} ms, update {rows[-1]['update_ms_p50']:.4f} ms")
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU: {cpu_name()}"
    if args.json:
        write_json(args.json, {"device": device, "dtype": args.dtype, "batch": args.batch, "steps": args.steps,
                               "latent": list(model.latent_shape), "rows": rows,
                               "environment": environment(("edge_ad", "torch"))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
