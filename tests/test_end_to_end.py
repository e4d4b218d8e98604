"""SimpleNet through the whole path on a tiny synthetic category: train -> bundle -> ORT -> stream."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge_ad
from edge_ad.bundle import BundleError, read_bundle
from edge_ad.cli import main
from edge_ad.data.synthetic import Counts, make_category, write_conveyor_video
from edge_ad.stream import open_source
from edge_ad.training.run import TrainConfig, train

TINY = {"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    data = make_category(root / "data", "washer", counts=Counts(train=8, test_good=2, test_per_defect=1), seed=1)
    metrics = train(TrainConfig(data=str(data), out=str(root / "run"), epochs=1, batch_size=4, model_kwargs=TINY))
    from edge_ad_export.exporter import export_run

    bundle = export_run(root / "run", root / "bundle")
    return {"root": root, "data": data, "metrics": metrics, "bundle": bundle.path}


def test_training_writes_metrics_and_checkpoint(trained) -> None:
    run = trained["root"] / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"image_auroc", "pixel_auroc", "aupro"} <= set(metrics)
    assert 0 <= metrics["image_auroc"] <= 1 and 0 <= metrics["pixel_auroc"] <= 1
    info = json.loads((run / "run.json").read_text())
    assert info["calibration"]["image_threshold"] > info["calibration"]["image_norm"][0]
    assert (run / "checkpoint.pt").is_file()


def test_resume_continues_from_the_checkpoint(trained, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained["root"] / "run", run)
    train(TrainConfig(data=str(trained["data"]), out=str(run), epochs=2, batch_size=4, resume=True, model_kwargs=TINY))
    assert "resuming after epoch 1 of 2" in capsys.readouterr().out
    assert len(json.loads((run / "run.json").read_text())["losses"]) == 2      # the history is kept


def test_bundle_contents_and_parity(trained) -> None:
    bundle = read_bundle(trained["bundle"])
    meta = bundle.meta
    assert meta["input"] == {"name": "images", "dtype": "uint8", "layout": "NHWC", "color": "RGB", "height": 64, "width": 64}
    assert set(meta["files"]) >= {"model.onnx", "checkpoint.pt", "parity.json"}
    assert all(len(f["sha256"]) == 64 for f in meta["files"].values())
    assert json.loads(bundle.file("parity.json").read_text())["relative_max_error"] < 1e-4
    from edge_ad_export.opcheck import errors

    assert errors(bundle.file("model.onnx")) == [] and errors(bundle.file("model.fp16.onnx")) == []


def test_onnx_scores_match_pytorch_after_the_kernel(trained) -> None:
    """Same images: PyTorch (unfolded model) and the bundle on ORT give the same maps and scores."""
    import torch

    from edge_ad.data import MVTecDataset
    from edge_ad.postprocess import heatmap
    from edge_ad.runtime.preprocess import prepare
    from edge_ad.training.adapter import UInt8Input
    from edge_ad_export.exporter import load_run

    info, model = load_run(trained["root"] / "run")
    detector = edge_ad.load(trained["bundle"], color="RGB", precision="fp32")   # auto may pick bf16 or INT8
    images = [MVTecDataset(trained["data"], "test")[i]["image"] for i in range(3)]
    batch = np.stack([prepare(im, detector.geometry) for im in images])
    with torch.no_grad():
        raw_torch = UInt8Input(model, model.mean, model.std)(torch.from_numpy(batch)).numpy()
    raw_ort = detector.infer(batch)
    assert np.abs(raw_ort - raw_torch).max() / np.abs(raw_torch).max() < 1e-4
    _, scores_torch = heatmap(raw_torch, 64, score_from="raw")
    results = detector.predict(images)
    np.testing.assert_allclose([r.score for r in results], scores_torch, rtol=1e-4, atol=1e-5)


def test_predict_any_size_and_colour_order(trained) -> None:
    detector = edge_ad.load(trained["bundle"])          # BGR by default, like OpenCV frames
    image = cv2.imread(str(next((trained["data"] / "test" / "good").iterdir())))
    big = cv2.resize(image, (500, 300))
    result = detector.predict(big)
    assert result.heatmap.shape == (300, 500) and result.mask.shape == (300, 500)
    assert 0 <= result.normalized_score <= 1 and isinstance(result.is_anomalous, bool)
    assert result.overlay(big).shape == (300, 500, 3)
    same = detector.predict(cv2.cvtColor(big, cv2.COLOR_BGR2RGB), color="RGB")
    assert same.score == pytest.approx(result.score, rel=1e-6)
    gray = detector.predict(cv2.cvtColor(big, cv2.COLOR_BGR2GRAY))
    assert np.isfinite(gray.score)


def test_runtime_never_imports_torch(trained, run_without_torch) -> None:
    """Load and run the bundle in a process where importing torch raises."""
    image_dir = trained["data"] / "test" / "good"
    out = run_without_torch(f"""
        import edge_ad
        det = edge_ad.load({str(trained['bundle'])!r})
        import cv2
        r = det.predict(cv2.imread({str(next(image_dir.iterdir()))!r}))
        n = sum(1 for _ in det.stream({str(image_dir)!r}))
        print("ok", r.score, n)
    """)
    word, score, count = out.split()
    image = next(image_dir.iterdir())
    import cv2

    want = edge_ad.load(trained["bundle"]).predict(cv2.imread(str(image))).score     # here, with torch around
    assert word == "ok" and float(score) == pytest.approx(want, rel=1e-6)
    assert int(count) == len(list(image_dir.iterdir()))


def test_stream_video_writes_events_and_video(trained, tmp_path) -> None:
    video = tmp_path / "belt.mp4"
    write_conveyor_video(video, frames=20, seed=0)
    code = main(["stream", str(trained["bundle"]), "--source", str(video), "--events", str(tmp_path / "ev.jsonl"),
                 "--video", str(tmp_path / "out.mp4")])
    assert code == 0
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 20
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "summary" and events[-1]["frames"] == 20
    anomalies = [e for e in events if e["event"] == "anomaly"]
    assert len(anomalies) == events[-1]["anomalous"]
    for event in anomalies:
        assert {"frame", "score", "latency_ms", "source"} <= set(event)


def test_corrupt_frame_in_video_is_skipped_and_counted(trained, tmp_path) -> None:
    """An MJPEG AVI whose 6th frame has its JPEG data destroyed: 9 frames processed, 1 counted corrupt."""
    path = tmp_path / "broken.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 96))
    rng = np.random.default_rng(0)
    for _ in range(10):
        writer.write(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(starts) >= 10
    s = starts[5]
    data[s:s + 600] = bytes(600)                     # the frame's JPEG header and tables are gone
    path.write_bytes(bytes(data))
    stream = edge_ad.load(trained["bundle"]).stream(str(path))
    indices = [item.frame.index for item in stream]
    summary = stream.summary()
    assert summary["corrupt"] == 1 and len(indices) == 9 and 5 not in indices


def test_unreadable_image_in_folder_is_skipped(trained, tmp_path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, src in enumerate(sorted((trained["data"] / "train" / "good").iterdir())[:3]):
        shutil.copy(src, folder / f"{i}.png")
    (folder / "1.png").write_bytes((folder / "1.png").read_bytes()[:200])   # truncated
    (folder / "notes.txt").write_text("not an image")
    stream = edge_ad.load(trained["bundle"]).stream(str(folder))
    names = [item.frame.name for item in stream]
    assert names == ["0.png", "2.png"]
    assert stream.summary()["corrupt"] == 2


def test_bundle_with_wrong_checksum_is_refused(trained, tmp_path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for .*model\.onnx"):
        edge_ad.load(bundle)
    assert main(["stream", str(bundle), "--source", "0"]) == 2


def test_bundle_from_another_format_version_says_so(trained, tmp_path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    meta = json.loads((bundle / "meta.json").read_text())
    meta["format_version"] = 99
    (bundle / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format 99.*re-export"):
        edge_ad.load(bundle)


def test_camera_that_does_not_exist(trained, capsys) -> None:
    with pytest.raises(ConnectionError, match="camera 57"):
        open_source(57).start()
    assert main(["stream", str(trained["bundle"]), "--source", "57"]) == 2
    assert "cannot open camera 57" in capsys.readouterr().err


def test_interrupted_export_leaves_no_bundle(trained, tmp_path, monkeypatch) -> None:
    import edge_ad_export.exporter as exporter

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "export_onnx", fail)
    with pytest.raises(KeyboardInterrupt):
        exporter.export_run(trained["root"] / "run", tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_runtime_matches_training(trained, assert_runtime_matches_training) -> None:
    assert_runtime_matches_training(trained["root"] / "run", trained["bundle"], trained["data"])
