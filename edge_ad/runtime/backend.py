"""The one interface every inference backend offers the Detector, and a base class with its defaults.

A backend takes what the camera gives, prepared: uint8 N x H x W x 3 RGB at the model's input size,
and returns the model's raw anomaly maps, float32 N x 1 x h x w (`infer`). The post-processing
(up-sampling, blur, scores) is the heat-map kernel's, the same for every backend: the Detector runs it
on the host, unless the backend says it does it on the device (`device_heatmap`), as TensorRT and
torch on CUDA do; then `infer_heatmap` returns the full-size maps (or None) and the scores, and only
those cross to the host. `max_batch` is the largest batch one call takes (a TensorRT profile's max;
None: any), `close()` frees what the backend holds. A new backend is one module with a class like
this and one `register_backend` call (edge_ad.runtime.registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from edge_ad.bundle import Bundle
    from edge_ad.runtime.ddim_plan import DdimPlan

__all__ = ["Backend", "BackendFactory", "BaseBackend", "LoadOptions"]


@runtime_checkable
class Backend(Protocol):
    """What the Detector calls, and nothing else."""

    name: str                       # the registry's name: "onnxruntime", "tensorrt", "torch", "triton"
    max_batch: int | None           # the largest batch one call takes; None: any
    device_heatmap: bool            # True: call infer_heatmap, the maps never leave the device

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Prepared uint8 N x H x W x 3 -> raw maps, float32 N x 1 x h x w, on the host."""
        ...

    def infer_heatmap(self, batch: np.ndarray, *, maps: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """Prepared batch -> (full-size maps N x H x W or None when `maps` is False, scores N), post-processed
        on the device. Only called when `device_heatmap` is True."""
        ...

    def close(self) -> None:
        """Free sessions, engines, device memory."""
        ...


class BaseBackend:
    """Defaults for a backend that returns raw maps to the host: any batch, no device heat map,
    nothing to free; a context manager. Subclasses set `name` and implement `infer`."""

    name: str = "unnamed"
    max_batch: int | None = None
    device_heatmap: bool = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement infer(batch)")

    def infer_heatmap(self, batch: np.ndarray, *, maps: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        raise NotImplementedError(f"backend {self.name!r} post-processes on the host: call infer() and the "
                                  "heat-map kernel (Detector.heatmaps does)")

    def close(self) -> None:
        """Nothing to free by default."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class LoadOptions:
    """What `edge_ad.load` resolved for a backend's factory: the device the backend name asks for
    ("auto", "cpu", "cuda"), and the user's options. `plan` is set for diffusion bundles (resolved
    once from the bundle and the user's `steps`/`seed`); `seed` is also the seed of a single graph's
    noise inputs (SPR's perturbations)."""

    device: str = "auto"
    threads: int | None = None
    seed: int | None = None
    plan: "DdimPlan | None" = None
    batch: tuple[int, int, int] = (1, 1, 8)
    cuda_graph: bool = True
    build_engine: bool = True
    triton_url: str | None = None
    precision: str | None = None         # edge_ad.runtime.precision: None = the backend's default


# A backend module's constructor for the registry: (the read bundle, the resolved options) -> Backend.
BackendFactory = Callable[["Bundle", LoadOptions], Backend]
