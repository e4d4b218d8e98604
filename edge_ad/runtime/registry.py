"""The backend registry: a name -> how to build the backend, which library it needs, which extra installs it.

A new backend is one module with a factory `(bundle, LoadOptions) -> Backend` and one `register_backend`
call. Factories are named by lazy "module:attribute" strings (edge_ad.runtime.lazy): nothing here
imports a backend module, an inference library or torch until a user asks for that backend; the
torch backend lives on the training side (edge_ad/training/torch_backend.py) and is reached only so.
An alias ("onnxruntime-cpu", "torch-cuda") is the same factory with the device fixed.

`resolve("auto")`: TensorRT when it imports and a CUDA GPU is present; else, with a CUDA GPU, ONNX Runtime
(on CUDA when its CUDA provider works); else, on the CPU, OpenVINO with its f32 hint where it is installed
and the CPU is x86-64 (`openvino_for_cpu` says why), else ONNX Runtime. A backend whose library is not
installed is refused with the `pip install "edge_ad[extra]"` that brings it.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from edge_ad.runtime.backend import Backend, BackendFactory, LoadOptions
from edge_ad.runtime.devices import gpu_present, installed, tensorrt_missing
from edge_ad.runtime.lazy import check_ref, import_ref

if TYPE_CHECKING:
    from edge_ad.bundle import Bundle

__all__ = ["BackendEntry", "BackendUnavailable", "backend_names", "get_backend", "openvino_for_cpu", "register_backend",
           "resolve"]

PIPELINES = ("single", "latent_ddim")


class BackendUnavailable(RuntimeError):
    """The backend's inference library is not installed here; the message says which extra brings it."""


@dataclass(frozen=True)
class BackendEntry:
    """One registered name: its factory, the device it fixes, the modules it needs, the extra that
    installs them, and the bundle pipelines it runs. `precision`: the one used when the user names none
    (set on the entry `resolve("auto")` returns for OpenVINO: "fp32"), else the backend's own default."""

    name: str
    factory: BackendFactory | str
    device: str = "auto"
    requires: tuple[str, ...] = ()
    extra: str | None = None
    pipelines: tuple[str, ...] = PIPELINES
    precision: str | None = None

    def missing(self) -> str | None:
        """Why this backend's library cannot be imported here (with the extra to install), or None."""
        absent = [m for m in self.requires if not installed(m)]
        return f"backend {self.name!r} needs {', '.join(absent)}, which is not installed{self._how()}" if absent else None

    def _how(self) -> str:
        return f': pip install "edge_ad[{self.extra}]"' if self.extra else ""

    def build_factory(self) -> BackendFactory:
        return import_ref(self.factory) if isinstance(self.factory, str) else self.factory

    def open(self, bundle: "Bundle", options: LoadOptions) -> Backend:
        """The backend for a read bundle. A required library that is present but fails to import (a broken
        or partial install) is a BackendUnavailable naming the extra, like a missing one."""
        if options.precision is None and self.precision is not None:
            options = replace(options, precision=self.precision)
        try:
            return self.build_factory()(bundle, options)
        except ImportError as err:
            if (err.name or "").split(".")[0] not in self.requires:
                raise
            raise BackendUnavailable(f"backend {self.name!r} cannot import {err.name} ({err}){self._how()}") from err


_REGISTRY: dict[str, BackendEntry] = {}


def register_backend(name: str, factory: BackendFactory | str, *, requires: tuple[str, ...] = (),
                     extra: str | None = None, device: str = "auto", pipelines: tuple[str, ...] = PIPELINES,
                     aliases: dict[str, dict] | None = None) -> BackendEntry:
    """Register `name` (and its `aliases`: alias -> fields that differ, e.g. {"device": "cuda", "extra":
    "gpu"}). `factory` is a callable or a lazy "module:attribute" string; a name taken twice is an error."""
    if isinstance(factory, str):
        check_ref(factory)
    entry = BackendEntry(name, factory, device, tuple(requires), extra, tuple(pipelines))
    entries = [entry] + [replace(entry, name=alias, **fields) for alias, fields in (aliases or {}).items()]
    taken = [e.name for e in entries if e.name in _REGISTRY or e.name == "auto"]
    if taken:
        raise ValueError(f"backend name(s) {', '.join(taken)} already registered")
    for e in entries:
        _REGISTRY[e.name] = e
    return entry


def backend_names() -> tuple[str, ...]:
    """"auto" and every registered name, in registration order."""
    return ("auto", *_REGISTRY)


def get_backend(name: str) -> BackendEntry:
    """The entry of a registered name ("auto" is resolved first); ValueError listing the choices."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; use one of {', '.join(backend_names())}")
    return _REGISTRY[name]


def openvino_for_cpu() -> bool:
    """Whether `auto` runs on OpenVINO rather than ONNX Runtime on a box without a CUDA GPU: where OpenVINO
    is installed and the CPU is x86-64. `edge_ad.load` then times OpenVINO and ONNX Runtime on the bundle's
    FP32 and INT8 graphs and OpenVINO's bf16 hint, and keeps the fastest whose reduced precision passes the
    bundle's verdict set on this CPU (edge_ad/runtime/auto_cpu.py; the entry's own precision is f32). ARM
    CPUs stay on ONNX Runtime (not measured). Measured (benchmarks/results/cpu-peers.json, 2-core AMD EPYC):
    OpenVINO is not faster on every graph (SPR: its f32 hint 0.7x ONNX Runtime), and bf16 or INT8 can keep
    the verdicts and lose AUROC, which is why each is checked rather than assumed."""
    return installed("openvino") and platform.machine().lower() in ("x86_64", "amd64")


def _auto() -> BackendEntry:
    """The entry `auto` picks here (its library possibly missing: resolve says what to install)."""
    if tensorrt_missing() is None:
        return get_backend("tensorrt")
    if not gpu_present() and openvino_for_cpu():
        return replace(get_backend("openvino"), precision="fp32")
    entry = get_backend("onnxruntime")
    if entry.missing() and installed("openvino"):       # the only library here: OpenVINO, on any CPU
        return replace(get_backend("openvino"), precision="fp32")
    return entry


def resolve(name: str) -> BackendEntry:
    """The entry that will run: "auto" chosen for this machine, any name checked for its library."""
    if name == "auto":
        entry = _auto()
        if entry.missing():
            trt_reason = tensorrt_missing()
            why = f"; TensorRT is installed but cannot run here: {trt_reason}" if installed("tensorrt") else ""
            raise BackendUnavailable('no usable inference library: pip install "edge_ad[cpu]" (ONNX Runtime on the '
                                     'CPU), "edge_ad[gpu]" (ONNX Runtime with CUDA, x86-64), "edge_ad[openvino]" '
                                     '(OpenVINO, Intel and AMD CPUs) or "edge_ad[tensorrt]" (TensorRT + cuda-python, '
                                     f'on an NVIDIA GPU){why}')
        return entry
    entry = get_backend(name)
    reason = entry.missing()
    if reason:
        raise BackendUnavailable(reason)
    return entry


register_backend("tensorrt", "edge_ad.runtime.tensorrt:open_tensorrt", requires=("tensorrt",), extra="tensorrt",
                 device="cuda")
register_backend("onnxruntime", "edge_ad.runtime.onnxruntime:open_onnxruntime", requires=("onnxruntime",),
                 extra="cpu", aliases={"onnxruntime-cpu": {"device": "cpu"},
                                       "onnxruntime-cuda": {"device": "cuda", "extra": "gpu"}})
register_backend("openvino", "edge_ad.runtime.openvino:open_openvino", requires=("openvino",), extra="openvino",
                 aliases={"openvino-cpu": {"device": "cpu"}, "openvino-gpu": {"device": "gpu"}})
register_backend("torch", "edge_ad.training.torch_backend:open_torch", requires=("torch",), extra="train",
                 aliases={"torch-cpu": {"device": "cpu"}, "torch-cuda": {"device": "cuda"}})
register_backend("triton", "edge_ad.runtime.triton_client:open_triton", requires=("tritonclient",),
                 extra="triton", pipelines=("single",))
