"""Frames per second of each model x backend x batch size, beside the papers' timings.

Modes (timed by edge_ad.runtime.bench, the code of `edge-ad bench`):
- model:  a prepared uint8 batch in, image scores out: the network and the heatmap kernel, on the GPU
  for every GPU backend (eager FP32 included), on the CPU kernel otherwise: the same work in every row;
- stream: end to end, decoded BGR camera frames in (640 x 480), Result objects out: resize + crop,
  inference, the heatmap kernel and the calibrated decision.
Backends: torch (PyTorch eager FP32 on the model as specified, on the GPU when there is one: the
papers' setting; TF32 off in cuBLAS and cuDNN, so FP32 means FP32), torch-folded (eager on the folded
graph that the bundle holds), torch-cuda-fp16 (edge_ad's torch backend: FP16 autocast, CUDA graphs,
the heatmap kernel; GPU only), onnxruntime (the bundle), tensorrt (the bundle's FP16 engine, when
TensorRT is installed).
Timings are medians of --iters timed calls after --warmup untimed ones; FPS = batch / median.

    python benchmarks/fps.py --models simplenet --json benchmarks/results/fps-cpu.json
    python benchmarks/fps.py --bundle runs/demo/bundle          # time an exported bundle

Without --bundle each model is built at its default configuration (untrained heads, pretrained
backbone; weights do not change the timing) and exported to a temporary bundle; `--config cpu` builds
the smaller networks of the CPU training budget instead. Diffusion bundles (DiffAD) are timed at each
of `--steps` DDIM step counts (rows carry `steps`; None for models without a loop):

    python benchmarks/fps.py --models spr,diffad --steps 1,5,10 --batches 1 MKD and UniAD ask for
their papers' networks (VGG-16, EfficientNet-B4) and fall back to the offline EfficientNet-Lite0 when
those weights cannot be had; the table's backbone column says which one was timed. torch-folded applies
only to models that fold (SimpleNet).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from common import write_json
from papers import PAPERS, vs_paper

from edge_ad.postprocess import HeatmapSpec
from edge_ad.runtime.backend import BaseBackend
from edge_ad.runtime.bench import cpu_name, environment, measure, package_version


@contextmanager
def fp32_exact(torch):
    """TF32 off in cuBLAS and cuDNN while the block runs (cuDNN allows TF32 by default), then restored."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class TorchBackend(BaseBackend):
    """A Detector backend running a PyTorch module (eager, FP32 with TF32 off, no grad) on uint8 NHWC
    batches, on the CPU or a CUDA GPU (the papers' setting); `steps` goes to a diffusion model's forward.
    On CUDA the heatmap kernel runs on the device's raw maps, as it does in the FP16 rows."""

    name = "torch-eager"

    def __init__(self, module, spec: HeatmapSpec, steps: int | None = None, device: str = "cpu") -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        self.spec, self.steps = spec, steps
        self.device_heatmap = self.device.type == "cuda"

    def _raw(self, batch: np.ndarray):
        with self.torch.inference_mode(), fp32_exact(self.torch):
            images = self.torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            if self.steps is None:
                return self.module(images).float().contiguous()
            return self.module.model(self.module.normalize(images), steps=self.steps).float().contiguous()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._raw(batch).cpu().numpy()

    def infer_heatmap(self, batch: np.ndarray, *, maps: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """The heatmap kernel on the device's raw maps; scores (and maps when asked) back to the host."""
        with self.torch.inference_mode():
            out, scores = self.spec.apply(self._raw(batch), threads=1)
            return (out.cpu().numpy() if maps else None), scores.cpu().numpy()


def build_bundle(name: str, out: Path, image_size: int | None, config: str = "paper"):
    """A model of `name` in its paper's configuration (or its CPU budget's) and its exported bundle."""
    import torch

    from edge_ad.models import create_model, training_defaults
    from edge_ad.runtime.preprocess import Geometry
    from edge_ad_export.exporter import export_model

    torch.manual_seed(0)
    kwargs = training_defaults(name, "cpu").get("model_kwargs", {}) if config == "cpu" else {}
    if image_size is not None:
        kwargs = {**kwargs, "image_size": image_size, "resize_size": image_size * 8 // 7}
    model = create_model(name, **kwargs).eval()
    size, resize = model.config["image_size"], model.config["resize_size"]
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    calibration = {"image_threshold": 1.0, "image_norm": [0.0, 2.0], "pixel_threshold": 1.0, "pixel_norm": [0.0, 2.0],
                   "normal_images": 0, "note": "uncalibrated: timing only"}
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / f"{name}.pt"                # for the torch backends of edge_ad.runtime
    torch.save({"model": model.state_dict()}, checkpoint)
    bundle = export_model(model, out / name, name=name, geometry=Geometry((resize, resize), (size, size)),
                          calibration=calibration, images=images, checkpoint=checkpoint)
    return model, bundle


def load_bundle_model(bundle_path: Path):
    import torch

    from edge_ad.bundle import read_bundle
    from edge_ad.models import create_model

    bundle = read_bundle(bundle_path)
    model = create_model(bundle.model_name, **{**bundle.meta["config"], "pretrained": False})
    state = torch.load(bundle.file("checkpoint.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.eval(), bundle


def backbone_of(model) -> str:
    config = model.config
    return config.get("backbone") or config.get("source") or "none (from scratch)"


def time_rows(model_name: str, detector, backend_name: str, batch: int, iters: int, warmup: int) -> list[dict]:
    """A model row and a stream row, timed by `edge-ad bench`'s code: model = prepared batch in, scores out
    (the network and the heatmap kernel, on the device for GPU backends); stream = camera frames in."""
    timing = measure(detector, batch, iters=iters, warmup=warmup)
    precision = "fp16" if backend_name in ("torch-cuda-fp16", "tensorrt") else "fp32"
    return [{"model": model_name, "backend": backend_name, "precision": precision, "batch": batch, "fps": t["fps"],
             "latency_ms_p50": t["p50_ms"], "latency_ms_p99": t["p99_ms"], "mode": mode, "input": t["input"]}
            for mode, t in (("model", timing["model"]), ("stream", timing["e2e"]))]


def backends_for(model, bundle, wanted: list[str], steps: int | None = None, device: str = "cpu"):
    """torch / torch-folded: eager FP32 on `device`; torch-cuda-fp16: edge_ad's torch backend (autocast,
    CUDA graphs, heatmap kernel); onnxruntime; tensorrt (the bundle's FP16 engine, built on first use)."""
    from edge_ad.models.base import AnomalyModel
    from edge_ad.runtime import Detector, load
    from edge_ad.runtime.tensorrt import tensorrt_missing
    from edge_ad.training.adapter import UInt8Input

    spec = HeatmapSpec.from_meta(bundle.meta["heatmap"])
    for name in wanted:
        if name == "torch":
            yield name, Detector(bundle, TorchBackend(UInt8Input(model, model.mean, model.std), spec, steps, device))
        elif name == "torch-folded":
            if type(model).folded is not AnomalyModel.folded:        # only models that fold (SimpleNet)
                module = UInt8Input(model.folded(), model.mean, model.std)
                yield name, Detector(bundle, TorchBackend(module, spec, None, device))
        elif name == "torch-cuda-fp16":
            if device != "cuda":
                print("torch-cuda-fp16: no CUDA device; skipped", file=sys.stderr)
            else:
                yield name, load(bundle.path, backend="torch-cuda", steps=steps)
        elif name == "onnxruntime":
            yield name, load(bundle.path, backend="onnxruntime", steps=steps)
        elif name == "tensorrt":
            reason = tensorrt_missing()
            if reason:
                print(f"tensorrt: {reason}; skipped", file=sys.stderr)
            else:
                yield name, load(bundle.path, backend="tensorrt", steps=steps, batch=(1, 1, 8))
        else:
            raise SystemExit(f"unknown backend {name!r}")


def print_table(rows: list[dict], device: str) -> None:
    print(f"\ndevice: {device}")
    print(f"{'model':10s} {'backbone':22s} {'size':>4s} {'steps':>5s} {'backend':13s} {'mode':6s} {'batch':>5s} {'FPS':>8s} "
          f"{'p50 ms':>8s} {'p99 ms':>8s}  vs paper")
    for r in rows:
        paper = vs_paper(r["model"], r["fps"], r["steps"])
        ratio = f"{paper['ratio']:.2f}x of {paper['paper_fps']:.0f} FPS ({paper['hardware']})" if paper else "-"
        if paper and paper.get("note"):
            ratio += f" ({paper['note']})"
        steps = "-" if r["steps"] is None else str(r["steps"])
        print(f"{r['model']:10s} {r['backbone']:22s} {r['input_size']:4d} {steps:>5s} {r['backend']:13s} {r['mode']:6s} {r['batch']:5d} {r['fps']:8.1f} "
              f"{r['latency_ms_p50']:8.2f} {r['latency_ms_p99']:8.2f}  {ratio}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="simplenet")
    parser.add_argument("--backends", default="torch,torch-folded,torch-cuda-fp16,onnxruntime,tensorrt")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the torch backends run (auto: CUDA when present)")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--image-size", type=int, default=None, help="crop size (default: the model's)")
    parser.add_argument("--config", choices=("paper", "cpu"), default="paper",
                        help="network sizes: the paper's, or the CPU training budget's (smaller)")
    parser.add_argument("--steps", default="5", help="DDIM step counts to time for diffusion bundles (DiffAD)")
    parser.add_argument("--bundle", help="time this exported bundle instead of building models")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", help="write {'device', 'rows'} here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    batches = [int(b) for b in args.batches.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle:
            targets = [load_bundle_model(Path(args.bundle))]
        else:
            targets = [build_bundle(m.strip(), Path(tmp), args.image_size, args.config) for m in args.models.split(",")]
        for model, bundle in targets:
            ddim = "pipeline" in bundle.meta
            for steps in ([int(s) for s in args.steps.split(",")] if ddim else [None]):
                for backend_name, detector in backends_for(model, bundle, backends, steps, device):
                    for batch in batches:
                        new = time_rows(bundle.model_name, detector, backend_name, batch, args.iters, args.warmup)
                        for row in new:
                            row.update(backbone=backbone_of(model), input_size=model.config["image_size"],
                                       steps=steps, config=args.config if not args.bundle else "bundle")
                        rows += new
                        print(f"{bundle.model_name} {backend_name} batch {batch}" + (f" steps {steps}" if ddim else "")
                              + f": {rows[-2]['fps']:.1f} FPS model, {rows[-1]['fps']:.1f} FPS stream", flush=True)
    described = f"CPU: {cpu_name()}, {torch.get_num_threads()} threads"
    if device == "cuda":
        described = f"GPU: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}); {described}"
    print_table(rows, described)
    if args.json:
        env = environment()
        env["versions"]["timm"] = package_version("timm")
        write_json(args.json, {"device": described, "environment": env, "papers": PAPERS, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
