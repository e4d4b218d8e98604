"""SPR and DiffAD through the whole path on the CPU: train (a few steps) -> bundle -> ONNX Runtime -> stream.

DiffAD's bundle has four graphs and its DDIM loop runs in the runtime with the ddim_step kernel; both
models take seeded noise, so a still frame gives a still score and the seed is a runtime choice.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import edge_ad
from edge_ad.bundle import read_bundle
from edge_ad.cli import main
from edge_ad.data.synthetic import Counts, make_category, write_conveyor_video
from edge_ad.runtime.preprocess import prepare
from edge_ad.training.adapter import UInt8Input
from edge_ad.training.run import TrainConfig, load_run, train
from edge_ad_export.exporter import export_run
from edge_ad_export.opcheck import errors

TINY = {
    "spr": {"channels": (8, 16, 16), "image_size": 64},
    "diffad": {"image_size": 64, "ae_channels": (8, 16, 16), "ae_attention": False, "unet_channels": (16, 32),
               "unet_attention": (1,), "seg_channels": (8, 16, 16)},
}
COUNTS = Counts(train=8, test_good=2, test_per_defect=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_category(tmp_path_factory.mktemp("data"), "weave", counts=COUNTS, seed=2)


@pytest.fixture(scope="module", params=sorted(TINY))
def trained(request, data, tmp_path_factory) -> dict:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    metrics = train(TrainConfig(data=str(data), out=str(root / "run"), model=name, epochs=1, batch_size=4,
                                model_kwargs=TINY[name]))
    bundle = export_run(root / "run", root / "bundle")
    return {"name": name, "root": root, "metrics": metrics, "bundle": bundle.path}


def _frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (240, 320, 3), dtype=np.uint8)


def test_training_reports_metrics(trained) -> None:
    m = trained["metrics"]
    assert 0 <= m["image_auroc"] <= 1 and 0 <= m["pixel_auroc"] <= 1


def test_every_graph_matches_pytorch_and_parses_in_tensorrt(trained) -> None:
    bundle = read_bundle(trained["bundle"])
    parity = json.loads(bundle.file("parity.json").read_text())
    if trained["name"] == "diffad":
        assert set(parity) == {"encoder", "denoiser", "decoder", "segmentation", "pipeline"}
        assert all(p["relative_max_error"] < 1e-4 for p in parity.values())
        graphs = bundle.meta["pipeline"]["graphs"]
        assert sorted(graphs) == ["decoder", "denoiser", "encoder", "segmentation"]
        files = [bundle.file(g) for g in graphs.values()]
    else:
        assert parity["relative_max_error"] < 1e-4
        assert bundle.meta["graph_inputs"]["noise"]["shape"] == [3, 3, 64, 64]
        files = [bundle.file("model.onnx")]
    files += [bundle.file(half) for half in bundle.meta["fp16"].values()]
    assert len(files) == len(set(files)) == 2 * len(bundle.meta["fp16"])
    for f in files:
        assert errors(f) == [], f.name


def test_runtime_equals_pytorch_on_a_real_image(trained, data) -> None:
    """The detector's raw map (ONNX Runtime; for DiffAD the runtime's loop + kernel) vs the checkpoint."""
    info, model = load_run(trained["root"] / "run")
    detector = edge_ad.load(trained["bundle"], backend="onnxruntime-cpu", color="RGB")
    bgr = cv2.imread(str(next((data / "test").rglob("*.png"))))
    image = prepare(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), detector.geometry)
    steps = [1, 5, 10] if trained["name"] == "diffad" else [None]
    for s in steps:
        if s is not None:
            detector = edge_ad.load(trained["bundle"], backend="onnxruntime-cpu", steps=s)
        got = detector.infer(image[None])
        with torch.no_grad():
            wrapped = UInt8Input(model, model.mean, model.std)
            x = wrapped.normalize(torch.from_numpy(image[None]))
            expected = (model(x, steps=s) if s else model(x)).numpy()
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), s


def test_noise_seed_fixes_the_score(trained) -> None:
    frame = _frame()
    detector = edge_ad.load(trained["bundle"], backend="onnxruntime-cpu")
    first, again = detector.predict(frame).score, detector.predict(frame).score
    other = edge_ad.load(trained["bundle"], backend="onnxruntime-cpu", seed=123).predict(frame).score
    assert first == again and first != other


def test_steps_is_a_runtime_parameter(trained) -> None:
    if trained["name"] != "diffad":
        with pytest.raises(ValueError, match="no DDIM loop"):
            edge_ad.load(trained["bundle"], steps=3)
        return
    assert edge_ad.load(trained["bundle"]).backend.steps == 5
    scores = {s: edge_ad.load(trained["bundle"], steps=s).predict(_frame()).score for s in (1, 10)}
    assert scores[1] != scores[10]


def test_bundle_streams_a_video(trained, tmp_path) -> None:
    video = tmp_path / "belt.mp4"
    write_conveyor_video(video, frames=6, seed=0)
    args = ["stream", str(trained["bundle"]), "--source", str(video), "--events", str(tmp_path / "ev.jsonl"),
            "--backend", "onnxruntime-cpu"]
    if trained["name"] == "diffad":
        args += ["--steps", "2"]
    assert main(args) == 0
    stream = edge_ad.load(trained["bundle"], backend="onnxruntime-cpu").stream(str(video))
    assert sum(1 for _ in stream) == 6 and stream.summary()["corrupt"] == 0


def test_diffad_trains_stage_by_stage_from_the_cli(data, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    base = ["train", "--model", "diffad", "--data", str(data), "--out", str(run), "--epochs", "1",
            "--batch-size", "4", "--image-size", "64", "--budget", "cpu"]
    assert main(base + ["--stage", "denoiser"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(base + ["--stage", "autoencoder"]) == 0
    assert json.loads((run / "run.json").read_text())["stages_done"] == ["autoencoder"]
    assert main(["export", str(run), "--out", str(tmp_path / "b")]) == 2
    assert "has not finished training" in capsys.readouterr().err
    assert main(base + ["--stage", "segmentation"]) == 2
    assert "needs denoiser trained first" in capsys.readouterr().err
    assert main(base + ["--stage", "denoiser", "segmentation"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["stages_done"] == ["autoencoder", "denoiser", "segmentation"] and "calibration" in info
    assert 0 <= json.loads((run / "metrics.json").read_text())["image_auroc"] <= 1


def test_runtime_runs_the_loop_without_torch(trained, run_without_torch) -> None:
    """The DDIM loop, the kernel and the seeded noise in a process where importing torch raises."""
    out = run_without_torch(f"""
        import numpy as np
        import edge_ad
        det = edge_ad.load({str(trained['bundle'])!r}, backend="onnxruntime-cpu")
        r = det.predict(np.full((100, 120, 3), 128, np.uint8))
        print("ok", r.score)
    """)
    word, score = out.split()
    want = edge_ad.load(trained["bundle"], backend="onnxruntime-cpu").predict(np.full((100, 120, 3), 128, np.uint8))
    assert word == "ok" and float(score) == pytest.approx(want.score, rel=1e-6)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engines_agree_with_onnxruntime(trained, tmp_path) -> None:
    """SPR: one engine with the noise as a fixed input; DiffAD: four engines, the loop on the device."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    frames = [_frame(seed) for seed in range(4)]
    want = np.array([r.score for r in edge_ad.load(bundle, backend="onnxruntime-cpu").predict(frames)])
    with edge_ad.load(bundle, backend="tensorrt") as detector:
        got = np.array([r.score for r in detector.predict(frames)])
        again = np.array([r.score for r in detector.predict(frames)])          # the replayed CUDA graph
    assert np.allclose(got, want, rtol=5e-2, atol=1e-3) and np.array_equal(got, again)
    maps_want = edge_ad.load(bundle, backend="onnxruntime-cpu").heatmaps(np.stack([prepare(f, detector.geometry)
                                                                                  for f in frames]))[0]
    with edge_ad.load(bundle, backend="tensorrt") as detector:
        maps_got = detector.heatmaps(np.stack([prepare(f, detector.geometry) for f in frames]))[0]
    # FP16 against FP32, far tighter than the values' spread: a constant map would miss by ~half of it
    assert np.abs(maps_got - maps_want).max() <= 5e-2 * float(np.ptp(maps_want))
    assert len(read_bundle(bundle).meta["engines"]) == len(read_bundle(bundle).meta["fp16"])


def test_runtime_matches_training(trained, data, assert_runtime_matches_training) -> None:
    assert_runtime_matches_training(trained["root"] / "run", trained["bundle"], data)
