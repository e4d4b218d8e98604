"""The OpenVINO backend against ONNX Runtime on the same tiny exported bundles: the f32 hint matches it,
the default hint (bf16 on CPUs that have it) stays close and says so, diffusion and SPR bundles run, the
bundle's checks are ONNX Runtime's, and `auto` picks OpenVINO on an x86-64 box without a CUDA GPU."""

from __future__ import annotations

import platform
import shutil
import threading

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (the `openvino` extra)")

import edge_ad  # noqa: E402
from edge_ad.bundle import BundleError, add_file, read_bundle  # noqa: E402
from edge_ad.runtime import registry  # noqa: E402
from edge_ad.runtime.devices import gpu_present, tensorrt_missing  # noqa: E402
from edge_ad.runtime.openvino import OpenVinoBackend, ov_core  # noqa: E402

CPU_CAPS = ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _images(n: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _pair(bundle, **ov_options):
    return (edge_ad.load(bundle, "onnxruntime-cpu").backend, edge_ad.load(bundle, "openvino-cpu", **ov_options).backend)


def _side(bundle) -> int:
    return read_bundle(bundle).meta["input"]["height"]


def _toy_graph(path, side: int = 32, dtype: str = "uint8") -> None:
    """uint8 N x side x side x 3 -> the channel mean, N x 1 x side x side."""
    import onnx
    from onnx import TensorProto, helper

    elem = {"uint8": TensorProto.UINT8, "float": TensorProto.FLOAT}[dtype]
    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("ReduceMean", ["t"], ["raw_map"], axes=[1], keepdims=1)]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("images", elem, ["batch", side, side, 3])],
                              [helper.make_tensor_value_info("raw_map", TensorProto.FLOAT, ["batch", 1, side, side])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


# ------------------------------------------------------------------------------------------- parity


def test_f32_hint_matches_onnxruntime_at_every_batch(tiny_bundle) -> None:
    ort, ovb = _pair(tiny_bundle, precision="fp32")
    assert ovb.precision == "fp32" and ovb.device == "CPU" and ovb.max_batch is None
    x = _images(3, _side(tiny_bundle))
    for batch in (x[:1], x, x[:2]):                  # the batch axis changes between calls
        want, got = ort.infer(batch), ovb.infer(batch)
        assert got.shape == want.shape and got.dtype == np.float32
        assert _rel(got, want) <= 1e-4, _rel(got, want)


def test_default_hint_is_recorded_finite_and_close(tiny_bundle) -> None:
    ort, ovb = _pair(tiny_bundle)
    assert ovb.precision == ("bf16" if "BF16" in CPU_CAPS else "fp32")
    x = _images(4, _side(tiny_bundle), seed=1)
    got, want = ovb.infer(x), ort.infer(x)
    assert np.isfinite(got).all() and _rel(got, want) <= 5e-2, _rel(got, want)


@pytest.mark.skipif("BF16" not in CPU_CAPS, reason="this CPU has no bf16 arithmetic (AVX512-BF16 or AMX)")
def test_bf16_by_name_runs_in_bf16(tiny_bundle) -> None:
    ort, ovb = _pair(tiny_bundle, precision="bf16")
    x = _images(2, _side(tiny_bundle), seed=2)
    assert ovb.precision == "bf16"
    assert _rel(ovb.infer(x), ort.infer(x)) <= 5e-2


@pytest.mark.skipif("FP16" in CPU_CAPS, reason="this CPU computes in fp16")
def test_fp16_is_refused_where_the_cpu_lacks_it(tiny_bundle) -> None:
    """OpenVINO would quietly compile bf16 or f32 instead: the backend refuses and says what it offers."""
    with pytest.raises(ValueError, match=r"does not compute in fp16: it offers fp32.*precision='fp32'"):
        edge_ad.load(tiny_bundle, "openvino", precision="fp16")


def test_diffusion_bundle_runs_its_four_graphs(tiny_trained) -> None:
    bundle = tiny_trained("diffad")["bundle"]
    ort, ovb = _pair(bundle, precision="fp32")
    assert ovb.steps == ort.steps and set(ovb.compiled) == {"encoder", "denoiser", "decoder", "segmentation"}
    x = _images(2, _side(bundle), seed=3)
    want = ort.infer(x)
    for batch in (x, x[:1]):
        got = ovb.infer(batch)
        assert got.shape == want[:len(batch)].shape and _rel(got, want[:len(batch)]) <= 1e-3


def test_spr_extra_inputs_are_the_bundles_seeded_noise(tiny_trained) -> None:
    bundle = tiny_trained("spr")["bundle"]
    assert read_bundle(bundle).meta.get("graph_inputs"), "SPR's bundle lists its noise inputs"
    ort, ovb = _pair(bundle, precision="fp32")
    assert set(ovb.feeds) == set(ort.feeds)
    x = _images(2, _side(bundle), seed=4)
    for batch in (x, x[:1], x):                      # the noise stays bound as the batch changes
        assert _rel(ovb.infer(batch), ort.infer(batch)) <= 1e-4
    other = edge_ad.load(bundle, "openvino-cpu", precision="fp32", seed=123).backend
    assert _rel(other.infer(x), ovb.infer(x)) > 1e-3, "the seed reaches the noise inputs"


def test_int8_graph_is_run_when_listed(tiny_bundle, tmp_path) -> None:
    """An INT8 Q/DQ twin (made here with ONNX Runtime's quantizer) listed in meta.json's `int8` runs on
    OpenVINO, close to ONNX Runtime on the same graph."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    side = _side(copy)

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = [{"images": _images(1, side, seed=s)} for s in range(4)]

        def get_next(self):
            return self.left.pop() if self.left else None

    # Conv only: quantizing the graph's "same"-padding arithmetic (Shape/Div/Ceil) made ONNX Runtime 1.31's
    # INT8 run return 7 x 7 maps instead of 8 x 8 (OpenVINO folds that arithmetic away and kept 8 x 8).
    quantize_static(str(read_bundle(copy).file("model.onnx")), str(tmp_path / "q.onnx"), Frames(),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"])
    add_file(read_bundle(copy), "model.int8.onnx", (tmp_path / "q.onnx").read_bytes(),
             lambda meta: meta.__setitem__("int8", {"model.onnx": "model.int8.onnx"}))
    ovb = edge_ad.load(copy, "openvino", precision="int8").backend
    assert ovb.precision == "int8"
    import onnxruntime as rt

    ref = rt.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    x = _images(2, side, seed=5)
    want = ref.run(None, {"images": x})[0]
    fp32 = edge_ad.load(copy, "openvino", precision="fp32").backend.infer(x)
    got = ovb.infer(x)
    assert got.shape == want.shape == fp32.shape and np.isfinite(got).all()
    # the INT8 graph ran, not the FP32 one: nearer ONNX Runtime's INT8 answer than the FP32 graph is
    # (measured: 0.10 against 0.25 of the largest value; the two INT8 arithmetics round differently)
    assert _rel(got, want) < 0.5 * _rel(fp32, want), (_rel(got, want), _rel(fp32, want))


# ------------------------------------------------------------------------------------------- checks


def test_missing_int8_graph_says_to_re_export(tiny_bundle) -> None:
    with pytest.raises(BundleError, match=r"no INT8 graph for model\.onnx.*--int8"):
        edge_ad.load(tiny_bundle, "openvino", precision="int8")


def test_graph_input_is_checked_against_meta(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    _toy_graph(path, side=32)
    with pytest.raises(BundleError, match=r"promises uint8 \[batch, 16, 16, 3\].*re-export"):
        OpenVinoBackend(path, input_hw=(16, 16))
    assert OpenVinoBackend(path, input_hw=(32, 32)).infer(_images(2, 32)).shape == (2, 1, 32, 32)
    _toy_graph(path, dtype="float")
    with pytest.raises(BundleError, match=r"takes f32 .*as its input 'images'"):
        OpenVinoBackend(path)
    _toy_graph(path)
    with pytest.raises(BundleError, match=r"takes inputs \[\] besides the images.*provides \['noise'\]"):
        OpenVinoBackend(path, feeds={"noise": np.zeros(3, np.float32)})


def test_a_frame_of_the_wrong_size_is_refused(tiny_bundle) -> None:
    ovb = edge_ad.load(tiny_bundle, "openvino").backend
    side = _side(tiny_bundle)
    with pytest.raises(RuntimeError):
        ovb.infer(_images(1, side + 8))


def test_a_damaged_graph_is_a_bundle_error(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    _toy_graph(path)
    for data in (b"not a model at all", path.read_bytes()[:60], b""):
        path.write_bytes(data)
        with pytest.raises(BundleError, match=r"OpenVINO .* cannot load .*model\.onnx: .*re-export"):
            OpenVinoBackend(path)


def test_threads_and_latency_hint_reach_openvino(tiny_bundle) -> None:
    ovb = edge_ad.load(tiny_bundle, "openvino", threads=1).backend
    assert ovb.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(ovb.compiled.get_property("PERFORMANCE_HINT")).endswith("LATENCY")


def test_one_request_shared_by_threads_gives_each_its_own_answer(tiny_bundle) -> None:
    ovb = edge_ad.load(tiny_bundle, "openvino").backend
    side = _side(tiny_bundle)
    inputs = [_images(1 + i % 2, side, seed=10 + i) for i in range(6)]
    want = [ovb.infer(x) for x in inputs]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(3):
            got[i] = ovb.infer(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(got[i], want[i]) for i in range(len(inputs)))


@pytest.mark.skipif("GPU" in ov_core().available_devices, reason="OpenVINO sees an Intel GPU here")
def test_openvino_gpu_without_a_gpu_says_what_to_use(tiny_bundle) -> None:
    with pytest.raises(RuntimeError, match=r"OpenVINO sees no GPU here.*backend='openvino-cpu'"):
        edge_ad.load(tiny_bundle, "openvino-gpu")


# ------------------------------------------------------------------------------------ auto and load


X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.skipif(tensorrt_missing() is None or gpu_present() or not X86,
                    reason="auto picks OpenVINO on x86-64 boxes without a CUDA GPU")
def test_auto_is_openvino_at_fp32_here(tiny_bundle, monkeypatch) -> None:
    entry = registry.resolve("auto")
    assert entry.name == "openvino" and entry.precision == "fp32"
    monkeypatch.setenv("EDGE_AD_AUTO_PROBE", "0")       # no timing of OpenVINO against ONNX Runtime (auto_cpu)
    detector = edge_ad.load(tiny_bundle)
    assert detector.backend.name == "openvino" and detector.backend.precision == "fp32"
    assert edge_ad.load(tiny_bundle, precision="bf16" if "BF16" in CPU_CAPS else "fp32").backend.name == "openvino"


def test_load_openvino_end_to_end_gives_a_result_with_a_heat_map(tiny_bundle) -> None:
    frame = np.random.default_rng(6).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    ov_det = edge_ad.load(tiny_bundle, "openvino", precision="fp32")
    ort_det = edge_ad.load(tiny_bundle, "onnxruntime-cpu")
    got, want = ov_det.predict(frame), ort_det.predict(frame)
    assert got.heatmap is not None and got.heatmap.shape == want.heatmap.shape == frame.shape[:2]
    assert got.score == pytest.approx(want.score, rel=1e-4, abs=1e-5)
    assert got.is_anomalous == want.is_anomalous


def test_openvino_runs_without_torch(run_without_torch, tiny_bundle) -> None:
    out = run_without_torch(f"""
        import sys
        import numpy as np
        import edge_ad
        det = edge_ad.load({str(tiny_bundle)!r}, "openvino")
        r = det.predict(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
        print(det.backend.name, r.heatmap.shape, "edge_ad_export" in sys.modules)
    """)
    assert out.split() == ["openvino", "(90,", "120)", "False"]


def test_auto_without_onnxruntime_is_openvino_and_without_openvino_onnxruntime(tiny_bundle) -> None:
    """OpenVINO is auto's only choice where ONNX Runtime is missing (any CPU); without OpenVINO, auto is
    ONNX Runtime as before. TensorRT is blocked in both: the CPU box."""
    from fakes import python_without

    code = f"""
        import edge_ad
        det = edge_ad.load({str(tiny_bundle)!r})
        probe = getattr(det.backend, "auto_probe", None)
        check = (probe["candidates"][probe["picked"]].get("check") or {{}}) if probe else {{}}
        print(det.backend.name, getattr(det.backend, "precision", "-"), check.get("kept", "unchecked"))
    """
    if not gpu_present():
        out = python_without(("onnxruntime", "tensorrt"), code, timeout=120)
        # fp32 (no check), or bf16 where this CPU computes in it and the bundle's verdict set passed here
        assert out.returncode == 0 and out.stdout.split()[0] == "openvino", out.stderr[-2000:]
        name, precision, kept = out.stdout.split()
        assert (precision, kept) in (("fp32", "unchecked"), ("bf16", "True")), out.stdout
    out = python_without(("openvino", "tensorrt"), code, timeout=120)
    assert out.returncode == 0 and out.stdout.split()[0] == "onnxruntime", out.stderr[-2000:]
