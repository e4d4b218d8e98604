"""Backends beside ONNX Runtime: torch (CPU here; CUDA FP16 + graphs on a GPU), TensorRT (where installed),
the choice of backend, and the engine store of a bundle (device keys, names, checksums, the cache)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edge_ad
from edge_ad.bundle import BundleError, read_bundle
from edge_ad.data.synthetic import Counts, make_category
from edge_ad.runtime.engines import DeviceKey, EngineSpec, engine_name, find_engine, store_engine
from edge_ad.runtime.tensorrt import tensorrt_missing
from edge_ad.training.run import TrainConfig, train
from edge_ad.runtime.engine_builder import parse_batches, stream_profile

TINY = {"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32}
ORIN = DeviceKey("NVIDIA Jetson AGX Orin", "8.7", "10.3.0", "aarch64")
RTX = DeviceKey("NVIDIA GeForce RTX 3080", "8.6", "10.16.1", "x86_64")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("backends")
    data = make_category(root / "data", "washer", counts=Counts(train=8, test_good=2, test_per_defect=1), seed=2)
    train(TrainConfig(data=str(data), out=str(root / "run"), epochs=1, batch_size=4, model_kwargs=TINY))
    from edge_ad_export.exporter import export_run

    return export_run(root / "run", root / "bundle").path


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(n)]


def test_torch_cpu_backend_matches_onnxruntime(bundle) -> None:
    ort, torch_cpu = edge_ad.load(bundle, backend="onnxruntime-cpu"), edge_ad.load(bundle, backend="torch-cpu")
    assert torch_cpu.backend.name == "torch" and str(torch_cpu.backend.device) == "cpu"
    prepared = np.stack([np.asarray(f[:64, :64]) for f in _frames(3)])
    want, got = ort.infer(prepared), torch_cpu.infer(prepared)
    assert got.shape == want.shape and np.abs(got - want).max() / np.abs(want).max() < 1e-4
    a, b = ort.predict(_frames(3)), torch_cpu.predict(_frames(3))
    assert np.allclose([r.score for r in a], [r.score for r in b], rtol=1e-4)
    assert np.allclose(ort.scores(_frames(3)), [r.score for r in a])


def test_torch_backend_needs_the_checkpoint(bundle, tmp_path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    meta = json.loads((copy / "meta.json").read_text())
    del meta["files"]["checkpoint.pt"]
    (copy / "meta.json").write_text(json.dumps(meta))
    (copy / "checkpoint.pt").unlink()
    with pytest.raises(BundleError, match="no checkpoint.pt"):
        edge_ad.load(copy, backend="torch-cpu")
    assert edge_ad.load(copy, backend="onnxruntime-cpu").predict(_frames(1)[0]).heatmap.shape == (90, 120)


def test_unknown_backend_lists_the_choices(bundle) -> None:
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'; use one of auto, tensorrt"):
        edge_ad.load(bundle, backend="tensorflow")


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT is usable here")
def test_without_tensorrt_auto_is_onnxruntime_and_tensorrt_says_why(bundle) -> None:
    from edge_ad.runtime.registry import openvino_for_cpu

    # on an x86-64 CPU with OpenVINO, auto keeps the faster of it and ONNX Runtime (edge_ad.runtime.auto_cpu)
    assert edge_ad.load(bundle).backend.name in (("openvino", "onnxruntime") if openvino_for_cpu() else ("onnxruntime",))
    import importlib.util
    import re

    why = (f"cannot run here: {re.escape(tensorrt_missing())}" if importlib.util.find_spec("tensorrt")
           else r"needs tensorrt, which is not installed: pip install \"edge_ad\[tensorrt\]\"")
    with pytest.raises(RuntimeError, match=why):
        edge_ad.load(bundle, backend="tensorrt")


def test_batch_profiles_parse() -> None:
    assert parse_batches("1") == (1, 1, 1) and parse_batches("1,8") == (1, 1, 8) and parse_batches("1,4,8") == (1, 4, 8)
    for bad in ("8,1", "0", "a", "1,2,3,4"):
        with pytest.raises(ValueError, match="--batch"):
            parse_batches(bad)


def test_a_stream_engine_is_optimised_for_the_batch_the_stream_runs() -> None:
    assert stream_profile(1) == (1, 1, 8) and stream_profile(4) == (1, 4, 8) and stream_profile(12) == (1, 12, 12)
    for bad in (0, -1, 2.0, True, 10**6):
        with pytest.raises(ValueError, match="stream batch"):
            stream_profile(bad)


def test_engine_names_encode_device_version_precision_and_batch() -> None:
    name = engine_name(EngineSpec("model.fp16.onnx", "fp16", 1, 8), ORIN)
    assert name == "engines/model.nvidia-jetson-agx-orin.sm87.trt10.3.0.aarch64.fp16.b1-8.engine"
    assert engine_name(EngineSpec("denoiser.fp16.onnx", max_batch=4), RTX).startswith("engines/denoiser.nvidia-geforce")
    with pytest.raises(ValueError, match="1 <= min <= max"):
        EngineSpec("model.fp16.onnx", min_batch=4, max_batch=2)


def test_engines_for_several_devices_live_in_one_bundle(bundle, tmp_path) -> None:
    """Plans are opaque bytes to the store: it must keep them checksummed, pick by device and batch."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    spec = EngineSpec("model.fp16.onnx", "fp16", 1, 8)
    b = read_bundle(copy)
    path, b = store_engine(b, spec, ORIN, b"orin plan", {"typing": "strong"})
    _, b = store_engine(b, spec, RTX, b"rtx plan", {"typing": "strong"})
    b = read_bundle(copy)                                   # checksums of both verified
    assert len(b.meta["engines"]) == 2 and path.parent == copy / "engines"
    assert find_engine(b, spec, ORIN).read_bytes() == b"orin plan"
    assert find_engine(b, EngineSpec("model.fp16.onnx", "fp16", 1, 4), RTX).read_bytes() == b"rtx plan"
    assert find_engine(b, EngineSpec("model.fp16.onnx", "fp16", 1, 16), RTX) is None      # wider than built
    assert find_engine(b, spec, DeviceKey("NVIDIA Jetson AGX Orin", "8.7", "10.7.0", "aarch64")) is None
    path.write_bytes(b"tampered")
    with pytest.raises(BundleError, match="orin.*(bytes|checksum)"):
        read_bundle(copy)


def test_engine_goes_to_the_cache_when_the_bundle_is_not_writable(bundle, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGE_AD_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "engines").write_text("a file where the engines folder would go")   # writing there fails
    spec = EngineSpec("model.fp16.onnx", "fp16", 1, 8)
    path, b = store_engine(read_bundle(copy), spec, ORIN, b"orin plan", {})
    assert str(path).startswith(str(tmp_path / "cache")) and "engines" not in b.meta.get("engines", {})
    assert find_engine(read_bundle(copy), spec, ORIN) == path
    path.write_bytes(b"tampered")
    with pytest.raises(BundleError, match="cached engine"):
        find_engine(read_bundle(copy), spec, ORIN)


@pytest.mark.gpu
def test_torch_cuda_fp16_graphs_at_batch_1_and_8(bundle) -> None:
    """Scores and heat maps against the CPU backend, and a second, different batch of the same size
    through the same captured graph: a replay that kept the first batch's input would fail."""
    cpu, gpu = edge_ad.load(bundle, backend="torch-cpu"), edge_ad.load(bundle, backend="torch-cuda")
    assert gpu.backend.device.type == "cuda"
    for n in (1, 8):
        for seed in (n, n + 100):                     # two batches of one size: one graph, replayed
            frames = _frames(n, seed=seed)
            want = cpu.predict(frames)
            got = gpu.predict(frames)
            want_scores = np.array([r.score for r in want])
            scores = np.array([r.score for r in got])
            spread = max(float(np.ptp([r.crop_map for r in want])), 1e-6)
            score_spread = max(float(np.ptp(want_scores)), 1e-6) if n > 1 else spread
            assert np.abs(scores - want_scores).max() <= 2e-2 * score_spread + 1e-3
            for a, b in zip(got, want):
                assert np.abs(a.crop_map - b.crop_map).max() <= 2e-2 * spread
            assert np.array_equal(scores, [r.score for r in gpu.predict(frames)])   # replay: same numbers
        assert got[0].heatmap.shape == (90, 120)
    assert len(gpu.backend.graphs) == 2


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engine_is_built_stored_reused_and_agrees(bundle, tmp_path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    ort = edge_ad.load(copy, backend="onnxruntime-cpu")
    trt = edge_ad.load(copy, backend="tensorrt", batch=(1, 1, 8))
    engines = read_bundle(copy).meta["engines"]
    assert len(engines) == 1 and next(iter(engines)).endswith(".fp16.b1-8.engine")
    for n in (1, 8):
        frames = _frames(n, seed=n)
        want = np.array([r.score for r in ort.predict(frames)])
        got = trt.predict(frames)
        assert np.allclose([r.score for r in got], want, rtol=2e-2, atol=1e-3)
        assert np.allclose(trt.scores(frames), [r.score for r in got])
    trt.close()
    mtime = (copy / next(iter(engines))).stat().st_mtime
    edge_ad.load(copy, backend="tensorrt", build_engine=False).close()          # found, not rebuilt
    assert (copy / next(iter(engines))).stat().st_mtime == mtime


def test_engine_cache_on_a_full_disk_says_so_and_keeps_the_bundle(bundle, tmp_path, monkeypatch) -> None:
    """The bundle is read-only and the cache's disk is full. A full disk cannot be made here, so the
    cache's write layer (engines._replace) raises ENOSPC: the one test double in this test."""
    import errno

    from edge_ad.runtime import engines

    monkeypatch.setenv("EDGE_AD_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)                       # links followed: a plain-folder bundle
    (copy / "engines").write_text("a file where the engines folder would go")   # writing there fails

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(engines, "_replace", full)
    before = read_bundle(copy).meta
    with pytest.raises(Exception, match="no space left on .*keeping the engine"):
        store_engine(read_bundle(copy), EngineSpec("model.fp16.onnx", "fp16", 1, 8), ORIN, b"orin plan", {})
    assert read_bundle(copy).meta == before
