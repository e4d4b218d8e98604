"""The TensorRT operator check: each rule on a small real graph, the CLI's output and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edge_ad_export.onnx import export_graph
from edge_ad_export.opcheck import check_model, errors

FLOAT = TensorProto.FLOAT


def _model(nodes, inits=(), opset: int = 17, inputs=None, outputs=None) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])]
    outputs = outputs or [helper.make_tensor_value_info("y", FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=[numpy_helper.from_array(v, k) for k, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _problems(model: onnx.ModelProto) -> list[str]:
    return [f.problem for f in check_model(model) if f.severity == "error"]


SCALES = ("scales", np.array([1, 1, 2, 2], np.float32))


def test_a_plain_graph_passes() -> None:
    model = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")], [SCALES])
    assert check_model(model) == []


@pytest.mark.parametrize("attrs, words", [
    ({"mode": "cubic"}, "'nearest' and 'linear'"),
    ({"mode": "linear", "antialias": 1}, "antialias"),
    ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}, "coordinate_transformation_mode"),
])
def test_resize_restrictions(attrs, words) -> None:
    model = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], **attrs)], [SCALES], opset=18)
    assert any(words in p for p in _problems(model))


def test_bicubic_interpolation_from_torch_is_refused(tmp_path: Path) -> None:
    class Up(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.interpolate(x, scale_factor=2.0, mode="bicubic")

    export_graph(Up(), tmp_path / "up.onnx", {"x": torch.zeros(1, 3, 8, 8)}, ["y"])
    assert [f.op for f in errors(tmp_path / "up.onnx")] == ["Resize"]


def test_pooling_restrictions() -> None:
    dilated = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])])
    indices = _model([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2])])
    one_d = _model([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2])])
    assert any("dilated" in p for p in _problems(dilated))
    assert any("Indices" in p for p in _problems(indices))
    assert any("1-D" in p for p in _problems(one_d))


def test_group_normalization_rules() -> None:
    inits = [("s", np.ones(3, np.float32)), ("b", np.zeros(3, np.float32))]
    gn = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=1)
    problems = _problems(_model([gn], inits, opset=21))
    assert any("opset-21" in p for p in problems) and any("num_groups=1" in p for p in problems)
    gn3 = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=3)
    assert _problems(_model([gn3], inits, opset=18)) == []


def test_axes_and_k_must_be_constants() -> None:
    runtime_axes = _model([helper.make_node("Shape", ["x"], ["axes"]),
                           helper.make_node("ReduceSum", ["x", "axes"], ["y"])])
    assert any("run time" in p for p in _problems(runtime_axes))
    big_k = _model([helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=-1)], [("k", np.array([4000], np.int64))])
    assert any("K=4000" in p for p in _problems(big_k))
    constant_axes = _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"])], [("axes", np.array([1], np.int64))])
    assert _problems(constant_axes) == []


def test_dropout_in_training_mode() -> None:
    nodes = [helper.make_node("Dropout", ["x", "ratio", "train"], ["y"])]
    train = _model(nodes, [("ratio", np.array(0.5, np.float32)), ("train", np.array(True))])
    infer = _model(nodes, [("ratio", np.array(0.5, np.float32)), ("train", np.array(False))])
    assert any("inference mode" in p for p in _problems(train)) and _problems(infer) == []


@pytest.mark.parametrize("value, bad", [(-1e9, True), (-1e4, False), (-np.inf, False)])
def test_attention_mask_beyond_fp16(value, bad) -> None:
    mask = np.zeros((1, 3, 8, 8), np.float32)
    mask[..., 0] = value
    model = _model([helper.make_node("Add", ["x", "mask"], ["logits"]),
                    helper.make_node("Softmax", ["logits"], ["y"], axis=-1)], [("mask", mask)])
    assert any("FP16" in p for p in _problems(model)) == bad


def test_operators_domains_and_opset() -> None:
    assert _problems(_model([helper.make_node("NonZero", ["x"], ["y"])])) == ["not supported by the TensorRT ONNX parser"]
    custom = _model([helper.make_node("FusedConv", ["x"], ["y"], domain="com.microsoft")])
    assert "plugin" in _problems(custom)[0]
    assert "outside" in _problems(_model([helper.make_node("Relu", ["x"], ["y"])], opset=8))[0]
    warned = check_model(_model([helper.make_node("Relu", ["x"], ["y"])], opset=13))
    assert [f.severity for f in warned] == ["warning"]


ENTRY_POINTS = {"python -m": ["-m", "edge_ad_export.opcheck"], "edge-ad": ["-m", "edge_ad.cli", "opcheck"]}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_cli_exit_codes(tmp_path: Path, entry: str) -> None:
    def _cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *ENTRY_POINTS[entry], *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)

    good, bad, junk = tmp_path / "good.onnx", tmp_path / "bad.onnx", tmp_path / "junk.onnx"
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"])]), str(good))
    onnx.save(_model([helper.make_node("NonZero", ["x"], ["y"])]), str(bad))
    junk.write_bytes(b"not a graph at all")
    ok = _cli(str(good))
    assert ok.returncode == 0 and "OK for TensorRT" in ok.stdout
    failed = _cli(str(good), str(bad))
    assert failed.returncode == 1 and "NonZero" in failed.stdout and "1 unsupported" in failed.stdout
    assert _cli(str(junk)).returncode == 2 and "cannot read" in _cli(str(junk)).stderr
    assert '"op": "NonZero"' in _cli("--json", str(bad)).stdout
