"""TensorRT engines from a bundle's graphs (FP16, or INT8 where the bundle has Q/DQ graphs), built on the
device that will run them.

Unverified: TensorRT cannot be installed where this was written and no GPU has run it. Written against
the TensorRT 10 Python API (JetPack 6 ships 10.3; 11.x keeps the strongly typed route):

- strongly typed (default): `Builder.create_network(1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))`
  from the bundle's mixed FP16 graph (`model.fp16.onnx`, export/edge_ad_export/fp16.py): the precision of every layer is
  the graph's, FP32 islands included. No per-layer precision is set on this route (TensorRT forbids it).
- weakly typed (`typing="weak"`, and the automatic choice when STRONGLY_TYPED does not exist): the FP32
  graph with `BuilderFlag.FP16`; the layers of the export's FP32 islands pinned with `ILayer.precision`
  and `set_output_type` under `BuilderFlag.OBEY_PRECISION_CONSTRAINTS`. Deprecated since 10.12, but it is
  what DLA needs (`dla_core`: `default_device_type = DeviceType.DLA`, `DLA_core`, `GPU_FALLBACK`).
- INT8 (`precision="int8"`): explicit quantization from the bundle's Q/DQ graph (`model.int8.onnx`,
  export/edge_ad_export/int8.py), rewritten by `symmetric_qdq` into int8 pairs with zero point 0 (TensorRT
  takes no other; the file's uint8 pairs are what ONNX Runtime's x86 kernels run fast) and parsed from
  memory (`OnnxParser.parse`). Strongly typed, its unquantized layers run in FP32; weakly typed with the
  INT8 and FP16 flags.
- `OnnxParser.parse_from_file` (every `get_error(i)` goes into one exception),
  `set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)`, one optimization profile
  (`create_optimization_profile`, `set_shape(name, min, opt, max)`) over the asked batch sizes,
  a timing cache per device (`create_timing_cache`, `set_timing_cache`, `serialize`), and
  `build_serialized_network` (None on failure).

The engine is stored in the bundle (or the user's cache when the bundle is read-only) under a name
that says GPU, compute capability, TensorRT version, platform, precision and batch range
(edge_ad/runtime/engines.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path

from edge_ad.bundle import MAX_BATCH, Bundle
from edge_ad.runtime.devices import tensorrt_logger, tensorrt_missing
from edge_ad.runtime.engines import DeviceKey, EngineSpec, cache_dir, store_engine

log = logging.getLogger(__name__)

__all__ = ["build_engine", "build_and_store", "build_bundle_engines", "bundle_graphs", "symmetric_qdq", "check_batch",
           "parse_batches", "save_timing_cache", "stream_profile", "WORKSPACE_BYTES"]

WORKSPACE_BYTES = 2 << 30            # 2 GiB: enough for these models' tactics, within an Orin Nano's 8 GB
_BATCH = re.compile(r"[ ]*[0-9]{1,9}[ ]*(,[ ]*[0-9]{1,9}[ ]*){0,2}", re.ASCII)


def parse_batches(text: str) -> tuple[int, int, int]:
    """--batch: "N" (exactly N), "MIN,MAX" (optimized for MIN) or "MIN,OPT,MAX" -> (min, opt, max), each a
    plain decimal number with 1 <= MIN <= OPT <= MAX <= MAX_BATCH (what a bundle's meta.json may record)."""
    if not isinstance(text, str) or not _BATCH.fullmatch(text):
        raise ValueError(f"--batch takes 'N', 'MIN,MAX' or 'MIN,OPT,MAX' (whole numbers, e.g. 1,1,8), got {text!r}")
    values = [int(v) for v in text.split(",")]
    if len(values) == 1:
        values = values * 3
    elif len(values) == 2:
        values = [values[0], values[0], values[1]]
    return check_batch((values[0], values[1], values[2]), text)


def stream_profile(batch: int, floor: int = 8) -> tuple[int, int, int]:
    """The engine profile for a stream that runs batches of `batch` frames (one per camera): TensorRT
    picks its kernels for OPT, so OPT is that batch, not 1; MIN 1 (a camera that drops out shrinks the
    batch) and MAX at least `floor`, so the engine serves other streams of the line too."""
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"a stream batch must be a whole number 1..{MAX_BATCH}, got {batch!r}")
    return check_batch((1, batch, min(MAX_BATCH, max(batch, floor))))


def check_batch(batch: tuple[int, int, int], text: str | None = None) -> tuple[int, int, int]:
    """A (min, opt, max) engine profile within 1 <= MIN <= OPT <= MAX <= MAX_BATCH; checked before any
    build, since the bundle's schema refuses a larger profile (after minutes of building)."""
    shown = text if text is not None else ",".join(map(str, batch)) if isinstance(batch, (tuple, list)) else batch
    if not isinstance(batch, (tuple, list)) or len(batch) != 3 or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in batch):
        raise ValueError(f"--batch must be three whole numbers MIN,OPT,MAX, got {shown!r}")
    if not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ValueError(f"--batch needs 1 <= MIN <= OPT <= MAX, got {shown!r}")
    if batch[2] > MAX_BATCH:
        raise ValueError(f"--batch {shown}: MAX {batch[2]} is over {MAX_BATCH}, the largest engine batch a bundle "
                         f"records; a line PC batches one frame per camera: give e.g. 1,1,8")
    return int(batch[0]), int(batch[1]), int(batch[2])


def _parse(trt, logger, network, onnx_path: Path, model: bytes | None = None):
    """Fill `network` from the ONNX file (or `model`, its rewritten bytes); returns the parser, which must
    outlive the network."""
    parser = trt.OnnxParser(network, logger)
    if not (parser.parse(model, str(onnx_path)) if model is not None else parser.parse_from_file(str(onnx_path))):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path.name}: " + "; ".join(errors) +
                           f" (run `edge-ad opcheck {onnx_path}`, after `pip install onnx`, to see what it cannot take)")
    return parser


def _symmetric_bytes(onnx_path: Path) -> bytes:
    """The INT8 graph at `onnx_path` in the form TensorRT parses (symmetric_qdq), serialized."""
    try:
        import onnx
    except ImportError:
        raise RuntimeError("an INT8 TensorRT engine is built from the bundle's Q/DQ graph rewritten for TensorRT, "
                           "which needs the onnx package: pip install onnx") from None
    return symmetric_qdq(onnx.load(str(onnx_path))).SerializeToString()


def symmetric_qdq(model):
    """The bundle's INT8 graph (uint8 asymmetric activations: the form ONNX Runtime's x86 kernels run fast)
    in the form TensorRT's explicit quantization takes: int8, zero point 0. Each uint8 Q/DQ pair of range
    [lo, hi] becomes an int8 pair of range [-m, m] (m = max |lo|, |hi|) behind a Clip(lo, hi), which keeps
    the clamping the uint8 pair did (a ReLU6 folded into it: lo = 0); quantized constants are re-quantized;
    int32 biases become float (TensorRT fuses them). Takes and returns an onnx.ModelProto; needs `onnx`.
    Checked on ONNX Runtime by the export (parity.json's int8 `tensorrt_form`); unverified on TensorRT."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    value = {name: numpy_helper.to_array(t) for name, t in inits.items()}
    pairs = {}                                     # (scale, zero point) names -> (old scale, old zp, new scale)
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) == 3 \
                and inits.get(node.input[2]) is not None and inits[node.input[2]].data_type == TensorProto.UINT8:
            s, z = float(value[node.input[1]]), float(value[node.input[2]])
            m = max(z * s, (255.0 - z) * s)
            pairs[(node.input[1], node.input[2])] = (s, z, m / 127.0 if m > 0 else s)
    clips, kept = {}, []
    for node in graph.node:
        key = tuple(node.input[1:3]) if node.op_type in ("QuantizeLinear", "DequantizeLinear") else None
        if key in pairs and node.op_type == "QuantizeLinear":
            s, z, _ = pairs[key]
            bounds = (-z * s, (255.0 - z) * s)
            if node.input[0] not in clips:
                name = f"{node.input[0]}_clip_{len(clips)}"
                lo, hi = (numpy_helper.from_array(np.array(b, np.float32), f"{name}_{w}") for b, w in zip(bounds, "lh"))
                graph.initializer.extend([lo, hi])
                kept.append(helper.make_node("Clip", [node.input[0], lo.name, hi.name], [name], name=name))
                clips[node.input[0]] = name
            node.input[0] = clips[node.input[0]]
        elif key in pairs and node.input[0] in inits:              # a quantized constant: re-quantize it
            s, z, s2 = pairs[key]
            real = (value[node.input[0]].astype(np.float64) - z) * s
            inits[node.input[0]].CopyFrom(numpy_helper.from_array(
                np.clip(np.round(real / s2), -127, 127).astype(np.int8), node.input[0]))
        elif node.op_type == "DequantizeLinear" and inits.get(node.input[0]) is not None \
                and inits[node.input[0]].data_type == TensorProto.INT32:   # a bias: float, as TensorRT wants it
            real = value[node.input[0]].astype(np.float64) * value[node.input[1]]
            graph.initializer.append(numpy_helper.from_array(real.astype(np.float32), node.output[0]))
            continue
        kept.append(node)
    for (scale, zero), (_, _, s2) in pairs.items():
        inits[scale].CopyFrom(numpy_helper.from_array(np.array(s2, np.float32), scale))
        inits[zero].CopyFrom(numpy_helper.from_array(np.array(0, np.int8), zero))
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return model


def _profile(builder, network, batch: tuple[int, int, int]):
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        if dims and dims[0] == -1:
            rest = dims[1:]
            profile.set_shape(tensor.name, (batch[0], *rest), (batch[1], *rest), (batch[2], *rest))
    return profile


def _pin_islands(trt, network, islands: list[str]) -> int:
    """Weak typing: keep the export's FP32 islands in FP32 (layers are named after their ONNX nodes)."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if any(layer.name == n or layer.name.startswith(n + "_") for n in islands):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def build_engine(onnx_path: Path, *, batch: tuple[int, int, int], typing: str = "auto", islands: list[str] = (),
                 workspace: int = WORKSPACE_BYTES, timing_cache: Path | None = None,
                 dla_core: int | None = None, precision: str = "fp16") -> tuple[bytes, dict]:
    """Build a serialized engine; returns (plan, facts of the build). `typing`: "strong", "weak" or "auto"
    (strong where this TensorRT has STRONGLY_TYPED). `precision` "int8": `onnx_path` is the bundle's Q/DQ
    INT8 graph, parsed in its symmetric form (symmetric_qdq: explicit quantization), its other layers
    FP32 when strongly typed, FP16 allowed when weakly typed (unverified on a GPU)."""
    batch = check_batch(batch)
    model = _symmetric_bytes(onnx_path) if precision == "int8" else None
    import tensorrt as trt

    strong_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if typing == "auto":
        typing = "strong" if strong_flag is not None and dla_core is None else "weak"
    if typing == "strong" and strong_flag is None:
        raise RuntimeError(f"TensorRT {trt.__version__} has no strongly typed networks; use typing='weak'")
    if typing == "weak" and not hasattr(trt.BuilderFlag, "FP16"):
        raise RuntimeError(f"TensorRT {trt.__version__} has no FP16 builder flag (11.x): use typing='strong'")
    logger = tensorrt_logger(trt)                      # one logger per process (TensorRT warns on a second)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(strong_flag) if typing == "strong" else 0)
    parser = _parse(trt, logger, network, onnx_path, model)  # noqa: F841 - kept alive until the build
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    config.add_optimization_profile(_profile(builder, network, batch))
    pinned = 0
    if typing == "weak" and precision == "int8" and hasattr(trt.BuilderFlag, "INT8"):
        config.set_flag(trt.BuilderFlag.INT8)          # Q/DQ layers set the scales; the flag allows INT8 kernels
    if typing == "weak":
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = _pin_islands(trt, network, list(islands))
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    if dla_core is not None:
        if builder.num_DLA_cores <= dla_core:
            raise RuntimeError(f"DLA core {dla_core} asked for, this device has {builder.num_DLA_cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path.name}; see its log above")
    if timing_cache is not None:
        save_timing_cache(timing_cache, bytes(config.get_timing_cache().serialize()))
    facts = {"typing": typing, "precision": precision, "opt_batch": batch[1], "build_s": round(time.perf_counter() - start, 1),
             "fp32_pinned_layers": pinned, "dla_core": dla_core, "workspace_bytes": workspace}
    return bytes(plan), facts


def save_timing_cache(path: Path, data: bytes) -> bool:
    """Replace the timing cache atomically through a temporary of its own (concurrent builds never share
    one), removed on any failure. The cache only speeds up later builds: a failure to keep it (a full
    disk, a read-only folder) is logged, not raised, since the engine itself was built; returns whether it was kept."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale_caches(path)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return True
    except OSError as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        log.warning("could not keep the TensorRT timing cache %s (%s); the engine is fine, the next build will "
                    "take longer", path, err.strerror or err)
        return False
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def _clean_stale_caches(path: Path, age_s: float = 3600.0) -> None:
    """Remove temporaries of `path` that killed builds left: ours an hour old (a live write takes
    milliseconds), and the fixed-name `.partial` of earlier versions."""
    now = time.time()
    for entry in [*path.parent.glob(f".{path.name}.*.partial"), path.with_suffix(".partial")]:
        try:
            if entry.is_file() and not entry.is_symlink() and now - entry.stat().st_mtime > age_s:
                entry.unlink()
        except OSError:
            pass


def _islands(bundle: Bundle, graph: str) -> list[str]:
    """The FP32 islands the export chose for FP32 graph `graph` (parity.json), for the weakly typed route."""
    try:
        parity = json.loads(bundle.file("parity.json").read_text())
    except (OSError, ValueError):
        return []
    single = parity.get("fp16", {}).get(graph)                          # model.onnx
    part = parity.get(graph.split(".")[0], {})                           # DiffAD: encoder.onnx -> "encoder"
    report = single or (part.get("fp16") if isinstance(part, dict) else None)
    return list(report.get("fp32_islands", {})) if isinstance(report, dict) else []


def build_and_store(bundle: Bundle, graph: str, *, batch: tuple[int, int, int], typing: str = "auto",
                    dla_core: int | None = None, precision: str = "fp16") -> tuple[Path, Bundle]:
    """Build the engine of one graph of the bundle for this device and keep it: an FP16 graph (`precision`
    "fp16"), or an INT8 Q/DQ graph ("int8", from meta.json's `int8`)."""
    import tensorrt as trt

    key = DeviceKey.current(trt.__version__)
    source = graph
    weak = typing == "weak" or (typing == "auto" and not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))
    if weak and precision == "fp16":
        source = graph.replace(".fp16.onnx", ".onnx")          # the weak route starts from FP32
    timing = cache_dir(bundle).parent / "timing" / f"{key.slug()}.cache"
    plan, facts = build_engine(bundle.file(source), batch=batch, typing=typing,
                               islands=_islands(bundle, source) if precision == "fp16" else [],
                               timing_cache=timing, dla_core=dla_core, precision=precision)
    spec = EngineSpec(graph, precision, batch[0], batch[2])
    path, bundle = store_engine(bundle, spec, key, plan, {**facts, "source": source,
                                                          "built": time.strftime("%Y-%m-%dT%H:%M:%S")})
    log.info("TensorRT engine %s built in %.0f s", path, facts["build_s"])
    return path, bundle


def bundle_graphs(bundle: Bundle, precision: str = "fp16") -> list[str]:
    """The graphs TensorRT builds from at `precision`: the FP16 twins, or for "int8" each graph's INT8 twin
    where the export wrote one and its FP16 twin where it did not (diffusion parts left FP32 by the export)."""
    fp16 = bundle.meta.get("fp16", {})
    if precision != "int8":
        return list(fp16.values())
    int8 = bundle.meta.get("int8") or {}
    if not int8:
        raise ValueError(f"{bundle.path} has no INT8 graph: re-export it with `edge-ad export RUN --out BUNDLE "
                         "--int8`, or build the FP16 engines (without --int8)")
    return [int8.get(graph, half) for graph, half in fp16.items()]


def build_bundle_engines(bundle: Bundle, *, batch: tuple[int, int, int], typing: str = "auto",
                         dla_core: int | None = None, precision: str = "fp16") -> list[Path]:
    """`edge-ad export BUNDLE --engine [--int8]`: one engine per graph of the bundle (four for DiffAD), from
    its FP16 graphs or, with `precision` "int8", its INT8 ones (bundle_graphs)."""
    batch = check_batch(batch)                # before TensorRT is even looked for
    graphs = bundle_graphs(bundle, precision)
    reason = tensorrt_missing()
    if reason:
        raise RuntimeError(f"building TensorRT engines needs TensorRT and a GPU on the device that will run them "
                           f"({reason} here); run `edge-ad export BUNDLE --engine` there, or let "
                           "`edge-ad stream --backend tensorrt` build on first use")
    if not graphs:
        raise ValueError(f"{bundle.path} has no FP16 graphs (exported by edge_ad before 0.2?); re-export it "
                         "with `edge-ad export RUN --out BUNDLE`")
    paths = []
    for graph in graphs:
        path, bundle = build_and_store(bundle, graph, batch=batch, typing=typing, dla_core=dla_core,
                                       precision="int8" if graph in (bundle.meta.get("int8") or {}).values() else "fp16")
        paths.append(path)
    return paths
