"""The same end-to-end path for every registered model: tiny train -> bundle -> parity -> ONNX Runtime
-> stream, parametrized over the registry (a new model without a tiny configuration fails here).

Model-specific checks live in the model's own files (test_models_end_to_end.py, test_diffusion_end_to_end.py,
test_end_to_end.py for SimpleNet's training details); the models are trained once per session
(conftest.tiny_trained).
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import edge_ad
from edge_ad.bundle import read_bundle
from edge_ad.cli import main
from edge_ad.data.synthetic import write_conveyor_video
from edge_ad.models import list_models
from edge_ad_export.opcheck import errors

from conftest import TINY_MODELS


def test_every_registered_model_has_a_tiny_configuration() -> None:
    assert sorted(TINY_MODELS) == sorted(list_models())


@pytest.fixture(scope="module", params=sorted(list_models()))
def trained(request, tiny_trained) -> dict:
    return tiny_trained(request.param)


def test_training_reports_metrics_and_the_run(trained) -> None:
    m = trained["metrics"]
    assert all(0 <= m[k] <= 1 for k in ("image_auroc", "pixel_auroc"))
    info = json.loads((trained["root"] / "run" / "run.json").read_text())
    assert info["model"] == trained["name"] and info["status"] == "complete"


def test_every_graph_matches_pytorch_and_parses_in_tensorrt(trained) -> None:
    bundle = read_bundle(trained["bundle"])
    assert bundle.model_name == trained["name"]
    parity = json.loads(bundle.file("parity.json").read_text())
    errors_by_graph = [parity["relative_max_error"]] if "relative_max_error" in parity else \
        [p["relative_max_error"] for p in parity.values()]
    assert errors_by_graph and max(errors_by_graph) < 1e-4
    graphs = list(bundle.meta["fp16"]) + list(bundle.meta["fp16"].values())
    assert len(set(graphs)) == 2 * len(bundle.meta["fp16"])
    for graph in graphs:
        assert errors(bundle.file(graph)) == [], graph


def test_fp16_twins_measured_by_running_both(trained) -> None:
    """Each FP32 graph and its FP16 twin on the same inputs: finite, close, same ranking of outputs."""
    bundle = read_bundle(trained["bundle"])
    rng = np.random.default_rng(5)
    for full_name, half_name in bundle.meta["fp16"].items():
        sessions = [ort.InferenceSession(str(bundle.file(g)), providers=["CPUExecutionProvider"])
                    for g in (full_name, half_name)]
        feeds = {}
        for spec in sessions[0].get_inputs():
            shape = [6 if not isinstance(d, int) else d for d in spec.shape]
            feeds[spec.name] = (rng.integers(0, 256, shape, dtype=np.uint8) if spec.type == "tensor(uint8)"
                                else rng.standard_normal(shape).astype(np.float32))
        full, half = (s.run(None, feeds)[0].astype(np.float64) for s in sessions)
        assert np.isfinite(half).all(), half_name
        assert np.abs(half - full).max() <= 2e-2 * max(np.abs(full).max(), 1e-6), half_name


def test_runtime_matches_training(trained, assert_runtime_matches_training) -> None:
    assert_runtime_matches_training(trained["root"] / "run", trained["bundle"], trained["data"])


def test_predicts_any_frame_size(trained) -> None:
    detector = edge_ad.load(trained["bundle"], backend="onnxruntime-cpu")
    for shape in ((240, 320, 3), (97, 61, 3), (64, 64)):
        frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        result = detector.predict(frame)
        assert result.heatmap.shape == shape[:2] and np.isfinite(result.score)
        assert result.is_anomalous == (result.score > detector.threshold)


def test_streams_a_video_from_the_cli_and_the_api(trained, tmp_path) -> None:
    video = tmp_path / "belt.mp4"
    write_conveyor_video(video, frames=6, seed=0)
    events = tmp_path / "ev.jsonl"
    args = ["stream", str(trained["bundle"]), "--source", str(video), "--events", str(events),
            "--backend", "onnxruntime-cpu", "--events-frames", "all"]
    if trained["name"] == "diffad":
        args += ["--steps", "2"]
    assert main(args) == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["event"] for e in lines].count("frame") + [e["event"] for e in lines].count("anomaly") == 6
    assert lines[-1]["event"] == "summary"
    stream = edge_ad.load(trained["bundle"], backend="onnxruntime-cpu").stream(str(video))
    scores = [item.result.score for item in stream]
    assert len(scores) == 6 and stream.summary()["corrupt"] == 0 and np.isfinite(scores).all()


def test_runtime_runs_without_torch(trained, run_without_torch) -> None:
    frame = np.full((100, 120, 3), 128, np.uint8)
    out = run_without_torch(f"""
        import numpy as np
        import edge_ad
        det = edge_ad.load({str(trained['bundle'])!r}, backend="onnxruntime-cpu")
        print("ok", repr(det.predict(np.full((100, 120, 3), 128, np.uint8)).score))
    """)
    word, score = out.split()
    want = edge_ad.load(trained["bundle"], backend="onnxruntime-cpu").predict(frame).score
    assert word == "ok" and float(score) == pytest.approx(want, rel=1e-6)
