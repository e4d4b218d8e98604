"""Where a bundle's TensorRT engines live and which one fits this device. No TensorRT import here.

A plan runs only on the TensorRT version, GPU compute capability and platform it was built for, so
each engine is stored under a name that says all of that plus the precision and the batch profile:

    engines/<graph>.<gpu>.sm<cc>.trt<version>.<platform>.<precision>.b<min>-<max>.engine

e.g. `engines/model.nvidia-jetson-agx-orin.sm87.trt10.3.0.aarch64.fp16.b1-8.engine` (`.int8.` for one built
from the bundle's Q/DQ INT8 graph, `edge-ad export --int8`); meta.json's
`engines` maps each name to what it was built for. A bundle can carry engines for several devices,
and loading picks the one of this device. An engine is added to the bundle when the bundle directory
is writable, else to the user's cache (`$EDGE_AD_CACHE`, default ~/.cache/edge_ad/engines/<bundle
digest>/), so a read-only bundle on a line PC still builds once and reuses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_ad.bundle import Bundle, BundleError, add_file

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32", "int8")     # what an engine computes in (its name and meta.json say it)

__all__ = ["PRECISIONS", "DeviceKey", "EngineSpec", "engine_name", "find_engine", "store_engine", "describe_engines", "cache_dir"]


@dataclass(frozen=True)
class DeviceKey:
    """What a TensorRT plan is tied to."""

    gpu: str
    compute_capability: str      # "8.7"
    tensorrt: str                # "10.3.0"
    platform: str                # "aarch64", "x86_64"

    @classmethod
    def current(cls, tensorrt_version: str, device: int = 0) -> "DeviceKey":
        """This machine's key: the GPU from the CUDA runtime (the kernels module), TensorRT as given."""
        from edge_ad import _kernels

        if not _kernels.has_cuda or _kernels.cuda_device_count() <= device:
            raise RuntimeError("no CUDA GPU visible (or edge_ad was built without its CUDA kernels): "
                               "TensorRT engines need one; use backend='onnxruntime'")
        major, minor = _kernels.cuda_device_capability(device)
        return cls(_kernels.cuda_device_name(device), f"{major}.{minor}", tensorrt_version, platform.machine())

    def slug(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-") or "gpu"
        parts = (self.compute_capability.replace(".", ""), self.tensorrt, self.platform)
        cc, trt, machine = (re.sub(r"[^A-Za-z0-9_.+-]+", "-", p) for p in parts)
        return f"{gpu}.sm{cc}.trt{trt}.{machine}"


@dataclass(frozen=True)
class EngineSpec:
    """How an engine is built: from which graph, precision, typing and batch range."""

    graph: str                   # the ONNX file in the bundle it is built from
    precision: str = "fp16"      # fp16: the mixed FP16 graph; int8: the Q/DQ INT8 graph (explicit quantization)
    min_batch: int = 1
    max_batch: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.max_batch:
            raise ValueError(f"batch sizes must satisfy 1 <= min <= max, got {self.min_batch}..{self.max_batch}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def engine_name(spec: EngineSpec, key: DeviceKey) -> str:
    """engines/<graph stem>.<device slug>.<precision>.b<min>-<max>.engine, of plain characters only."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", spec.graph.split("/")[-1].split(".")[0]).strip("-") or "graph"
    return f"engines/{stem}.{key.slug()}.{spec.precision}.b{spec.min_batch}-{spec.max_batch}.engine"


def cache_dir(bundle: Bundle) -> Path:
    """The per-user engine cache of a bundle, keyed by the digest of its graphs (not its path)."""
    root = Path(os.environ.get("EDGE_AD_CACHE", Path.home() / ".cache" / "edge_ad")) / "engines"
    graphs = sorted((n, f["sha256"]) for n, f in bundle.meta.get("files", {}).items() if n.endswith(".onnx"))
    return root / hashlib.sha256(json.dumps(graphs).encode()).hexdigest()[:16]


def find_engine(bundle: Bundle, spec: EngineSpec, key: DeviceKey) -> Path | None:
    """The engine for this device and spec, in the bundle or the cache; None when it must be built.
    An engine that covers a wider batch range of the same device counts too."""
    for name, info in bundle.meta.get("engines", {}).items():
        if _fits(info, spec, key):
            return bundle.file(name)
    folder = cache_dir(bundle)
    for sidecar in sorted(folder.glob("engines/*.json")) if folder.is_dir() else []:
        info = _read_sidecar(sidecar)
        engine = sidecar.with_suffix(".engine")
        if _fits(info, spec, key) and engine.is_file():
            if hashlib.sha256(engine.read_bytes()).hexdigest() != info.get("sha256"):
                raise BundleError(f"checksum mismatch for cached engine {engine}: delete it and it is rebuilt")
            return engine
    return None


def _read_sidecar(sidecar: Path) -> dict:
    """A cached engine's description, or {} (skipped, with a warning) when it is unreadable."""
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError, RecursionError) as err:
        log.warning("ignoring the damaged engine cache entry %s (%s); delete it and the engine is rebuilt", sidecar,
                    str(err)[:200])
        return {}
    return info if isinstance(info, dict) else {}


def _fits(info: dict, spec: EngineSpec, key: DeviceKey) -> bool:
    return (info.get("device") == asdict(key) and info.get("graph") == spec.graph
            and info.get("precision") == spec.precision
            and info.get("min_batch", 0) <= spec.min_batch and spec.max_batch <= info.get("max_batch", 0))


def store_engine(bundle: Bundle, spec: EngineSpec, key: DeviceKey, plan: bytes, extra: dict) -> tuple[Path, Bundle]:
    """Keep a freshly built plan: in the bundle when it is writable, else in the cache."""
    name = engine_name(spec, key)
    info = {"device": asdict(key), **asdict(spec), **extra}
    try:
        def update(meta: dict) -> None:
            meta.setdefault("engines", {})[name] = info

        bundle = add_file(bundle, name, plan, update)
        return bundle.file(name), bundle
    except OSError:
        target = cache_dir(bundle) / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            info["sha256"] = hashlib.sha256(plan).hexdigest()
            _replace(target, plan)                                  # the engine, then the sidecar that vouches for it
            _replace(target.with_suffix(".json"), (json.dumps(info, indent=2) + "\n").encode())
        except OSError as err:
            from edge_ad.bundle import disk_full_error, is_disk_full

            if is_disk_full(err, target.parent):
                raise disk_full_error(err, target.parent, "keeping the engine",
                                      "the bundle is unchanged; the engine will be built again next time") from err
            raise
        return target, bundle


def _replace(path: Path, data: bytes) -> None:
    """Write `path` whole under a unique temporary name (concurrent builders do not collide)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe_engines(bundle: Bundle) -> list[str]:
    """One line per engine the bundle carries: what the message says when none fits this device."""
    return [f"{i['device']['gpu']} (sm {i['device']['compute_capability']}, TensorRT {i['device']['tensorrt']}, "
            f"{i['device']['platform']}, {i['precision']}, batch {i['min_batch']}-{i['max_batch']}): {name}"
            for name, i in bundle.meta.get("engines", {}).items()]
