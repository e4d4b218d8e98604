"""Issue 14, training side and the Detector: a run's files always belong together (refused --out,
--overwrite, sha256-checked checkpoints, resume that reproduces and checks its settings), a full disk
during training, good-only test splits, non-finite calibration, and the Detector's bad input and
non-finite model output. Real training on a tiny synthetic category (a few seconds), real files,
real ONNX Runtime; the one test double is the write layer that simulates a full disk."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import edge_ad
from edge_ad.cli import main
from edge_ad.data.synthetic import Counts, make_category
from edge_ad.training import fit as fit_module
from edge_ad.training.calibrate import Calibration, CalibrationError, calibrate
from edge_ad.training.fit import CheckpointError, DiskFullError, write_text_atomic
from edge_ad.training.run import RunError, TrainConfig, load_run, train

TINY = {"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32, "pretrained": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_category(tmp_path_factory.mktemp("hardening") / "data", "conveyor",
                         counts=Counts(train=8, test_good=2, test_per_defect=1), seed=3)


@pytest.fixture(autouse=True)
def one_thread():
    """CPU determinism for the resume comparison (and less contention on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(data: Path, out: Path, **kw) -> dict:
    cfg = {"epochs": 1, "batch_size": 4, "model_kwargs": TINY, **kw}
    return train(TrainConfig(data=str(data), out=str(out), **cfg))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# Runs: refused --out, --overwrite, mixed files --------------------------------------------------------------

def test_existing_run_is_refused_without_resume_or_overwrite(data, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    _train(data, run)
    before = _files(run)
    with pytest.raises(RunError, match=r"already holds a training run .*--resume .*--overwrite"):
        _train(data, run, seed=1)
    assert _files(run) == before
    code = main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--image-size", "64",
                 "--resize-size", "72", "--no-pretrained"])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a training run" in err and "Traceback" not in err
    assert _files(run) == before


def test_overwrite_replaces_the_run_and_cleans_stale_temporaries(data, tmp_path) -> None:
    run = tmp_path / "run"
    _train(data, run)
    first = json.loads((run / "run.json").read_text())
    (run / "eval.json").write_text("{}")                           # the old run's evaluation
    (run / ".checkpoint.pt.999999999.partial").write_bytes(b"x" * 1000)   # a killed writer's temporary
    (run / "checkpoint.tmp").write_bytes(b"x")                     # what the old code left when killed
    (run / "notes.txt").write_text("mine")                         # not the run's: must stay
    _train(data, run, seed=1, overwrite=True)
    second = json.loads((run / "run.json").read_text())
    assert second["run_id"] != first["run_id"] and second["status"] == "complete" and second["seed"] == 1
    assert second["checkpoint_sha256"] == _sha(run / "checkpoint.pt") != first["checkpoint_sha256"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "metrics.json", "notes.txt", "run.json"]
    load_run(run)


def test_checkpoint_of_other_weights_is_refused_at_export_eval_and_resume(data, tmp_path, capsys) -> None:
    """The state a killed retrain left with the old code: run A's run.json beside run B's checkpoint."""
    a, b = tmp_path / "a", tmp_path / "b"
    _train(data, a)
    _train(data, b, seed=1)
    shutil.copy2(b / "checkpoint.pt", a / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not the checkpoint .* describes"):
        load_run(a)
    assert main(["export", str(a), "--out", str(tmp_path / "bundle")]) == 2
    assert "not the checkpoint" in capsys.readouterr().err and not (tmp_path / "bundle").exists()
    assert main(["eval", str(a)]) == 2
    assert "not the checkpoint" in capsys.readouterr().err and not (a / "eval.json").exists()
    with pytest.raises(RunError, match="belong to different trainings"):
        _train(data, a, epochs=2, resume=True)


def test_a_replaced_run_killed_before_its_first_epoch_resumes_from_scratch(data, tmp_path, caplog) -> None:
    """The moment after --overwrite marked the new run as training and before it removed the old
    checkpoint: the run is refused for export, and --resume starts it from epoch 0 (never on the old weights)."""
    run = tmp_path / "run"
    _train(data, run)
    old_checkpoint = _sha(run / "checkpoint.pt")
    info = json.loads((run / "run.json").read_text())
    info.update(run_id="0" * 32, status="training", epochs_done=0, checkpoint_sha256=None)
    for key in ("calibration", "metrics", "losses"):
        info.pop(key, None)
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunError, match="has not finished training"):
        load_run(run)
    with caplog.at_level(logging.WARNING):
        _train(data, run, resume=True)
    assert "belongs to the run this one replaced" in caplog.text
    done = json.loads((run / "run.json").read_text())
    assert done["status"] == "complete" and done["run_id"] == "0" * 32
    assert _sha(run / "checkpoint.pt") != old_checkpoint and len(done["losses"]) == 1
    load_run(run)


def test_out_that_is_a_file_or_inside_the_data_is_refused(data, tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="not a folder"):
        _train(data, tmp_path / "file")
    with pytest.raises(RunError, match="inside the data folder"):
        _train(data, data / "run")
    assert not (data / "run").exists()


# Resume -----------------------------------------------------------------------------------------------------

def test_resume_reproduces_an_uninterrupted_run_and_keeps_its_history(data, tmp_path, capsys) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train(data, straight, epochs=2)
    _train(data, resumed, epochs=1)
    _train(data, resumed, epochs=2, resume=True)
    assert "resuming after epoch 1 of 2" in capsys.readouterr().out
    a, b = json.loads((straight / "run.json").read_text()), json.loads((resumed / "run.json").read_text())
    assert len(b["losses"]) == 2 and b["resumed_at"] == [1] and b["epochs_done"] == 2
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-6, atol=0)
    (_, ma), (_, mb) = load_run(straight), load_run(resumed)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sb[key], sa[key], rtol=1e-6, atol=1e-7, msg=key)
    assert b["calibration"]["image_threshold"] == pytest.approx(a["calibration"]["image_threshold"], rel=1e-6)


def test_resume_with_other_settings_says_what_differs(data, tmp_path) -> None:
    run = tmp_path / "run"
    _train(data, run)
    before = _files(run)
    with pytest.raises(RunError, match=r"image_size: run 64, arguments 72.*resize_size: run 72, arguments 80"):
        _train(data, run, epochs=2, resume=True, model_kwargs={**TINY, "image_size": 72, "resize_size": 80})
    with pytest.raises(RunError, match=r"batch_size: run 4, arguments 2"):
        _train(data, run, epochs=2, resume=True, batch_size=2)
    with pytest.raises(RunError, match=r"model: run 'simplenet', arguments 'mkd'"):
        _train(data, run, epochs=2, resume=True, model="mkd", model_kwargs={"image_size": 64, "resize_size": 72,
                                                                              "pretrained": False})
    assert _files(run) == before


def test_resume_without_a_run_says_so(data, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        _train(data, tmp_path / "none", resume=True)
    with pytest.raises(ValueError, match="give one of them"):
        _train(data, tmp_path / "none", resume=True, overwrite=True)


from fakes import FullDisk as _FullDisk  # noqa: E402 - the one test double for a full disk

# Full disk --------------------------------------------------------------------------------------------------



def _disk_fills_after(monkeypatch, room: int, names: tuple[str, ...] = ("checkpoint.pt",)) -> None:
    real = fit_module._open_for_write

    def opener(path: Path):
        return _FullDisk(path, room) if any(path.name.startswith(f".{n}.") for n in names) else real(path)

    monkeypatch.setattr(fit_module, "_open_for_write", opener)


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(data, tmp_path, monkeypatch, capsys) -> None:
    """A full disk cannot be made here: the write layer (`fit._open_for_write`) is replaced by a real
    file that raises OSError(ENOSPC) after 100 kB, the one test double of this file."""
    run = tmp_path / "run"
    _train(data, run)
    checkpoint = _sha(run / "checkpoint.pt")
    _disk_fills_after(monkeypatch, 100_000)
    with pytest.raises(DiskFullError, match=f"no space left on {run.resolve()}") as caught:
        _train(data, run, epochs=2, resume=True)
    assert caught.value.errno == errno.ENOSPC and "previous checkpoint.pt is kept" in str(caught.value)
    assert _sha(run / "checkpoint.pt") == checkpoint
    assert not [p for p in run.iterdir() if p.name.endswith(".partial")]
    info = json.loads((run / "run.json").read_text())       # partial, and it names the checkpoint still there
    assert info["status"] == "training" and info["checkpoint_sha256"] == checkpoint
    fresh = tmp_path / "fresh"                               # the CLI: one line, no torch message, no traceback
    assert main(["train", "--data", str(data), "--out", str(fresh), "--epochs", "1", "--batch-size", "4",
                 "--image-size", "64", "--resize-size", "72", "--no-pretrained"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"edge-ad train: error: no space left on {fresh.resolve()}")
    assert "unexpected pos" not in err and not (fresh / "checkpoint.pt").exists()
    assert [p.name for p in fresh.iterdir()] == ["run.json"]
    monkeypatch.undo()                                       # space again: the same command finishes the run
    _train(data, run, epochs=2, resume=True)
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    load_run(run)


def test_full_disk_writing_run_json_keeps_the_old_one(tmp_path, monkeypatch) -> None:
    """Same double at the write layer; the text files of a run go through it too."""
    path = tmp_path / "run.json"
    write_text_atomic(path, '{"old": true}\n')
    _disk_fills_after(monkeypatch, 10, names=("run.json",))
    with pytest.raises(DiskFullError, match="no space left on"):
        write_text_atomic(path, json.dumps({"new": "x" * 1000}))
    assert path.read_text() == '{"old": true}\n' and [p.name for p in tmp_path.iterdir()] == ["run.json"]


# Good-only and defect-only test splits ----------------------------------------------------------------------

def _split_copy(data: Path, tmp_path: Path, keep: str) -> Path:
    copy = tmp_path / "category"
    shutil.copytree(data, copy)
    for folder in (copy / "test").iterdir():
        if (folder.name == "good") != (keep == "good"):
            shutil.rmtree(folder)
    if keep == "good":
        shutil.rmtree(copy / "ground_truth")
    return copy


def test_good_only_test_split_trains_calibrates_writes_and_exports(data, tmp_path, caplog) -> None:
    category = _split_copy(data, tmp_path, keep="good")
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        result = _train(category, run)
    assert "has no defect images" in caplog.text and "still trained, calibrated and written" in caplog.text
    assert result["image_auroc"] is None and result["pixel_auroc"] is None and result["aupro"] is None
    assert "no anomalous" in result["absent"]["image_auroc"]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and "calibration" in info and info["metrics"]["image_auroc"] is None
    assert json.loads((run / "metrics.json").read_text())["absent"]
    from edge_ad.training.evaluate import evaluate_run
    from edge_ad_export.exporter import export_run

    report = evaluate_run(run)
    assert report["modes"]["exported"]["category"]["image_auroc"] is None
    bundle = export_run(run, tmp_path / "bundle")
    result = edge_ad.load(bundle.path, backend="onnxruntime-cpu").predict(np.full((80, 90, 3), 128, np.uint8))
    assert math.isfinite(result.score)


def test_defect_only_test_split_has_pixel_metrics_but_no_image_auroc(data, tmp_path) -> None:
    result = _train(_split_copy(data, tmp_path, keep="defects"), tmp_path / "run")
    assert result["image_auroc"] is None and "no normal" in result["absent"]["image_auroc"]
    assert 0.0 <= result["pixel_auroc"] <= 1.0 and result["per_defect_image_auroc"] == {}
    load_run(tmp_path / "run")


# Non-finite calibration -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_validation_scores_are_refused(bad) -> None:
    with pytest.raises(CalibrationError, match=r"image scores of 1 of 4 validation images are not finite"):
        calibrate(np.array([0.1, bad, 0.3, 0.2]), np.zeros((4, 2, 2)))
    maps = np.zeros((3, 2, 2))
    maps[2, 1, 1] = bad
    with pytest.raises(CalibrationError, match=r"pixel maps of 1 of 3 validation images contain NaN/inf \(validation images 2\)"):
        calibrate(np.array([0.1, 0.2, 0.3]), maps)


def test_degenerate_spread_that_overflows_is_refused() -> None:
    with pytest.raises(CalibrationError, match="image_threshold|image_norm"):
        calibrate(np.array([1.7e308, -1.7e308]), np.zeros((2, 2, 2)))


@pytest.mark.parametrize("field,value,match", [
    ("image_threshold", float("nan"), r"calibration\.image_threshold is nan"),
    ("pixel_threshold", float("inf"), r"calibration\.pixel_threshold is inf"),
    ("image_norm", [0.5, 0.5], r"calibration\.image_norm is \(0\.5, 0\.5\)"),
    ("pixel_norm", [0.0, "1"], r"calibration\.pixel_norm\[1\] must be a number"),
    ("normal_images", 1, r"calibration\.normal_images is 1"),
])
def test_stored_calibration_is_checked_field_by_field(field, value, match) -> None:
    good = Calibration(1.0, (0.0, 2.0), 0.5, (0.0, 1.0), 4).to_dict()
    with pytest.raises(CalibrationError, match=match):
        Calibration.from_dict({**good, field: value})
    missing = dict(good)
    del missing[field]
    with pytest.raises(CalibrationError, match=rf"calibration\.{field} is missing"):
        Calibration.from_dict(missing)


def test_run_with_a_nan_threshold_is_refused_at_load_and_export(data, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    _train(data, run)
    info = json.loads((run / "run.json").read_text())
    info["calibration"]["image_threshold"] = float("nan")
    (run / "run.json").write_text(json.dumps(info))            # Python writes the NaN token
    with pytest.raises(CalibrationError, match=r"calibration\.image_threshold is nan"):
        load_run(run)
    assert main(["export", str(run), "--out", str(tmp_path / "bundle")]) == 2
    assert "image_threshold is nan" in capsys.readouterr().err and not (tmp_path / "bundle").exists()


# The Detector: bad input, non-finite model output -----------------------------------------------------------

def _nan_graph(path: Path) -> None:
    """A real ONNX graph, uint8 N x H x W x 3 -> N x 1 x H x W: the pixel mean over channels divided by
    itself, so a black image gives NaN (0/0) and any other 1.0."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["m"], axes=[3], keepdims=1),
             helper.make_node("Transpose", ["m"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Div", ["t", "t"], ["maps"])]
    graph = helper.make_graph(nodes, "nan", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 64, 64, 3])],
                              [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["N", 1, 64, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8                                     # what any ONNX Runtime of the constraints reads
    onnx.save(model, path)


@pytest.fixture
def nan_detector(tiny_bundle, tmp_path):
    from edge_ad.bundle import read_bundle
    from edge_ad.runtime.detector import Detector
    from edge_ad.runtime.onnxruntime import OrtBackend

    _nan_graph(tmp_path / "nan.onnx")
    return Detector(read_bundle(tiny_bundle), OrtBackend(tmp_path / "nan.onnx", device="cpu"))


def test_non_finite_model_output_is_an_error_for_that_frame_never_normal(nan_detector) -> None:
    from edge_ad.runtime.result import InferenceError

    # square frames: the letterbox fit pads nothing (its black padding would be NaN in this graph)
    black, grey = np.zeros((80, 80, 3), np.uint8), np.full((80, 80, 3), 100, np.uint8)
    with pytest.raises(InferenceError, match=r"not finite \(NaN/inf\) for image\(s\) 0, 2 of this batch of 3") as caught:
        nan_detector.predict([black, grey, black])
    assert caught.value.indices == [0, 2] and isinstance(caught.value, ValueError)
    assert caught.value.results[0] is None and caught.value.results[2] is None
    assert math.isfinite(caught.value.results[1].score)
    with pytest.raises(InferenceError):
        nan_detector.predict(black)
    with pytest.raises(InferenceError):
        nan_detector.scores([grey, black])
    assert math.isfinite(nan_detector.predict(grey).score)


def test_predict_reads_paths_and_refuses_what_is_not_an_image(tiny_bundle, tmp_path) -> None:
    import cv2

    from edge_ad.imaging import ImageReadError

    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    bgr = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "part.png"), bgr)
    expected = det.predict(bgr).score
    assert det.predict(str(tmp_path / "part.png")).score == pytest.approx(expected, rel=1e-6)
    assert det.predict(tmp_path / "part.png").score == pytest.approx(expected, rel=1e-6)
    both = det.predict([tmp_path / "part.png", bgr[..., ::-1].copy()], color="rgb")
    assert [r.score for r in both] == pytest.approx([expected, expected], rel=1e-6)
    with pytest.raises(TypeError, match="got None"):
        det.predict(None)
    with pytest.raises(TypeError, match="image 1: .*got NoneType"):
        det.predict([bgr, None])
    with pytest.raises(ImageReadError, match="not found"):
        det.predict(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="4-D array"):
        det.predict(np.zeros((2, 64, 64, 3), np.uint8))
    for color in ("XYZ", "", 3, "BRG"):
        with pytest.raises(ValueError, match="must be 'BGR'"):
            det.predict(bgr, color=color)
    with pytest.raises(ValueError, match=r"color\[1\] must be 'BGR'"):
        det.predict([bgr, bgr], color=["RGB", "HSV"])
    with pytest.raises(ValueError, match="2 colour orders for 1 images"):
        det.predict([bgr], color=["RGB", "BGR"])


def test_detector_refuses_a_non_finite_calibration_by_name(tiny_bundle) -> None:
    from edge_ad.bundle import Bundle, BundleError, read_bundle
    from edge_ad.runtime.detector import Detector

    real = read_bundle(tiny_bundle)
    for field, value in (("image_threshold", float("nan")), ("pixel_threshold", float("inf")),
                         ("image_norm", [1.0, 1.0]), ("pixel_norm", [0.0, float("nan")])):
        meta = json.loads(json.dumps(real.meta))
        meta["calibration"][field] = value
        fake = Bundle.__new__(Bundle)
        fake.__dict__.update({**real.__dict__, "meta": meta})
        with pytest.raises(BundleError, match=rf"calibration\.{field}"):
            Detector(fake, backend=None)


def test_overlay_refuses_an_image_that_is_not_the_results(tiny_bundle) -> None:
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    frame = np.full((60, 80, 3), 90, np.uint8)
    result = det.predict(frame)
    assert result.overlay(frame, color="rgb").shape == frame.shape
    for image, match in ((np.zeros((60, 80), np.uint8), "H x W x 3 uint8"), (frame.astype(np.float32), "H x W x 3 uint8"),
                         (np.zeros((10, 10, 3), np.uint8), "pass the image the result is for"), (None, "NoneType")):
        with pytest.raises(ValueError, match=match):
            result.overlay(image)
    with pytest.raises(ValueError, match="color must be"):
        result.overlay(frame, color="HSV")


def test_a_run_folder_in_use_is_refused(data, tmp_path) -> None:
    from edge_ad.training.run import run_lock

    run = tmp_path / "run"
    with run_lock(run):
        with pytest.raises(RunError, match="being written by another"):
            _train(data, run)
    _train(data, run)


def test_export_into_the_run_folder_itself_is_refused(data, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    _train(data, run)
    before = _files(run)
    assert main(["export", str(run), "--out", str(run)]) == 2
    assert "is the run folder itself" in capsys.readouterr().err and _files(run) == before


def test_resume_to_fewer_epochs_than_trained_is_refused(data, tmp_path) -> None:
    run = tmp_path / "run"
    _train(data, run, epochs=2)
    with pytest.raises(RunError, match="already trained 2 epochs.*--epochs 2 or more"):
        _train(data, run, epochs=1, resume=True)
    load_run(run)


@pytest.mark.parametrize("model, epochs, message", [
    ("diffad", {"autoencoder": 1, "denoiser": 1}, "must name the stages"),
    ("diffad", {"autoencoder": 1, "denoiser": 1, "segmentation": 0}, "whole number >= 1"),
    ("spr", {"autoencoder": 1}, "has none"),
])
def test_epochs_per_stage_must_name_the_models_stages(data, tmp_path, model, epochs, message) -> None:
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(data=str(data), out=str(tmp_path / "run"), model=model, epochs=epochs))
    assert not (tmp_path / "run" / "model.pt").exists()


def test_non_finite_images_are_named_across_chunks_of_the_engine_maximum(nan_detector) -> None:
    """A batch larger than the backend's max_batch runs in chunks: the bad images keep their own
    positions in the caller's batch (here 1, 4 and 5 with chunks of 2), and the others keep results."""
    from edge_ad.runtime.result import InferenceError

    # square frames: the letterbox fit pads nothing (its black padding would be NaN in this graph)
    black, grey = np.zeros((80, 80, 3), np.uint8), np.full((80, 80, 3), 100, np.uint8)
    nan_detector.backend.max_batch = 2
    with pytest.raises(InferenceError, match=r"image\(s\) 1, 4, 5 of this batch of 6") as caught:
        nan_detector.predict([grey, black, grey, grey, black, black])
    assert caught.value.indices == [1, 4, 5]
    assert [r is None for r in caught.value.results] == [False, True, False, False, True, True]
    with pytest.raises(InferenceError, match=r"image\(s\) 3 of"):
        nan_detector.scores([grey, grey, grey, black])
