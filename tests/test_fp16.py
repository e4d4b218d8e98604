"""The mixed FP16 graph: FP32 islands where FP16 overflows, I/O types kept, checked against FP32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edge_ad_export.fp16 import convert_fp16, fp16_name, write_fp16
from fp16_models import Loud
from edge_ad_export.onnx import export_graph
from edge_ad_export.opcheck import errors
from edge_ad_export.parity import ParityError


@pytest.fixture(scope="module")
def loud(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("fp16")
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    export_graph(Loud(), folder / "model.onnx", {"images": torch.from_numpy(images)}, ["raw_map"])
    return folder, {"images": images}


def test_overflowing_nodes_stay_fp32_and_io_types_are_kept(loud) -> None:
    folder, feeds = loud
    report = write_fp16(folder, "model.onnx", feeds)
    assert report["fp32_islands"], "the x 3e5 layer must be kept in FP32"
    assert all(why.startswith(("output", "squares", "reads")) for why in report["fp32_islands"].values())
    half = onnx.load(str(folder / fp16_name("model.onnx")))
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in half.graph.initializer if t.name.endswith("weight") and len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    check = report["check"]
    assert check["finite"] and check["scores_rank_same"] and check["relative_max_error"] < 1e-2
    assert errors(folder / "model.fp16.onnx") == []


def test_without_the_islands_fp16_overflows(loud, tmp_path) -> None:
    """The control: converting everything leaves the x 3e5 layer in FP16, and the report says so."""
    folder, feeds = loud
    report = convert_fp16(folder / "model.onnx", tmp_path / "all.fp16.onnx", feeds, data_max=float("inf"))
    assert report["fp32_islands"] == {}
    assert report["fp16_overflow"] and max(report["fp16_overflow"].values()) > 65504


def test_write_fp16_refuses_a_graph_that_breaks(loud) -> None:
    folder, feeds = loud
    with pytest.raises(ParityError, match="beyond FP16"):
        write_fp16(folder, "model.onnx", feeds, data_max=float("inf"))


def test_fp16_graph_runs_on_onnxruntime_with_the_fp32_inputs(loud) -> None:
    folder, feeds = loud
    write_fp16(folder, "model.onnx", feeds)
    session = ort.InferenceSession(str(folder / "model.fp16.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, feeds)
    assert out.dtype == np.float32 and out.shape == (4, 1, 16, 16)
