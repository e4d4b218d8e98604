"""Would the TensorRT ONNX parser take this graph? Operators, opset and the restrictions that bite here.

TensorRT is not installed on the machines that export and test, so this is the check that keeps a
graph TensorRT could not parse from passing CI. It knows:

- the opset range of the parser in TensorRT 10.x (9-24 in 10.15; edge_ad exports 17);
- the "supported: Y" rows of onnx-tensorrt's operators.md that a vision model can produce (not the
  whole table; an operator outside it is reported, not guessed about), in the default domain only;
- per-operator restrictions (shared/TENSORRT.md): Resize only nearest/linear without antialias and
  with a supported coordinate mode; pooling 2-D/3-D, dilation 1, no indices output; Reduce*, Slice,
  Squeeze, Unsqueeze, CumSum axes and TopK's K known at build time (K < 3840); Dropout in inference
  mode; GroupNormalization's opset-21 form (failed in 10.7) and num_groups=1 (wrong in 10.16.1);
- FP16 hazards: attention masks and other constants beyond FP16's range (65504), which become inf
  in an FP16 engine (a -1e9 mask turns a softmax row into NaN); DOUBLE tensors (cast down by TensorRT).

    python -m edge_ad_export.opcheck MODEL.onnx [MORE.onnx ...] [--json]

prints each finding and exits 1 when any is an error (2 when a file cannot be read).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

__all__ = ["Finding", "TENSORRT_OPS", "OPSET_RANGE", "check_graph", "check_model", "errors", "graph_ops", "unsupported_ops", "main"]

OPSET_RANGE = (9, 24)          # the ONNX parser of TensorRT 10.15
RECOMMENDED_OPSETS = (17, 18)  # LayerNormalization native; before the GroupNormalization of opset 21
FP16_MAX = 65504.0
TOPK_MAX = 3840

TENSORRT_OPS = frozenset("""
Abs Acos Add And ArgMax ArgMin Asin Atan AveragePool BatchNormalization Cast Ceil Clip Concat Constant
ConstantOfShape Conv ConvTranspose Cos CumSum DepthToSpace Div Dropout Einsum Elu Equal Erf Exp Expand
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater
GreaterOrEqual GroupNormalization HardSigmoid HardSwish Identity InstanceNormalization LayerNormalization
LeakyRelu Less LessOrEqual Log LogSoftmax MatMul Max MaxPool Mean Min Mod Mul Neg Not Or Pad Pow PRelu
Range Reciprocal ReduceL1 ReduceL2 ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize Round ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Trilu
Unsqueeze Where Xor
""".split())

RESIZE_COORDINATES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                "align_corners"})
# Operators whose axes (or K) are an input from opset 13/18 on; the parser needs them as constants.
CONSTANT_INPUTS = {"ReduceSum": 1, "ReduceMean": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceProd": 1,
                   "ReduceL1": 1, "ReduceL2": 1, "ReduceLogSumExp": 1, "ReduceSumSquare": 1, "Slice": 3,
                   "Squeeze": 1, "Unsqueeze": 1, "CumSum": 1, "TopK": 1}


@dataclass(frozen=True)
class Finding:
    """One problem of a graph: `severity` "error" (the parser or the FP16 engine fails) or "warning"."""

    node: str
    op: str
    problem: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.severity:7s} {self.op:20s} {self.node or '-'}: {self.problem}"


class _Graph:
    """The facts the rules need: constants (initializers and Constant outputs), the default opset."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.constants: dict[str, np.ndarray | None] = {t.name: None for t in model.graph.initializer}
        self._initializers = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.output:
                self.constants[node.output[0]] = _constant_value(node)
        self.producer = {out: node for node in model.graph.node for out in node.output}

    def value(self, name: str) -> np.ndarray | None:
        """A constant's value (initializers are read on demand; external data is not loaded)."""
        if name in self._initializers and self.constants.get(name) is None:
            tensor = self._initializers[name]
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                self.constants[name] = numpy_helper.to_array(tensor)
        return self.constants.get(name)


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
    return None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_resize(node: onnx.NodeProto, graph: _Graph) -> list[str]:
    problems = []
    mode = _text(_attr(node, "mode", b"nearest"))
    if mode not in ("nearest", "linear"):
        problems.append(f"mode {mode!r}: TensorRT resizes only 'nearest' and 'linear' (export bilinear, not bicubic)")
    if _attr(node, "antialias", 0):
        problems.append("antialias=1 is not supported; resize without antialiasing")
    coords = _text(_attr(node, "coordinate_transformation_mode", b"half_pixel"))
    if coords not in RESIZE_COORDINATES:
        problems.append(f"coordinate_transformation_mode {coords!r} is not supported ({sorted(RESIZE_COORDINATES)})")
    return problems


def _check_pool(node: onnx.NodeProto, graph: _Graph) -> list[str]:
    problems = []
    kernel = _attr(node, "kernel_shape", [])
    if len(kernel) not in (2, 3):
        problems.append(f"{len(kernel)}-D pooling; TensorRT pools in 2-D or 3-D only")
    if any(d != 1 for d in _attr(node, "dilations", [1])):
        problems.append("dilated pooling is not supported")
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        problems.append("the Indices output of MaxPool is not supported")
    return problems


def _check_group_norm(node: onnx.NodeProto, graph: _Graph) -> list[str]:
    problems = []
    if graph.opset >= 21:
        problems.append(f"GroupNormalization of opset {graph.opset} (the opset-21 form) failed to parse in "
                        "TensorRT 10.7; export at opset 17/18")
    if _attr(node, "num_groups") == 1:
        problems.append("num_groups=1 gives wrong results in TensorRT 10.16.1; use LayerNormalization")
    return problems


def _check_constant_inputs(node: onnx.NodeProto, graph: _Graph) -> list[str]:
    index = CONSTANT_INPUTS[node.op_type]
    if len(node.input) <= index or not node.input[index]:
        return []
    name = node.input[index]
    if name not in graph.constants:
        what = "K" if node.op_type == "TopK" else "axes"
        return [f"input {what} ({name}) is computed at run time; TensorRT needs it as a constant"]
    if node.op_type == "TopK":
        k = graph.value(name)
        if k is not None and int(np.max(k)) >= TOPK_MAX:
            return [f"K={int(np.max(k))}; TensorRT's TopK needs K < {TOPK_MAX}"]
    return []


def _check_dropout(node: onnx.NodeProto, graph: _Graph) -> list[str]:
    if len(node.input) > 2 and node.input[2]:
        training = graph.value(node.input[2])
        if training is None or bool(np.any(training)):
            return ["Dropout must be in inference mode (training_mode absent or a false constant)"]
    return []


def _check_mask(node: onnx.NodeProto, graph: _Graph) -> list[str]:
    """An attention mask added to the logits of a Softmax must stay finite in FP16."""
    problems = []
    source = graph.producer.get(node.input[0])
    if source is None or source.op_type not in ("Add", "Where"):
        return problems
    for name in source.input:
        value = graph.value(name) if name in graph.constants else None
        if value is not None and value.dtype.kind == "f" and value.size:
            finite = value[np.isfinite(value)]
            if finite.size and float(np.max(np.abs(finite))) > FP16_MAX:
                problems.append(f"attention mask {name} holds {float(finite.min()):.3g}, beyond FP16's range: the "
                                "FP16 engine turns it into inf and fully masked rows into NaN; use -1e4")
    return problems


RULES = {"Resize": _check_resize, "MaxPool": _check_pool, "AveragePool": _check_pool,
         "GroupNormalization": _check_group_norm, "Dropout": _check_dropout, "Softmax": _check_mask,
         **{op: _check_constant_inputs for op in CONSTANT_INPUTS}}


def check_model(model: onnx.ModelProto) -> list[Finding]:
    """Every finding of an in-memory graph: opset, domains, operators, restrictions, types."""
    graph = _Graph(model)
    findings = []
    low, high = OPSET_RANGE
    if not low <= graph.opset <= high:
        findings.append(Finding("", "opset", f"opset {graph.opset} is outside the parser's {low}-{high}"))
    elif graph.opset not in RECOMMENDED_OPSETS:
        findings.append(Finding("", "opset", f"opset {graph.opset}; edge_ad exports {RECOMMENDED_OPSETS} "
                                "(LayerNormalization native, no opset-21 GroupNormalization)", "warning"))
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            findings.append(Finding(node.name, node.op_type, f"domain {node.domain!r} needs a TensorRT plugin"))
        elif node.op_type not in TENSORRT_OPS:
            findings.append(Finding(node.name, node.op_type, "not supported by the TensorRT ONNX parser"))
        else:
            rule = RULES.get(node.op_type)
            findings += [Finding(node.name, node.op_type, p) for p in (rule(node, graph) if rule else [])]
    doubles = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.DOUBLE]
    if doubles:
        findings.append(Finding("", "DOUBLE", f"{len(doubles)} float64 initializers ({doubles[0]}, ...); "
                                "TensorRT casts them down to float32", "warning"))
    return findings


def check_graph(path: str | Path) -> list[Finding]:
    """Every finding of an ONNX file (external weights are not loaded: the rules read only small constants)."""
    return check_model(onnx.load(str(path), load_external_data=False))


def errors(path: str | Path) -> list[Finding]:
    """The findings that would stop TensorRT (parser or FP16 engine); empty for a graph it takes."""
    return [f for f in check_graph(path) if f.severity == "error"]


def graph_ops(path: str | Path) -> Counter:
    """Operator type -> count over the graph's top-level nodes."""
    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def unsupported_ops(path: str | Path) -> dict[str, int]:
    """Operators of the graph outside TENSORRT_OPS (empty when the parser takes them all)."""
    return {op: n for op, n in graph_ops(path).items() if op not in TENSORRT_OPS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_ad_export.opcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("graphs", nargs="+", type=Path, help="ONNX files (a bundle's model.onnx, ...)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    args = parser.parse_args(argv)
    report, errors = {}, 0
    for path in args.graphs:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except (OSError, DecodeError) as err:
            print(f"{path}: cannot read it as an ONNX graph ({err})", file=sys.stderr)
            return 2
        findings = check_model(model)
        report[str(path)] = [asdict(f) for f in findings]
        errors += sum(f.severity == "error" for f in findings)
        if not args.json:
            bad = sum(f.severity == "error" for f in findings)
            print(f"{path}: {len(model.graph.node)} nodes, "
                  f"{'OK for TensorRT' if not bad else f'{bad} unsupported'}")
            for finding in findings:
                print(f"  {finding}")
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
