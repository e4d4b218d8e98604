"""The Triton model repository: layout, config.pbtxt against Triton's own schema (tritonclient's
model_config.proto), the ONNX model against its config, and SPR's noise frozen into the served graph;
the client's check of a served config against the bundle, and its refusal when no server answers.
The client against a real server: tests/test_triton_server.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import edge_ad
from edge_ad.bundle import read_bundle
from edge_ad.cli import main
from edge_ad.models import create_model
from edge_ad.runtime.engines import DeviceKey, EngineSpec, store_engine
from edge_ad.runtime.preprocess import Geometry
from edge_ad_export.exporter import export_model
from edge_ad.runtime.triton_served import ServedModelMismatch, ServedSpec, check_config, missing_model
from edge_ad_export.triton_repository import write_repository

CALIBRATION = {"image_threshold": 1.0, "image_norm": [0.0, 2.0], "pixel_threshold": 1.0, "pixel_norm": [0.0, 2.0],
               "normal_images": 0}
TINY = {"simplenet": {"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32},
        "spr": {"channels": (8, 16, 16), "image_size": 64, "resize_size": 72}}


@pytest.fixture(scope="module", params=sorted(TINY))
def bundle(request, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model(request.param, **TINY[request.param]).eval()
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp(request.param) / "bundle"
    return export_model(model, out, name=request.param, geometry=Geometry((72, 72), (64, 64)),
                        calibration=CALIBRATION, images=images).path


def _config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_repository_follows_tritons_schema_and_layout(bundle, tmp_path) -> None:
    b = read_bundle(bundle)
    models = write_repository(b, tmp_path / "repo", max_batch=8)
    assert [m.name for m in models] == [f"{b.model_name}_onnx"]             # no engines: no TensorRT model
    config = _config(models[0] / "config.pbtxt")                            # raises on any unknown field
    assert config.name == models[0].name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert list(config.input[0].dims) == [64, 64, 3] and config.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert config.output[0].data_type == model_config_pb2.TYPE_FP32
    graph = onnx.load(str(models[0] / "1" / "model.onnx"))
    assert [i.name for i in graph.graph.input] == [c.name for c in config.input]      # noise frozen away
    assert [o.name for o in graph.graph.output] == [c.name for c in config.output]
    out_dims = [d.dim_value or d.dim_param for d in graph.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims[0] == "batch" and len(out_dims) == 1 + len(config.output[0].dims)    # symbolic dims: any size
    assert all(isinstance(d, str) or d == c for d, c in zip(out_dims[1:], config.output[0].dims))


def test_served_graph_computes_what_the_bundle_computes(bundle, tmp_path) -> None:
    """Batch 8 through the repository's graph (what Triton's ONNX Runtime backend runs) = the detector's raw maps."""
    b = read_bundle(bundle)
    (model,) = write_repository(b, tmp_path / "repo")
    frames = np.random.default_rng(3).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    served = ort.InferenceSession(str(model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = served.run(None, {"images": frames})[0]
    want = edge_ad.load(bundle, backend="onnxruntime-cpu").infer(frames)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_engines_become_a_tensorrt_model_with_one_plan_per_compute_capability(bundle, tmp_path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    b = read_bundle(copy)
    spec = EngineSpec(b.meta["fp16"]["model.onnx"], "fp16", 1, 8)
    for key in (DeviceKey("NVIDIA GeForce RTX 3080", "8.6", "10.3.0", "x86_64"),
                DeviceKey("NVIDIA GeForce RTX 3080", "8.6", "10.16.1", "x86_64"),
                DeviceKey("NVIDIA H100", "9.0", "10.16.1", "x86_64")):
        _, b = store_engine(b, spec, key, f"plan for {key.gpu} {key.tensorrt}".encode(), {})
    models = write_repository(b, tmp_path / "repo")
    if b.meta.get("graph_inputs"):                     # SPR: the plan keeps `noise` as an input
        assert [m.name for m in models] == ["spr_onnx"]
        return
    trt = models[1]
    config = _config(trt / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and dict(config.cc_model_filenames) == {
        "8.6": f"{b.model_name}.sm86.plan", "9.0": f"{b.model_name}.sm90.plan"}
    assert (trt / "1" / f"{b.model_name}.sm86.plan").read_bytes() == b"plan for NVIDIA GeForce RTX 3080 10.16.1"


def test_cli_writes_the_repository_and_the_client_says_when_no_server_answers(bundle, tmp_path, capsys) -> None:
    assert main(["export", str(bundle), "--triton", str(tmp_path / "repo"), "--max-batch", "4"]) == 0
    name = read_bundle(bundle).model_name
    assert _config(tmp_path / "repo" / f"{name}_onnx" / "config.pbtxt").max_batch_size == 4
    assert main(["export", str(bundle), "--engine"]) == 2
    assert "TensorRT" in capsys.readouterr().err
    with pytest.raises(ConnectionError, match="no Triton server answers at 127.0.0.1:9"):
        edge_ad.load(bundle, backend="triton", triton_url="127.0.0.1:9")


def test_the_client_accepts_the_exported_config_and_names_every_difference_of_another(bundle, tmp_path) -> None:
    b = read_bundle(bundle)
    (model,) = write_repository(b, tmp_path / "repo", max_batch=4)
    config = _config(model / "config.pbtxt")
    spec = ServedSpec.of(b)
    assert check_config(config, spec, model.name, "gpu:8001") == 4              # the Detector's max batch
    config.max_batch_size = 0
    config.input[0].data_type = model_config_pb2.TYPE_FP32
    config.input.add(name="noise", data_type=model_config_pb2.TYPE_FP32, dims=[3])
    del config.output[0].dims[:]
    config.output[0].dims.extend([1, 4, 4])
    with pytest.raises(ServedModelMismatch) as caught:
        check_config(config, spec, model.name, "gpu:8001")
    message = str(caught.value)
    assert f"the model '{model.name}' on the Triton server at gpu:8001 does not match the bundle {bundle}" in message
    want_map = list(b.meta["outputs"][0]["shape"][1:])
    for part in ("max_batch_size is 0", "input 'images' is TYPE_FP32 [64, 64, 3], the bundle needs TYPE_UINT8",
                 "inputs ['noise'] that the client does not send", f"output 'raw_map' is TYPE_FP32 [1, 4, 4], the "
                 f"bundle needs TYPE_FP32 {want_map}"):
        assert part in message


def test_a_missing_model_is_explained_from_the_repository_index(bundle) -> None:
    spec = ServedSpec.of(read_bundle(bundle))
    index = [{"name": "other_onnx", "state": "READY"},
             {"name": "spr_onnx", "state": "UNAVAILABLE", "reason": "unloaded"}]
    message = str(missing_model(index, ["spr_trt", "spr_onnx"], spec, "gpu:8001"))
    assert f"the Triton server at gpu:8001 has no model ready for the bundle {bundle}" in message
    assert "'spr_trt' is not in its repository; 'spr_onnx' is in its repository but UNAVAILABLE (unloaded)" in message
    assert "it has other_onnx" in message


def test_a_plan_must_take_every_batch_triton_may_send(bundle, tmp_path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    b = read_bundle(copy)
    key = DeviceKey("NVIDIA GeForce RTX 3080", "8.6", "10.3.0", "x86_64")
    _, b = store_engine(b, EngineSpec(b.meta["fp16"]["model.onnx"], "fp16", 1, 4), key, b"plan 1..4", {})
    if b.meta.get("graph_inputs"):                     # SPR gets no TensorRT model: its engines are not looked at
        assert [m.name for m in write_repository(b, tmp_path / "repo", max_batch=8)] == ["spr_onnx"]
        return
    with pytest.raises(ValueError, match=r"no TensorRT engine takes batches 1..8 .*batch 1..4.*--batch 1,8,8"):
        write_repository(b, tmp_path / "repo", max_batch=8)
    models = write_repository(b, tmp_path / "repo", max_batch=4)
    assert [m.name for m in models] == [f"{b.model_name}_onnx", f"{b.model_name}_trt"]
