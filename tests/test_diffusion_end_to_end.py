"""SPR and DiffAD beyond the path every model shares (test_every_model.py): their graphs, seeded noise,
the DDIM step count, DiffAD's staged training, TensorRT (on a GPU).

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
from edge_ad.data.synthetic import Counts, make_category
from edge_ad.runtime.preprocess import prepare
from edge_ad.training.adapter import UInt8Input
from edge_ad.training.run import load_run
from edge_ad_export.opcheck import errors

COUNTS = Counts(train=8, test_good=2, test_per_defect=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_category(tmp_path_factory.mktemp("data"), "weave", counts=COUNTS, seed=2)


@pytest.fixture(scope="module", params=["diffad", "spr"])
def trained(request, tiny_trained) -> dict:
    return tiny_trained(request.param)


def _frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (240, 320, 3), dtype=np.uint8)


def test_each_part_is_its_own_graph(trained) -> None:
    """DiffAD: four graphs plus the whole loop in parity.json; SPR: one graph with its noise input.
    (Parity bounds and the operator check of every graph: test_every_model.py.)"""
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
