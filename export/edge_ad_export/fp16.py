"""The FP16 (mixed where needed) ONNX graph that TensorRT builds a strongly typed engine from.

TensorRT 11 takes precision from the graph only, and 10.x recommends the same (shared/TENSORRT.md),
so the export pipeline writes `<graph>.fp16.onnx` beside every FP32 graph:

1. Ranges: the FP32 graph runs on ONNX Runtime over real calibration inputs (the export's parity
   images) with every float intermediate tensor as an output, recording max |x|.
2. FP32 islands: a node stays FP32 when an output exceeds `DATA_MAX` (1e4: FP16 overflows at 65504,
   which leaves headroom for brighter or stranger frames than the calibration images), or, for the
   nodes that square their input internally (normalizations, ReduceSumSquare, ReduceL2), when
   max|input|^2 does. Resize and the shape-computing operators stay FP32 as well: their scale and
   index inputs must keep their types (the converter's default block list).
3. Conversion with onnxconverter-common's float16 converter, `keep_io_types=True` (uint8 frames in,
   float32 maps out, as in the FP32 graph), weights clamped to FP16's real range, not its 1e4 default.
4. Check: no FP16 tensor of the written graph reaches 65504 on the calibration inputs (`fp16_overflow`:
   its types against the FP32 ranges, so an island's output cast down to FP16 counts too), and the
   FP16 graph on ONNX Runtime matches the FP32 graph: finite, the images' scores in the same order,
   the relative error reported. ONNX Runtime's CPU provider computes FP16 nodes it has no kernel for
   in FP32 (and drops the casts between them even with graph optimizations off), so this run checks
   the graph and its casts, not FP16 arithmetic: the overflow check is what stands for that here, and
   a GPU run against TensorRT is the real test.

Two tools can write the graph (`write_fp16(..., tool=)`): "converter" (the steps above, the default) and
"autocast", NVIDIA Model Optimizer's AutoCast (export/edge_ad_export/fp16_autocast.py, an optional install).
Both go through the same acceptance (step 4), read off the written graph: its tensor types against the
FP32 graph's measured ranges, so a tool's own choices cannot slip past it. benchmarks/fp16_graphs.py
--tool both compares them on every model (benchmarks/results/fp16-tools.json).

The FP16 graph is what `edge_ad/runtime/engine_builder.py` builds from; ONNX Runtime and Triton's ONNX backend keep
using the FP32 graph.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

__all__ = ["DATA_MAX", "TOOLS", "fp16_name", "name_nodes", "tensor_ranges", "fp32_islands", "fp32_nodes",
           "fp16_overflow", "fp16_squares", "added_casts", "op_counts", "convert_fp16", "compare_fp16", "write_fp16",
           "accept_fp16"]

DATA_MAX = 1e4
FP16_MAX = 65504.0
RANK_TIE = 1e-2
TOOLS = ("converter", "autocast")
SHAPE_ONLY = frozenset({"Shape", "Size"})     # read a tensor's shape, never its values
# Square their input inside the kernel (variance, sum of squares), where no measured tensor shows it. Not
# Pow: its result is a tensor the output rule sees (DiffAD's Pow nodes are 512 ** -0.5 attention scales).
SQUARING_OPS = frozenset({"InstanceNormalization", "LayerNormalization", "GroupNormalization",
                          "ReduceSumSquare", "ReduceL2"})
# onnxconverter-common's default FP32 list (ORT-centric: Resize's scales, index and shape maths).
FP32_OPS = frozenset({"Resize", "Upsample", "Range", "CumSum", "Min", "Max", "TopK", "NonMaxSuppression",
                      "RoiAlign"})


def fp16_name(graph_file: str) -> str:
    """model.onnx -> model.fp16.onnx"""
    stem = graph_file[:-len(".onnx")] if graph_file.endswith(".onnx") else graph_file
    return f"{stem}.fp16.onnx"


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name: the FP32 islands are chosen by name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return model


def tensor_ranges(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """max |x| of every float tensor of the graph (inputs, intermediates, outputs) over `feeds`."""
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {v.name for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    probe = onnx.ModelProto()
    probe.CopyFrom(inferred)
    existing = {o.name for o in probe.graph.output}
    for info in inferred.graph.value_info:
        if info.name in floats and info.name not in existing:
            probe.graph.output.append(info)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, feeds)
    ranges = {name: float(np.max(np.abs(v))) if v.size else 0.0
              for name, v in zip(names, values) if name in floats and np.issubdtype(v.dtype, np.floating)}
    for name, v in feeds.items():
        if np.issubdtype(v.dtype, np.floating):
            ranges[name] = float(np.max(np.abs(v)))
    return ranges


def fp32_islands(model: onnx.ModelProto, ranges: dict[str, float], data_max: float = DATA_MAX) -> dict[str, str]:
    """Node name -> why it stays FP32: outputs, inputs, or squared inputs beyond `data_max`. A node that
    reads a tensor beyond it must stay FP32 even where its own output is small (a normalization or a
    mean of a large FP32 island's output): in FP16 the converter's cast in front of it would be inf.
    Shape/Size read no values and are left out."""
    islands = {}
    for node in model.graph.node:
        big = [o for o in node.output if ranges.get(o, 0.0) > data_max]
        reads = [i for i in node.input if ranges.get(i, 0.0) > data_max] if node.op_type not in SHAPE_ONLY else []
        if big:
            islands[node.name] = f"output {big[0]} reaches {ranges[big[0]]:.3g}"
        elif reads:
            islands[node.name] = f"reads {reads[0]} of max {ranges[reads[0]]:.3g}"
        elif node.op_type in SQUARING_OPS and node.input and ranges.get(node.input[0], 0.0) ** 2 > data_max:
            islands[node.name] = f"squares input {node.input[0]} of max {ranges[node.input[0]]:.3g}"
    return islands


def _retarget_casts(model: onnx.ModelProto) -> None:
    """Cast(to=FLOAT) nodes inside FP16 regions: the converter retypes their outputs to FLOAT16 but
    leaves `to`, which ONNX Runtime rejects (e.g. the uint8 -> float cast of the frames)."""
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    for node in model.graph.node:
        if node.op_type != "Cast" or types.get(node.output[0]) != onnx.TensorProto.FLOAT16:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                attr.i = onnx.TensorProto.FLOAT16


def _drop_round_trips(model: onnx.ModelProto) -> int:
    """Remove FP32 -> FP16 -> FP32 cast pairs. The converter puts one between two neighbouring FP32
    islands, which would push a tensor beyond 65504 through FP16 and back as inf; returns how many."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})

    def cast_to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    renamed, dropped = {}, []
    for node in graph.node:
        first = producer.get(node.input[0]) if node.op_type == "Cast" else None
        if (first is not None and cast_to(node) == onnx.TensorProto.FLOAT and cast_to(first) == onnx.TensorProto.FLOAT16
                and types.get(first.input[0]) == onnx.TensorProto.FLOAT and node.output[0] not in {o.name for o in graph.output}):
            renamed[node.output[0]] = first.input[0]
            dropped.append(node)
    for node in dropped:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if cast_to(n) == onnx.TensorProto.FLOAT16 and n.output[0] not in used]:
        graph.node.remove(node)
    return len(dropped)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> element type, after shape inference (the tools leave some intermediates untyped)."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _computes_in(node: onnx.NodeProto, types: dict[str, int]) -> int | None:
    """The float type a node computes in: its first float output's, else its first float input's (Shape)."""
    for name in [*node.output, *node.input]:
        if types.get(name) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            return types[name]
    return None


def fp32_nodes(half: onnx.ModelProto, model: onnx.ModelProto) -> list[str]:
    """Nodes of the FP32 graph `model` that still compute in FP32 in its mixed graph `half` (Constants,
    Shape/Size, which read no values, and the Casts the tool added aside): the same count for either
    tool, read off the written graph."""
    names = {n.name for n in model.graph.node if n.op_type != "Constant" and n.op_type not in SHAPE_ONLY}
    types = _types(half)
    return [n.name for n in half.graph.node if n.name in names and _computes_in(n, types) == onnx.TensorProto.FLOAT]


def op_counts(model: onnx.ModelProto, names: list[str]) -> dict[str, int]:
    """Operator type -> how many of the nodes `names` of `model` have it."""
    ops = {n.name: n.op_type for n in model.graph.node}
    return dict(Counter(ops[name] for name in names))


def added_casts(half: onnx.ModelProto, model: onnx.ModelProto) -> int:
    """Cast nodes the tool added: at FP16/FP32 boundaries (a kernel each in the engine) or on shape
    arithmetic (which TensorRT folds at build time)."""
    names = {n.name for n in model.graph.node}
    return sum(n.op_type == "Cast" and n.name not in names for n in half.graph.node)


def fp16_overflow(half: onnx.ModelProto, model: onnx.ModelProto, ranges: dict[str, float]) -> dict[str, float]:
    """Nodes of the mixed graph `half` that produce an FP16 tensor whose FP32 value passes 65504 on the
    calibration inputs (`ranges`, measured on the FP32 graph `model`): node name -> max |x|.

    Read off the written graph, so it holds for any tool: a node of `model` is found by name and its
    outputs by position (tools rename the outputs they cast), and a Cast the tool added carries its
    input's range, which catches an FP32 island cast down to FP16 beyond 65504 as well. A tensor that
    only Shape/Size read (its values never are) does not count."""
    source = {n.name: [ranges.get(o, 0.0) for o in n.output] for n in model.graph.node}
    types = _types(half)
    read = {o.name for o in half.graph.output} | {name for n in half.graph.node if n.op_type not in SHAPE_ONLY
                                                  for name in n.input}
    peaks = dict(ranges)
    overflow: dict[str, float] = {}
    for node in half.graph.node:
        if len(source.get(node.name, ())) == len(node.output):
            values = source[node.name]
        elif node.op_type == "Cast" and node.input:
            values = [peaks.get(node.input[0], 0.0)]
        else:
            values = [peaks.get(o, 0.0) for o in node.output]
        for out, peak in zip(node.output, values):
            peaks[out] = peak
            if out in read and types.get(out) == onnx.TensorProto.FLOAT16 and peak > FP16_MAX:
                overflow[node.name] = max(overflow.get(node.name, 0.0), peak)
    return overflow


def fp16_squares(half: onnx.ModelProto, model: onnx.ModelProto, ranges: dict[str, float]) -> dict[str, float]:
    """Squaring nodes (SQUARING_OPS: normalizations' variance, sums of squares) computed in FP16 in `half` whose
    input squared passes 65504 on the calibration inputs: node name -> max |input|. Not refused (the
    converter keeps them FP32 anyway; whether TensorRT's FP16 kernels square in FP16 is unverified), but
    reported, since no output range shows this hazard."""
    types = _types(half)
    first = {n.name: n.input[0] for n in model.graph.node if n.op_type in SQUARING_OPS and n.input}
    return {n.name: ranges.get(first[n.name], 0.0) for n in half.graph.node
            if n.name in first and _computes_in(n, types) == onnx.TensorProto.FLOAT16
            and ranges.get(first[n.name], 0.0) ** 2 > FP16_MAX}


def convert_fp16(src: Path, dst: Path, feeds: dict[str, np.ndarray], *, data_max: float = DATA_MAX) -> dict:
    """Write the mixed FP16 graph of `src` to `dst` with onnxconverter-common; returns the FP32 islands
    and the overflow check."""
    from onnxconverter_common import float16

    model = name_nodes(onnx.load(str(src)))
    ranges = tensor_ranges(model, feeds)
    islands = fp32_islands(model, ranges, data_max)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # one line per weight below 1e-7 flushed: expected
        half = float16.convert_float_to_float16(model, keep_io_types=True, max_finite_val=FP16_MAX,
                                                op_block_list=sorted(FP32_OPS), node_block_list=sorted(islands))
    _retarget_casts(half)
    _drop_round_trips(half)
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))
    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    kept = fp32_nodes(half, model)
    return {"fp32_islands": islands, "fp32_ops": sorted(FP32_OPS), "nodes": len(nodes),
            "fp32_nodes": len(kept), "fp32_by_op": op_counts(model, kept), "casts": added_casts(half, model),
            "max_abs": max(ranges.values(), default=0.0), "data_max": data_max,
            "fp16_overflow": fp16_overflow(half, model, ranges), "fp16_squares": fp16_squares(half, model, ranges)}


def compare_fp16(fp32: Path, fp16: Path, feeds: dict[str, np.ndarray]) -> dict:
    """FP16 against FP32 graph on ONNX Runtime (CPU): relative max error of each output, and whether
    the first output's per-image maxima (the image scores before smoothing) keep their order. Pairs
    of images whose FP32 scores lie within RANK_TIE (1% of the largest score) count as ties: FP16's
    rounding may swap those, and no threshold could tell them apart anyway."""
    import onnxruntime as ort

    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds) for p in (fp32, fp16)]
    errors = []
    for want, got in zip(*runs):
        scale = float(np.max(np.abs(want))) or 1.0
        errors.append(float(np.max(np.abs(got.astype(np.float32) - want)) / scale))
    want, got = (r[0].reshape(len(r[0]), -1).max(axis=1).astype(np.float64) for r in runs)
    tie = RANK_TIE * (float(np.max(np.abs(want))) or 1.0)
    apart = np.abs(want[:, None] - want[None, :]) > tie
    swapped = apart & (np.sign(want[:, None] - want[None, :]) != np.sign(got[:, None] - got[None, :]))
    return {"relative_max_error": max(errors), "scores_rank_same": not bool(swapped.any()),
            "swapped_pairs": int(swapped.sum() // 2), "finite": bool(all(np.isfinite(g).all() for g in runs[1])),
            "images": int(len(want))}


def write_fp16(folder: Path, graph_file: str, feeds: dict[str, np.ndarray], *, ranks: bool = True,
               data_max: float = DATA_MAX, tool: str = "converter") -> dict:
    """Write `folder/<graph>.fp16.onnx` from `folder/graph_file` with `tool` (TOOLS) and check it; returns
    the report.

    Raises ParityError when an FP16 tensor of the written graph passes 65504 on the calibration inputs,
    when the graph yields a non-finite value or, with `ranks`, when its image scores do not rank as the
    FP32 graph's (the FP16 contract of the export, the same for every tool)."""
    if tool not in TOOLS:
        raise ValueError(f"unknown FP16 tool {tool!r}; choose one of {', '.join(TOOLS)}")
    src, dst = folder / graph_file, folder / fp16_name(graph_file)
    start = time.perf_counter()
    if tool == "autocast":
        from .fp16_autocast import convert_autocast

        report = convert_autocast(src, dst, feeds, data_max=data_max)
    else:
        report = convert_fp16(src, dst, feeds, data_max=data_max)
    report["tool"], report["convert_s"] = tool, round(time.perf_counter() - start, 3)
    report["check"] = compare_fp16(src, dst, feeds)
    accept_fp16(report, dst.name, graph_file, ranks=ranks)
    return report


def accept_fp16(report: dict, name: str, graph_file: str, *, ranks: bool = True) -> None:
    """The acceptance of an FP16 graph from its report (`fp16_overflow` and `check`); raises ParityError."""
    from .parity import ParityError

    check = report["check"]
    if report["fp16_overflow"]:
        node, peak = next(iter(report["fp16_overflow"].items()))
        raise ParityError(f"{name}: node {node} reaches {peak:.3g} on the calibration images, beyond FP16's "
                          f"65504, but is computed in FP16 ({len(report['fp16_overflow'])} such nodes); lower data_max")
    if not check["finite"]:
        raise ParityError(f"{name} yields inf/NaN on the calibration images although no tensor of the FP32 "
                          "graph passed FP16's range; lower DATA_MAX (edge_ad_export.fp16)")
    if ranks and not check["scores_rank_same"]:
        raise ParityError(f"{name} ranks the calibration images' scores differently from {graph_file} "
                          f"(relative max error {check['relative_max_error']:.2e}); lower DATA_MAX (edge_ad_export.fp16)")
