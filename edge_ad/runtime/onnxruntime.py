"""ONNX Runtime backend: the CPU provider everywhere, the CUDA provider when a CUDA device is present.

The CUDA-provider path is unverified: no GPU has run it yet (it is only chosen when a device exists,
and the session's active providers are checked, not the advertised ones)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def gpu_present() -> bool:
    """A CUDA driver and device exist (asked through the kernels' statically linked CUDA runtime,
    or the driver library when the kernels were built without CUDA)."""
    from edge_ad import _kernels

    if _kernels.has_cuda:
        return _kernels.cuda_device_count() > 0
    import ctypes.util

    return ctypes.util.find_library("cuda") is not None


def ort_session(model_path: Path, *, device: str = "auto", threads: int | None = None, spinning: bool = False):
    """An InferenceSession on the CPU, or on CUDA when asked for or (device="auto") when a GPU is present;
    returns (session, "cpu" | "cuda") by the provider the session really got."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # ORT's worker threads otherwise keep spinning after run() returns and starve the host-side
    # work that follows (resize, the heatmap kernel's OpenMP threads): on 2 cores that halved the
    # end-to-end frame rate of SimpleNet at 288 px (measured 50 -> 74 FPS, benchmarks/results/fps-cpu.json).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    providers = ["CPUExecutionProvider"]
    if device == "cuda" or (device == "auto" and gpu_present()):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    session = ort.InferenceSession(str(model_path), options, providers=providers)
    active = session.get_providers()
    # onnxruntime-gpu lists CUDA even where its libraries or a GPU are missing, and then falls
    # back to the CPU: what counts is the provider the session ended up with.
    if device == "cuda" and "CUDAExecutionProvider" not in active:
        raise RuntimeError("ONNX Runtime's CUDA provider is not usable here (no GPU, or CUDA/cuDNN "
                           "libraries missing); use device='cpu' or backend='auto'")
    log.info("ONNX Runtime session for %s on providers %s", Path(model_path).name, active)
    return session, "cuda" if "CUDAExecutionProvider" in active else "cpu"


class OrtBackend:
    """infer(uint8 N x H x W x 3) -> float32 raw maps N x 1 x h x w.

    `feeds` are the graph's other inputs, fixed for the backend's life (SPR's seeded noise)."""

    name = "onnxruntime"

    def __init__(self, model_path: Path, *, device: str = "auto", threads: int | None = None,
                 spinning: bool = False, feeds: dict[str, np.ndarray] | None = None) -> None:
        self.session, self.device = ort_session(model_path, device=device, threads=threads, spinning=spinning)
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        first = self.session.get_inputs()[0].shape[0]
        self.max_batch = first if isinstance(first, int) else None       # None: a dynamic batch axis
        self.feeds = dict(feeds or {})
        wanted = {i.name for i in self.session.get_inputs()[1:]}
        if wanted != set(self.feeds):
            raise ValueError(f"{Path(model_path).name} takes inputs {sorted(wanted)} besides the images, "
                             f"the bundle's meta.json provides {sorted(self.feeds)}; re-export the bundle")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: batch, **self.feeds})[0]
