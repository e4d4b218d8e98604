"""INT8 Q/DQ graphs (`edge-ad export --int8`, export/edge_ad_export/int8.py): written, listed, run by ONNX Runtime
and OpenVINO with precision="int8", and refused, with no bundle left, when they change a verdict."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

import edge_ad
from edge_ad.bundle import BundleError, read_bundle
from edge_ad.models import create_model
from edge_ad.runtime.preprocess import Geometry
from edge_ad_export.exporter import export_model
from edge_ad_export.int8 import check_int8, quantize_int8
from edge_ad_export.parity import ParityError

TINY = {"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32, "pretrained": False}


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)          # structured 64 x 64 images


def _export(out: Path, threshold: float):
    import torch

    torch.manual_seed(0)
    model = create_model("simplenet", **TINY).eval()
    calibration = {"image_threshold": threshold, "image_norm": [0.0, 2.0], "pixel_threshold": 1.0,
                   "pixel_norm": [0.0, 2.0], "normal_images": 0, "note": "test"}
    return export_model(model, out, name="simplenet", geometry=Geometry((72, 72), (64, 64)), calibration=calibration,
                        images=_images(2, 0), int8_images=(_images(16, 1), _images(12, 2)))


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("int8") / "bundle", threshold=1e9).path     # nothing flagged: no flips


def test_the_int8_graph_is_qdq_listed_and_checked(int8_bundle) -> None:
    bundle = read_bundle(int8_bundle)
    assert bundle.meta["int8"] == {"model.onnx": "model.int8.onnx"} and "model.int8.onnx" in bundle.meta["files"]
    ops = [n.op_type for n in onnx.load(str(bundle.file("model.int8.onnx"))).graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    report = __import__("json").loads(bundle.file("parity.json").read_text())["int8"]["model.onnx"]
    check = report["check"]
    assert check["images"] == 12 and check["shape_same"] and check["finite"] and check["verdict_flips"] == 0
    assert report["calibration_images"] == 16


def test_onnxruntime_runs_it_close_to_fp32(int8_bundle) -> None:
    frames = list(_images(4, 3))
    with edge_ad.load(int8_bundle, "onnxruntime-cpu") as fp32, \
            edge_ad.load(int8_bundle, "onnxruntime-cpu", precision="int8") as int8:
        a, b = fp32.heatmaps(np.stack(frames), maps=False)[1], int8.heatmaps(np.stack(frames), maps=False)[1]
        assert int8.backend.session._model_path.endswith("model.int8.onnx")
    assert np.isfinite(b).all() and not np.array_equal(a, b)                 # really another graph
    assert np.abs(a - b).max() <= 0.5 * max(float(np.ptp(a)), float(np.abs(a).max()))


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_openvino_runs_the_same_int8_graph(int8_bundle) -> None:
    batch = _images(4, 3)
    with edge_ad.load(int8_bundle, "onnxruntime-cpu", precision="int8") as ort, \
            edge_ad.load(int8_bundle, "openvino-cpu", precision="int8") as ov:
        a, b = ort.heatmaps(batch, maps=False)[1], ov.heatmaps(batch, maps=False)[1]
        assert ov.backend.precision == "int8"
    # the same Q/DQ graph, two INT8 kernel libraries (rounding differs): measured 15% of the spread apart here
    assert np.isfinite(b).all() and np.abs(a - b).max() <= 0.3 * max(float(np.ptp(a)), 1e-6)


def test_a_bundle_without_it_says_how_to_get_one(tiny_bundle) -> None:
    with pytest.raises(BundleError, match="--int8"):
        edge_ad.load(tiny_bundle, "onnxruntime-cpu", precision="int8")


def test_an_int8_graph_that_flips_a_verdict_is_refused_and_no_bundle_is_left(int8_bundle, tmp_path) -> None:
    """The threshold put between an image's FP32 and INT8 scores: that image's verdict flips."""
    from edge_ad.postprocess import HeatmapSpec

    bundle = read_bundle(int8_bundle)
    spec = HeatmapSpec.from_meta(bundle.meta["heatmap"])
    images = _images(12, 2)
    probe = tmp_path / "probe.int8.onnx"
    quantize_int8(bundle.file("model.onnx"), probe, "images", _images(16, 1), {})
    import onnxruntime as ort

    scores = []
    for path in (bundle.file("model.onnx"), probe):
        raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
        scores.append(np.asarray(spec.apply(raw)[1], dtype=np.float64))
    worst = int(np.argmax(np.abs(scores[0] - scores[1])))
    threshold = float((scores[0][worst] + scores[1][worst]) / 2)
    assert check_int8(bundle.file("model.onnx"), probe, "images", images, {}, spec, threshold)["verdict_flips"] >= 1
    out = tmp_path / "refused"
    with pytest.raises(ParityError, match="changes .* verdicts"):
        _export(out, threshold)
    assert not out.exists() and not list(tmp_path.glob("refused*"))

