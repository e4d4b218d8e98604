"""The FP16 tools side by side: AutoCast's graph (nvidia-modelopt, optional) passes the converter's acceptance.

The AutoCast cases skip when modelopt.onnx.autocast cannot be imported here (edge_ad_export.fp16_autocast
says how to install it); the converter runs the same cases, so each check is shown to bite on both.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edge_ad_export.fp16 import fp16_name, write_fp16
from fp16_models import Loud, Squares
from edge_ad_export.fp16_autocast import MODELOPT_PYTHON, require_autocast
from edge_ad_export.onnx import export_graph
from edge_ad_export.opcheck import errors
from edge_ad_export.parity import ParityError


def _autocast_importable() -> bool:
    try:
        return importlib.util.find_spec("modelopt.onnx.autocast") is not None
    except ImportError:                                 # `modelopt` itself missing
        return False


HAS_AUTOCAST = _autocast_importable()
NO_AUTOCAST = ("nvidia-modelopt is not importable in this interpreter: pip install nvidia-modelopt==0.47.0 "
               "onnx-graphsurgeon onnxslim onnxscript onnx-ir lief polygraphy (see edge_ad_export.fp16_autocast)")
TOOLS = ["converter", pytest.param("autocast", marks=pytest.mark.skipif(not HAS_AUTOCAST, reason=NO_AUTOCAST))]


class Cancels(nn.Module):
    """x - 1000 for float inputs near 1000: exact in FP32, but FP16's step at 1000 is 0.5, so the graph
    input's cast to FP16 (I/O types are kept) makes scores 0.1 and 0.2 both 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.permute(0, 3, 1, 2) - 1000.0).amax(dim=1, keepdim=True)


def _export(module: nn.Module, folder: Path, images: np.ndarray) -> dict:
    export_graph(module, folder / "model.onnx", {"images": torch.from_numpy(images)}, ["raw_map"])
    return {"images": images}


@pytest.fixture
def loud(tmp_path) -> tuple[Path, dict]:
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    return tmp_path, _export(Loud(), tmp_path, images)


@pytest.mark.parametrize("tool", TOOLS)
def test_the_loud_layer_stays_fp32_and_the_graph_passes(loud, tool) -> None:
    folder, feeds = loud
    report = write_fp16(folder, "model.onnx", feeds, tool=tool)
    assert report["tool"] == tool and report["fp16_overflow"] == {}
    assert "/Mul_1" in report["fp32_islands"], "the x 3e5 product must be computed in FP32"
    half = onnx.load(str(folder / fp16_name("model.onnx")))
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in half.graph.initializer if t.name.endswith("weight") and len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    check = report["check"]
    assert check["finite"] and check["scores_rank_same"] and check["relative_max_error"] < 1e-2
    assert errors(folder / "model.fp16.onnx") == []


@pytest.mark.parametrize("tool", TOOLS)
def test_an_overflowing_node_left_in_fp16_is_refused(loud, tool) -> None:
    """data_max=inf: neither tool keeps anything in FP32, and the overflow check catches the x 3e5 node."""
    folder, feeds = loud
    with pytest.raises(ParityError, match=r"/Mul_1 reaches 2\.98e\+05 .* beyond FP16"):
        write_fp16(folder, "model.onnx", feeds, tool=tool, data_max=float("inf"))


@pytest.mark.parametrize("tool", TOOLS)
def test_a_norm_that_squares_past_fp16_is_kept_fp32_or_reported(tmp_path, tool) -> None:
    """The converter keeps it FP32 (its squaring rule); AutoCast, which looks at I/O ranges only, leaves it
    in FP16, and the report says so (fp16_squares) without refusing the graph."""
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    feeds = _export(Squares(), tmp_path, images)
    report = write_fp16(tmp_path, "model.onnx", feeds, tool=tool)
    norm = "/norm/InstanceNormalization"
    if tool == "converter":
        assert "squares input" in report["fp32_islands"][norm] and report["fp16_squares"] == {}
    else:
        assert norm not in report["fp32_islands"] and 256 < report["fp16_squares"][norm] < 1e4


@pytest.mark.parametrize("tool", TOOLS)
def test_scores_that_fp16_ties_are_refused(tmp_path, tool) -> None:
    """No overflow, finite, but two images 0.1 apart (half the top score) come out equal: the rank check."""
    images = np.full((2, 8, 8, 3), 1000.0, dtype=np.float32)
    images[0, 0, 0, 0], images[1, 0, 0, 0] = 1000.1, 1000.2               # scores 0.1 and 0.2
    feeds = _export(Cancels(), tmp_path, images)
    with pytest.raises(ParityError, match="ranks the calibration images' scores differently"):
        write_fp16(tmp_path, "model.onnx", feeds, tool=tool)
    report = write_fp16(tmp_path, "model.onnx", feeds, tool=tool, ranks=False)
    assert report["fp16_overflow"] == {} and report["check"]["swapped_pairs"] == 1


def test_an_unknown_tool_is_refused(loud) -> None:
    folder, feeds = loud
    with pytest.raises(ValueError, match="choose one of converter, autocast"):
        write_fp16(folder, "model.onnx", feeds, tool="trtexec")


def test_without_modelopt_the_error_says_how_to_install(loud, monkeypatch) -> None:
    folder, feeds = loud
    monkeypatch.delenv(MODELOPT_PYTHON, raising=False)
    monkeypatch.setitem(sys.modules, "modelopt", None)                # what an interpreter without it sees
    with pytest.raises(ImportError, match=r"pip install nvidia-modelopt==0\.47\.0 .*EDGE_AD_MODELOPT_PYTHON"):
        require_autocast()
    with pytest.raises(ImportError, match=r"pip install nvidia-modelopt==0\.47\.0 .*EDGE_AD_MODELOPT_PYTHON"):
        write_fp16(folder, "model.onnx", feeds, tool="autocast")
    monkeypatch.setenv(MODELOPT_PYTHON, sys.executable)
    require_autocast()                                                # the other interpreter is its business


@pytest.mark.skipif(not HAS_AUTOCAST, reason=NO_AUTOCAST)
def test_autocast_in_another_interpreter_writes_the_same_graph(loud, monkeypatch) -> None:
    """EDGE_AD_MODELOPT_PYTHON: AutoCast runs in that interpreter (here this one, in a subprocess)."""
    folder, feeds = loud
    here = write_fp16(folder, "model.onnx", feeds, tool="autocast")
    monkeypatch.setenv(MODELOPT_PYTHON, sys.executable)
    there = write_fp16(folder, "model.onnx", feeds, tool="autocast")
    assert (here["in"], there["in"]) == ("process", "subprocess")
    assert there["fp32_islands"] == here["fp32_islands"] and there["casts"] == here["casts"]
    assert there["check"]["relative_max_error"] == pytest.approx(here["check"]["relative_max_error"])
    monkeypatch.setenv(MODELOPT_PYTHON, str(folder / "no-such-python"))
    with pytest.raises(RuntimeError, match="cannot be run"):
        write_fp16(folder, "model.onnx", feeds, tool="autocast")


class Shrinks(nn.Module):
    """A layer past FP16 (x 1e7, as a trained MKD's distances reach 2e7), whose reader brings it back down
    (a square root): the reader's own output is small, but it reads a value FP16 cannot hold."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.permute(0, 3, 1, 2).float() / 255.0)
        return torch.sqrt(y * y * 1e7 + 1.0).mean(dim=1, keepdim=True)


def test_a_node_that_reads_past_fp16_stays_fp32_even_when_its_output_is_small(tmp_path) -> None:
    images = np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    feeds = _export(Shrinks(), tmp_path, images)
    report = write_fp16(tmp_path, "model.onnx", feeds, ranks=False)
    reasons = report["fp32_islands"].values()
    assert any(r.startswith("reads ") for r in reasons), report["fp32_islands"]
    assert report["fp16_overflow"] == {} and report["check"]["finite"]
