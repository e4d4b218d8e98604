"""Which operators of an exported ONNX graph the TensorRT ONNX parser would not take.

The list is the "supported: Y" rows of onnx-tensorrt's operators.md for TensorRT 10.x that a vision
model can plausibly produce (not the whole table). An operator outside it is reported, not guessed
about: the export is then not fit for an engine build. Per-operator restrictions (Resize modes,
attention masks, ...) are not checked here yet.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

TENSORRT_OPS = frozenset("""
Abs Acos Add And ArgMax ArgMin Asin Atan AveragePool BatchNormalization Cast Ceil Clip Concat Constant
ConstantOfShape Conv ConvTranspose Cos CumSum DepthToSpace Div Einsum Elu Equal Erf Exp Expand Flatten
Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual
GroupNormalization HardSigmoid HardSwish Identity InstanceNormalization LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax MatMul Max MaxPool Mean Min Mod Mul Neg Not Or Pad Pow PRelu Range Reciprocal
ReduceL1 ReduceL2 ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
Reshape Resize Round ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Trilu Unsqueeze Where Xor
""".split())


def graph_ops(path: str | Path) -> Counter:
    """Operator type -> count over the graph (and its subgraphs' nodes at the top level)."""
    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def unsupported_ops(path: str | Path) -> dict[str, int]:
    """Operators of the graph outside TENSORRT_OPS (empty when the parser takes them all)."""
    return {op: n for op, n in graph_ops(path).items() if op not in TENSORRT_OPS}
