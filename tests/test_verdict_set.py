"""The bundle's verdict set (export/edge_ad_export/verdict_set.py, edge_ad/runtime/verdict_check.py): images
the run judged, nearest the calibrated threshold, with the FP32 scores; auto checks reduced precisions on it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import edge_ad
from edge_ad.bundle import read_bundle
from edge_ad.models import create_model
from edge_ad.runtime.preprocess import Geometry
from edge_ad.runtime.verdict_check import read_verdict_set, verdicts_kept
from edge_ad_export.exporter import export_model
from edge_ad_export.verdict_set import COUNT, nearest_of_each

TINY = {"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32, "pretrained": False}


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)


def _export(out: Path, *, int8: bool, judged: np.ndarray | None, threshold: float | None = None):
    import torch

    torch.manual_seed(0)
    model = create_model("simplenet", **TINY).eval()
    if threshold is None:                  # in the widest gap between the middle judged scores: some flagged
        with torch.no_grad():
            from edge_ad.training.adapter import UInt8Input

            raw = UInt8Input(model, model.mean, model.std)(torch.from_numpy(judged)).numpy()
        scores = np.sort(model.heatmap_spec().apply(raw)[1])[len(judged) // 5:-len(judged) // 5]
        k = int(np.argmax(np.diff(scores)))
        threshold = float(scores[k] + scores[k + 1]) / 2
    calibration = {"image_threshold": threshold, "image_norm": [threshold - 1, threshold + 1], "pixel_threshold": 1.0,
                   "pixel_norm": [0.0, 2.0], "normal_images": 0, "note": "test"}
    return export_model(model, out, name="simplenet", geometry=Geometry((72, 72), (64, 64)), calibration=calibration,
                        images=_images(2, 0), int8_images=(_images(16, 1), judged) if int8 else None,
                        verdict_images=None if judged is None else (judged, _labels(len(judged))))


def _labels(n: int) -> np.ndarray:
    """Every third image defective."""
    return (np.arange(n) % 3 == 0).astype(np.int8)


@pytest.fixture(scope="module")
def judged() -> np.ndarray:
    return _images(COUNT + 16, 2)             # more than the set keeps


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, judged) -> Path:
    return _export(tmp_path_factory.mktemp("verdicts") / "bundle", int8=False, judged=judged).path


def test_the_export_keeps_the_images_nearest_the_threshold_with_their_fp32_scores(bundle, judged) -> None:
    b = read_bundle(bundle)
    entry = b.meta["verdict_set"]
    assert entry["file"] == "verdicts.npz" and "verdicts.npz" in b.meta["files"]
    kept = min(COUNT, len(judged))
    assert entry["images"] == kept and entry["of"] == len(judged) and 0 < entry["flagged"] < kept
    check = read_verdict_set(b)
    assert check.images.shape == (kept, 64, 64, 3) and check.images.dtype == np.uint8
    assert entry["defective"] == int(check.labels.sum()) > 0
    assert check.threshold == b.meta["calibration"]["image_threshold"]
    with edge_ad.load(bundle, "onnxruntime-cpu") as det:
        everyone = det.heatmaps(judged, maps=False)[1].astype(np.float64)
        assert np.allclose(det.heatmaps(check.images, maps=False)[1], check.scores, rtol=1e-5, atol=1e-6)
    labels = _labels(len(judged))
    near = nearest_of_each(np.abs(everyone - check.threshold), labels, COUNT)
    assert np.array_equal(check.labels, labels[near])               # each image keeps its label
    for label in (0, 1):                                             # of each label, those left out lie farther
        left = np.setdiff1d(np.flatnonzero(labels == label), near)
        if len(left):
            distance = np.abs(everyone - check.threshold)
            assert distance[left].min() >= distance[np.intersect1d(near, np.flatnonzero(labels == label))].max() - 1e-9


def test_the_set_keeps_both_labels_when_the_nearest_are_all_of_one() -> None:
    distance = np.arange(10, dtype=float)
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])               # the defective ones lie farthest
    assert nearest_of_each(distance, labels, 4).tolist() == [0, 1, 6, 7]
    assert nearest_of_each(distance, labels, 20).tolist() == list(range(10))
    assert nearest_of_each(distance, np.zeros(10, int), 4).tolist() == [0, 1, 2, 3]     # one label: the nearest


def test_the_fp32_graph_keeps_every_verdict_and_a_shifted_one_does_not(bundle) -> None:
    b = read_bundle(bundle)
    check = read_verdict_set(b)
    with edge_ad.load(bundle, "onnxruntime-cpu") as det:
        same = verdicts_kept(det.backend, det.heatmap_spec, check)
        assert same["kept"] and same["flips"] == 0 and same["max_abs_diff"] < 1e-4

        class Shifted:                               # a lossier arithmetic: every raw value a little higher
            def infer(self, batch):
                return det.backend.infer(batch) + 0.5 * float(np.ptp(check.scores))

        moved = verdicts_kept(Shifted(), det.heatmap_spec, check)
        assert not moved["kept"] and moved["flips"] > 0


class Constant:
    """Maps of one value per image, in turn: a backend whose image scores are exactly those values."""

    def __init__(self, values) -> None:
        self.values = list(values)

    def infer(self, batch):
        out = np.array([self.values.pop(0) for _ in range(len(batch))], np.float32)
        return np.broadcast_to(out[:, None, None, None], (len(batch), 1, 8, 8)).copy()


def test_an_arithmetic_that_keeps_the_verdicts_but_reorders_the_images_is_refused(bundle) -> None:
    """Scores shuffled within each side of the threshold: no verdict changes, the AUROC falls."""
    from edge_ad.postprocess import HeatmapSpec

    spec = HeatmapSpec.from_meta(read_bundle(bundle).meta["heatmap"])._replace(smooth="none")
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 1], np.int8)
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])            # threshold 0.5: one error each side
    check = read_verdict_set(read_bundle(bundle))._replace(
        images=np.zeros((8, 64, 64, 3), np.uint8), scores=scores, threshold=0.5, labels=labels)
    same = verdicts_kept(Constant(scores), spec, check)
    assert same["kept"] and same["auroc"] == same["auroc_fp32"] == 15 / 16
    reordered = verdicts_kept(Constant([0.1, 0.2, 0.4, 0.3, 0.9, 0.7, 0.8, 0.6]), spec, check)
    assert reordered["flips"] == 0 and reordered["auroc"] < reordered["auroc_fp32"] and not reordered["kept"]
    better = verdicts_kept(Constant([0.1, 0.2, 0.3, 0.45, 0.55, 0.7, 0.8, 0.9]), spec, check)
    assert better["flips"] == 0 and better["kept"]                   # scores moved, order kept: passes
    unlabelled = verdicts_kept(Constant([0.1, 0.2, 0.4, 0.3, 0.9, 0.7, 0.8, 0.6]), spec,
                               check._replace(labels=None))
    assert unlabelled["kept"] and unlabelled["auroc"] is None       # verdicts only


def test_a_bundle_exported_without_the_runs_images_has_none(tmp_path) -> None:
    b = _export(tmp_path / "bundle", int8=False, judged=None, threshold=1.0)
    assert "verdict_set" not in b.meta and read_verdict_set(read_bundle(b.path)) is None


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_auto_checks_each_reduced_precision_it_considers_here(bundle, monkeypatch) -> None:
    """With a verdict set, auto also considers OpenVINO's bf16 hint (on CPUs that compute in it), and keeps
    a reduced precision only after its check passed here."""
    from edge_ad.runtime.registry import openvino_for_cpu

    if not openvino_for_cpu():
        pytest.skip("auto runs OpenVINO only on x86-64 CPUs")
    path = bundle
    with edge_ad.load(path) as det:
        probe = det.backend.auto_probe
    assert probe["timed"] and probe["picked"] in probe["candidates"]
    import openvino as ov

    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert "openvino:bf16" in probe["candidates"]
    for label, seen in probe["candidates"].items():
        reduced = not label.endswith(":fp32")
        assert seen["ms"] > 0
        if "check" in seen:                          # checked: the fastest down to the one kept
            assert (seen["check"] is not None) == reduced
    picked = probe["candidates"][probe["picked"]]
    assert picked.get("check") is None or picked["check"]["kept"]
    monkeypatch.setenv("EDGE_AD_AUTO_PROBE", "0")
    with edge_ad.load(path) as first:                # no timing: the first candidate, OpenVINO on the FP32 graph
        assert first.backend.auto_probe["picked"] == "openvino:fp32"


def test_the_check_judges_at_the_threshold_the_detector_will_use(bundle) -> None:
    """A threshold (or sensitivity) given to load() moves the verdicts the check compares: scores all moved
    up by half the set's spread flip verdicts at the calibrated threshold, none at one far above them."""
    from edge_ad.runtime import _cpu_candidates, _threshold_asked
    from edge_ad.runtime.backend import LoadOptions
    from edge_ad.runtime.registry import get_backend

    b = read_bundle(bundle)
    check = read_verdict_set(b)
    ort = get_backend("onnxruntime-cpu")
    with edge_ad.load(bundle, "onnxruntime-cpu") as det:
        class Shifted:
            def infer(self, batch):
                return det.backend.infer(batch) + 0.5 * float(np.ptp(check.scores))

        def checked(threshold):
            candidates = _cpu_candidates(ort, ort, b, LoadOptions(device="cpu"), threshold)
            return next(c for c in candidates if c.check is not None).check(Shifted())

        assert not checked(None)["kept"] and checked(None)["flips"] > 0
        far = _threshold_asked(b, 1e6, None)
        assert far == 1e6 and checked(far)["kept"] and checked(far)["flips"] == 0
    assert _threshold_asked(b, None, None) is None
    assert _threshold_asked(b, None, 0.5) == pytest.approx(check.threshold)


def test_a_plain_export_with_an_unreadable_image_still_writes_the_bundle(tiny_bundle, tmp_path) -> None:
    """The verdict set is best effort: one corrupt test image leaves the bundle without it, not unwritten
    (with --int8, which calibrates on the data, the export says what cannot be read)."""
    import json
    import shutil

    from edge_ad_export.exporter import export_run

    src = Path(tiny_bundle).parent
    run, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(src / "run", run)
    shutil.copytree(src / "data", data)
    text = (run / "run.json").read_text()
    info = json.loads(text)
    (run / "run.json").write_text(text.replace(str(src / "data"), str(data)))   # the run reads the copy
    info = json.loads((run / "run.json").read_text())
    broken = next((data / Path(info["data"]).name / "test").rglob("*.png"))
    broken.write_bytes(broken.read_bytes()[:40])
    bundle = export_run(run, tmp_path / "bundle")
    assert "verdict_set" not in bundle.meta and (tmp_path / "bundle" / "model.onnx").is_file()
    with pytest.raises(ValueError, match="cannot be read.*without --int8"):
        export_run(run, tmp_path / "bundle8", int8=True)
    assert not (tmp_path / "bundle8").exists()
