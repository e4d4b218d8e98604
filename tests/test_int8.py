"""INT8 Q/DQ graphs (`edge-ad export --int8`, export/edge_ad_export/int8.py): written, listed, run by ONNX Runtime
and OpenVINO with precision="int8", and refused, with no bundle left, when they change a verdict; the recipe's
FP32 islands and search; TensorRT's symmetric form and INT8 engine names (no GPU needed); the CLI flags."""

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
    with pytest.raises(BundleError, match="--int8.*without precision='int8'"):
        edge_ad.load(tiny_bundle, "onnxruntime-cpu", precision="int8")


def test_an_int8_graph_that_flips_a_verdict_is_refused_and_no_bundle_is_left(int8_bundle, tmp_path) -> None:
    """The threshold put between an image's FP32 and INT8 scores: that image's verdict flips."""
    from edge_ad.postprocess import HeatmapSpec

    bundle = read_bundle(int8_bundle)
    spec = HeatmapSpec.from_meta(bundle.meta["heatmap"])
    images = _images(12, 2)
    probe = tmp_path / "probe.int8.onnx"
    quantize_int8(bundle.file("model.onnx"), probe, "images", _images(16, 1), {}, spec)   # what the export writes
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



# ---------------------------------------------------------------------------------------- the recipe


def test_the_fixed_fp32_nodes_are_shape_maths_preprocessing_and_the_map_head(int8_bundle) -> None:
    """The uint8 -> float preprocessing, the TF-'same' padding's shape arithmetic and the head that writes the
    map stay FP32; the backbone's convolutions are left to the search (quantized unless it gives them back)."""
    from edge_ad_export.fp16 import name_nodes
    from edge_ad_export.int8 import fixed_fp32, node_groups

    model = name_nodes(onnx.load(str(read_bundle(int8_bundle).file("model.onnx"))))
    fixed = fixed_fp32(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    pre = {ops[n] for n, why in fixed.items() if why == "input preprocessing"}
    assert {"Transpose", "Cast"} <= pre
    assert {ops[n] for n, why in fixed.items() if why == "shape arithmetic"} >= {"Shape", "Ceil"}
    head = [n for n, why in fixed.items() if why == "anomaly-map head"]
    writer = next(n.name for n in model.graph.node if "raw_map" in n.output)
    assert writer in head and "Resize" in {ops[n] for n in head}
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert sum(n not in fixed for n in convs) >= len(convs) - 1          # all but the score conv are searchable
    groups = node_groups(model, fixed)
    assert any("conv_stem" in g for g in groups) and any("blocks.0" in g for g in groups)
    assert sorted(n for g in groups.values() for n in g) == sorted(n for n in ops if n not in fixed)


def test_the_int8_graph_keeps_the_map_shape_and_fuses_its_convolutions(int8_bundle) -> None:
    """Quantizing the padding's shape arithmetic shrank SimpleNet's map by one pixel; a shared Q/DQ pair kept
    ONNX Runtime from fusing convolutions. Here: same shape, and QLinearConv in the optimized graph."""
    import onnxruntime as ort

    bundle = read_bundle(int8_bundle)
    images = _images(2, 4)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(Path(bundle.path).parent / "optimized.onnx")
    fp32 = ort.InferenceSession(str(bundle.file("model.onnx")), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(bundle.file("model.int8.onnx")), options, providers=["CPUExecutionProvider"])
    assert int8.run(None, {"images": images})[0].shape == fp32.run(None, {"images": images})[0].shape
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert fused.count("QLinearConv") >= 10
    report = __import__("json").loads(bundle.file("parity.json").read_text())["int8"]["model.onnx"]
    assert report["activations"].startswith("uint8") and report["search"]["stopped"]
    assert report["check"]["score_rank_correlation"] > 0.5


def test_the_search_puts_the_costly_groups_that_disturb_little_in_int8_first() -> None:
    """Errors add up here; the search ranks groups by arithmetic per unit of their error alone and adds
    each one that keeps the total within the target."""
    from edge_ad_export.int8 import select_int8

    groups = {"stem": ["s"], "block": ["b1", "b2"], "head": ["h"], "tiny": ["t"], "loud": ["l"]}
    macs = {"s": 10, "b1": 100, "b2": 100, "h": 500, "t": 1, "l": 1000}
    alone = {"stem": 0.05, "block": 0.10, "head": 0.08, "tiny": 0.01, "loud": 0.9}

    def error(int8_groups: list[str]) -> float:
        return sum(alone[g] for g in int8_groups)

    found = select_int8(groups, macs, error, target=0.2)
    assert found["int8_groups"] == ["head", "block", "tiny"]   # by 500/0.08 > 200/0.1 > 10/0.05 > 1/0.01
    assert found["fp32_groups"] == ["stem", "loud"]             # stem: 0.23 with the others; loud: 0.9 alone
    assert abs(found["error"] - 0.19) < 1e-9
    assert found["int8_mac_share"] == round(701 / 1711, 4)
    assert found["alone"]["loud"] == {"error": 0.9, "macs": 1000}
    assert select_int8(groups, macs, error, target=0.0)["int8_groups"] == []


def test_a_search_short_of_time_still_tries_the_groups_it_measured() -> None:
    """Measuring each group alone may use the whole budget; the selection then still gets its own."""
    import time as clock

    from edge_ad_export.int8 import select_int8

    groups = {f"g{i}": [f"n{i}"] for i in range(6)}

    def slow(int8_groups: list[str]) -> float:
        clock.sleep(0.05)
        return 0.01 * len(int8_groups)

    found = select_int8(groups, {f"n{i}": 10 for i in range(6)}, slow, target=0.2, seconds=0.12)
    assert 1 <= len(found["alone"]) < 6 and found["int8_groups"] and "groups measured alone" in found["stopped"]


def test_the_arithmetic_of_each_weighted_node_comes_from_a_real_run(tmp_path) -> None:
    """A 3x3 convolution of 4 -> 8 channels on a 10 x 12 map: 8 * 10 * 12 outputs of 4 * 9 products each;
    a MatMul of 5 x 6 by 6 x 7: 35 outputs of 6 products."""
    from onnx import TensorProto, helper

    from edge_ad_export.int8 import weighted_macs

    w = onnx.numpy_helper.from_array(np.ones((8, 4, 3, 3), np.float32), "w")
    m = onnx.numpy_helper.from_array(np.ones((12, 7), np.float32), "m")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["y", "shape"], ["r"], name="flat"),
             helper.make_node("MatMul", ["r", "m"], ["z"], name="mm")]
    shape = onnx.numpy_helper.from_array(np.array([1, -1, 12], np.int64), "shape")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, None, None])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w, m, shape])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    macs = weighted_macs(path, "x", np.zeros((2, 4, 10, 12), np.float32), {}, list(graph.node))
    assert macs == {"conv": 8 * 10 * 12 * 4 * 9, "mm": 80 * 7 * 12}


def test_tensorrt_form_is_symmetric_int8_and_computes_the_same(int8_bundle) -> None:
    """TensorRT takes int8 pairs with zero point 0 only: the rewrite leaves no uint8 pair, keeps the
    clamping in Clips, turns int32 biases into floats, and the graph still computes what the file does."""
    import onnxruntime as ort

    from edge_ad.runtime.engine_builder import symmetric_qdq

    bundle = read_bundle(int8_bundle)
    model = symmetric_qdq(onnx.load(str(bundle.file("model.int8.onnx"))))
    onnx.checker.check_model(model)
    zero_points = [t for t in model.graph.initializer if t.name.endswith("zero_point")]
    assert zero_points and all(t.data_type == onnx.TensorProto.INT8 for t in zero_points)
    assert all(not onnx.numpy_helper.to_array(t).any() for t in zero_points)
    assert not any(t.data_type == onnx.TensorProto.INT32 for t in model.graph.initializer)
    assert any(n.op_type == "Clip" for n in model.graph.node)
    images = _images(6, 5)
    run = lambda m: ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    want, got = run(str(bundle.file("model.int8.onnx"))), run(model.SerializeToString())
    assert np.isfinite(got).all() and np.abs(got - want).max() <= 0.1 * float(np.abs(want).max())
    report = __import__("json").loads(bundle.file("parity.json").read_text())["int8"]["model.onnx"]
    assert report["tensorrt_form"]["verdict_flips"] == 0 and report["tensorrt_form"]["images"] == 12


# ------------------------------------------------------------------------------ TensorRT's side (no GPU)


def test_tensorrt_picks_the_int8_graph_and_names_its_engine_int8(int8_bundle, tiny_bundle) -> None:
    from edge_ad.runtime.engine_builder import bundle_graphs
    from edge_ad.runtime.engines import DeviceKey, EngineSpec, engine_name
    from edge_ad.runtime.tensorrt import _graph

    bundle = read_bundle(int8_bundle)
    assert _graph(bundle, "model.onnx", "int8") == ("model.int8.onnx", "int8")
    assert _graph(bundle, "model.onnx", None) == ("model.fp16.onnx", "fp16")
    assert bundle_graphs(bundle, "int8") == ["model.int8.onnx"] and bundle_graphs(bundle) == ["model.fp16.onnx"]
    key = DeviceKey("NVIDIA Orin", "8.7", "10.3.0", "aarch64")
    assert ".int8.b1-8.engine" in engine_name(EngineSpec("model.int8.onnx", "int8", 1, 8), key)
    with pytest.raises(ValueError, match="precision"):
        EngineSpec("model.int8.onnx", "int4")
    with pytest.raises(BundleError, match="--int8"):
        _graph(read_bundle(tiny_bundle), "model.onnx", "int8")
    with pytest.raises(ValueError, match="--int8"):
        bundle_graphs(read_bundle(tiny_bundle), "int8")


def test_a_bundle_may_record_an_int8_engine_and_nothing_else(int8_bundle) -> None:
    from edge_ad.bundle import validate_meta

    meta = __import__("json").loads(read_bundle(int8_bundle).file("meta.json").read_text())
    name = "engines/model.nvidia-orin.sm87.trt10.3.0.aarch64.int8.b1-8.engine"
    meta["files"][name] = {"sha256": "0" * 64, "bytes": 1}
    engine = {"device": {"gpu": "NVIDIA Orin", "compute_capability": "8.7", "tensorrt": "10.3.0", "platform": "aarch64"},
              "graph": "model.int8.onnx", "precision": "int8", "min_batch": 1, "max_batch": 8}
    meta["engines"] = {name: engine}
    validate_meta(meta, "test")
    meta["engines"][name] = {**engine, "precision": "int4"}
    with pytest.raises(BundleError, match="precision"):
        validate_meta(meta, "test")
    meta["engines"] = {}
    meta["int8"] = {"model.onnx": "model.int9.onnx"}                          # a twin the bundle does not list
    with pytest.raises(BundleError, match="int8"):
        validate_meta(meta, "test")


# ------------------------------------------------------------------------------------------------ CLI


def test_predict_runs_the_int8_graph_with_precision_int8(int8_bundle, tmp_path) -> None:
    """--precision reaches edge_ad.load: the INT8 graph scores the images differently from FP32, and a
    bundle without one fails with the re-export hint."""
    import csv

    import cv2

    from edge_ad.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(_images(3, 6)):
        cv2.imwrite(str(folder / f"{i}.png"), image[..., ::-1])
    scores = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        assert main(["predict", str(int8_bundle), str(folder), "--out", str(out), "--backend", "onnxruntime-cpu",
                     "--precision", precision]) == 0
        with open(out / "results.csv") as f:
            scores[precision] = [float(r["score"]) for r in csv.DictReader(f)]
    assert len(scores["fp32"]) == 3 and scores["fp32"] != scores["int8"]


def test_the_cli_takes_the_int8_flags() -> None:
    from edge_ad.cli import _with_precision, build_parser

    parser = build_parser()
    assert parser.parse_args(["export", "run", "--out", "b", "--int8"]).int8
    for command in (["predict", "b", "x", "--out", "o"], ["stream", "b"], ["bench", "b"]):
        assert parser.parse_args([*command, "--precision", "int8"]).precision == "int8"
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "b", "x", "--out", "o", "--precision", "int4"])
    assert _with_precision(["onnxruntime-cpu", "openvino-cpu:fp32"], "int8") == ["onnxruntime-cpu:int8", "openvino-cpu:fp32"]
    assert _with_precision(None, None) is None and all(s.endswith(":int8") for s in _with_precision(None, "int8"))


def test_export_int8_on_a_bundle_needs_engine(int8_bundle) -> None:
    from edge_ad.cli import main

    assert main(["export", str(int8_bundle), "--int8"]) != 0


def test_a_graph_left_fp32_by_the_export_runs_in_fp32(int8_bundle) -> None:
    """graph_for: the INT8 twin where the bundle lists one, the FP32 graph for a part the export left in FP32
    (the same rule for every backend)."""
    from edge_ad.runtime.precision import graph_for

    bundle = read_bundle(int8_bundle)
    assert graph_for(bundle, "model.onnx", "int8").name == "model.int8.onnx"
    assert graph_for(bundle, "decoder.onnx", "int8").name == "decoder.onnx"
    assert graph_for(bundle, "model.onnx", None).name == "model.onnx"


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_auto_on_a_cpu_box_may_pick_the_checked_int8_graph(int8_bundle, monkeypatch) -> None:
    """auto's candidates lead with the INT8 graph on OpenVINO (the probe off keeps the first); a named
    precision keeps to its graph; with the probe on, whatever wins runs and says its precision."""
    from edge_ad.runtime.registry import openvino_for_cpu

    if not openvino_for_cpu():
        pytest.skip("auto runs OpenVINO only on x86-64 CPUs")
    monkeypatch.setenv("EDGE_AD_AUTO_PROBE", "0")
    with edge_ad.load(int8_bundle) as first:
        assert (first.backend.name, first.backend.precision) == ("openvino", "int8")
    with edge_ad.load(int8_bundle, precision="fp32") as fp32:
        assert (fp32.backend.name, fp32.backend.precision) == ("openvino", "fp32")
    monkeypatch.setenv("EDGE_AD_AUTO_PROBE", "1")
    frame = _images(1, 9)[0]
    with edge_ad.load(int8_bundle) as picked, edge_ad.load(int8_bundle, "onnxruntime-cpu") as reference:
        assert picked.backend.precision in ("int8", "fp32")
        assert picked.predict(frame).score == pytest.approx(reference.predict(frame).score, abs=0.2)


def test_an_add_of_a_constant_map_stays_fp32(tmp_path) -> None:
    """OpenVINO 2026.4 cannot compile Add(DQ(x), DQ(constant map)) (UniAD's attention bias); such ops stay
    FP32, per-channel constants do not (the compile itself: benchmarks/results/cpu-peers.json's UniAD rows)."""
    from onnx import TensorProto, helper

    from edge_ad_export.int8 import fixed_fp32

    inits = [onnx.numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w"),
             onnx.numpy_helper.from_array(np.ones((1, 1, 6, 6), np.float32), "bias_map"),
             onnx.numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "per_channel")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "bias_map"], ["a"], name="add_map"),
             helper.make_node("Mul", ["a", "per_channel"], ["m"], name="mul_channel"),
             helper.make_node("Conv", ["m", "w2"], ["h"], name="conv2"),
             helper.make_node("Conv", ["h", "w3"], ["y"], name="conv3")]          # the map head
    inits += [onnx.numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w2"),
              onnx.numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "w3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 6, 6])], inits)
    fixed = fixed_fp32(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert fixed.get("add_map") == "element-wise with a constant map" and "mul_channel" not in fixed
