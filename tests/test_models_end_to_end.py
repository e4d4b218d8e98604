"""MKD and UniAD through the same path as SimpleNet: train -> eval -> bundle -> ONNX Runtime -> stream.

Small configurations on tiny synthetic categories, so the whole file runs in well under a minute on
2 cores; nothing model-specific is passed to the runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edge_ad
from edge_ad.bundle import read_bundle
from edge_ad.cli import main
from edge_ad.data.synthetic import Counts, make_category, write_conveyor_video
from edge_ad.models import create_model, list_models
from edge_ad.training.run import TrainConfig, train
from edge_ad_export.exporter import export_run
from edge_ad_export.opcheck import errors

TINY = {
    "mkd": {"source": "tf_efficientnet_lite0", "image_size": 64},
    "uniad": {"backbone": "tf_efficientnet_lite0", "image_size": 96, "hidden_dim": 32, "heads": 2, "ffn_dim": 64,
              "encoder_layers": 1, "decoder_layers": 2, "neighbour_size": 3},
}
COUNTS = Counts(train=8, test_good=2, test_per_defect=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {name: make_category(root, name, counts=COUNTS, seed=2) for name in ("washer", "tiles")}


@pytest.fixture(scope="module", params=sorted(TINY))
def trained(request, data, tmp_path_factory) -> dict:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    metrics = train(TrainConfig(data=str(data["washer"]), out=str(root / "run"), model=name, epochs=2,
                                batch_size=4, model_kwargs=TINY[name]))
    bundle = export_run(root / "run", root / "bundle")
    return {"name": name, "root": root, "metrics": metrics, "bundle": bundle.path}


def test_training_reports_metrics(trained) -> None:
    m = trained["metrics"]
    assert 0 <= m["image_auroc"] <= 1 and 0 <= m["pixel_auroc"] <= 1 and 0 <= m["aupro"] <= 1
    info = json.loads((trained["root"] / "run" / "run.json").read_text())
    assert info["model"] == trained["name"] and len(info["losses"]) == 2


def test_bundle_parity_and_tensorrt_parser_operators(trained) -> None:
    bundle = read_bundle(trained["bundle"])
    assert bundle.model_name == trained["name"]
    assert json.loads(bundle.file("parity.json").read_text())["relative_max_error"] < 1e-4
    assert bundle.meta["fp16"] == {"model.onnx": "model.fp16.onnx"}
    # the FP16 twin measured here, by running both graphs on the same images, not by the exporter's flags
    import onnxruntime as ort

    size = bundle.meta["input"]["height"]
    images = np.random.default_rng(5).integers(0, 256, (6, size, size, 3), dtype=np.uint8)
    raw = {g: ort.InferenceSession(str(bundle.file(g)), providers=["CPUExecutionProvider"]).run(None, {bundle.meta["input"]["name"]: images})[0]
           for g in ("model.onnx", "model.fp16.onnx")}
    full, half = raw["model.onnx"].astype(np.float64), raw["model.fp16.onnx"].astype(np.float64)
    assert np.isfinite(half).all()
    assert np.abs(half - full).max() <= 1e-2 * np.abs(full).max()
    scores_full, scores_half = full.reshape(6, -1).max(1), half.reshape(6, -1).max(1)
    assert np.array_equal(np.argsort(scores_full), np.argsort(scores_half))
    for graph in ("model.onnx", "model.fp16.onnx"):
        assert errors(bundle.file(graph)) == [], graph


def test_bundle_predicts_and_streams(trained, tmp_path) -> None:
    detector = edge_ad.load(trained["bundle"], backend="onnxruntime-cpu")
    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    result = detector.predict(frame)
    assert result.heatmap.shape == (240, 320) and np.isfinite(result.score)
    video = tmp_path / "belt.mp4"
    write_conveyor_video(video, frames=8, seed=0)
    assert main(["stream", str(trained["bundle"]), "--source", str(video), "--events", str(tmp_path / "ev.jsonl"),
                 "--backend", "onnxruntime-cpu"]) == 0
    stream = detector.stream(str(video))
    assert sum(1 for _ in stream) == 8 and stream.summary()["corrupt"] == 0


def test_eval_reports_every_localization_mode(trained, capsys) -> None:
    assert main(["eval", str(trained["root"] / "run")]) == 0
    report = json.loads((trained["root"] / "run" / "eval.json").read_text())
    expected = ["discrepancy", "gradient"] if trained["name"] == "mkd" else ["exported"]
    assert list(report["modes"]) == expected
    for per in report["modes"].values():
        assert 0 <= per["washer"]["pixel_auroc"] <= 1
    exported = report["modes"][expected[0]]["washer"]
    assert exported["image_auroc"] == pytest.approx(trained["metrics"]["image_auroc"])


def test_unified_training_on_two_categories(data, tmp_path, capsys) -> None:
    args = ["train", "--model", "uniad", "--data", str(data["washer"]), str(data["tiles"]), "--out",
            str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--backbone", "tf_efficientnet_lite0",
            "--image-size", "96", "--no-pretrained"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["categories"]) == {"washer", "tiles"}
    per = [metrics["categories"][c]["image_auroc"] for c in ("washer", "tiles")]
    assert metrics["image_auroc"] == pytest.approx(np.mean(per))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["train_images"] + info["val_images"] == 16


def test_registry_lists_models_and_rejects_unknown_names(capsys, tmp_path) -> None:
    assert {"simplenet", "mkd", "uniad"} <= set(list_models())
    with pytest.raises(ValueError, match="available: .*mkd.*simplenet.*uniad"):
        create_model("padim")
    assert main(["train", "--model", "padim", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "unknown model 'padim'" in capsys.readouterr().err


def test_runtime_matches_training(trained, data, assert_runtime_matches_training) -> None:
    assert_runtime_matches_training(trained["root"] / "run", trained["bundle"], data["washer"])
