"""Shared fixtures and the skip rules of the gpu and tensorrt markers."""

from __future__ import annotations

import importlib.util
import textwrap
from typing import Callable

import pytest


def _cuda_reason() -> str | None:
    from edge_ad import _kernels

    if not _kernels.has_cuda:
        return "edge_ad was built without CUDA kernels"
    if _kernels.cuda_device_count() == 0:
        return f"no usable CUDA GPU: {_kernels.cuda_init_error()}"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch has no CUDA device"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_reason = _cuda_reason() if any("gpu" in item.keywords for item in items) else None
    trt_reason = None if importlib.util.find_spec("tensorrt") else "TensorRT not installed"
    for item in items:
        if "tensorrt" in item.keywords and trt_reason:
            item.add_marker(pytest.mark.skip(reason=trt_reason))     # the first reason a reader needs
        elif "gpu" in item.keywords and gpu_reason:
            item.add_marker(pytest.mark.skip(reason=gpu_reason))


@pytest.fixture
def run_without_torch() -> Callable[[str], str]:
    """Run Python code in a fresh process where importing torch raises; returns its stdout."""

    def run(code: str) -> str:
        from fakes import python_without

        out = python_without(("torch",), textwrap.dedent(code) + '\nassert "torch" not in sys.modules\n', timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    return run


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A SimpleNet bundle trained for one epoch on a tiny synthetic conveyor category (64 px):
    a real model for the stream tests, built once per session (a few seconds)."""
    from edge_ad.data.synthetic import Counts, make_category
    from edge_ad.training.run import TrainConfig, train
    from edge_ad_export.exporter import export_run

    root = tmp_path_factory.mktemp("tiny")
    data = make_category(root / "data", "conveyor", counts=Counts(train=8, test_good=2, test_per_defect=1), seed=3)
    train(TrainConfig(data=str(data), out=str(root / "run"), epochs=1, batch_size=4,
                      model_kwargs={"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32}))
    return export_run(root / "run", root / "bundle").path


@pytest.fixture
def assert_runtime_matches_training() -> Callable[..., dict]:
    """Check that a bundle on ONNX Runtime gives the training side's scores and maps on the same test
    images: the trained PyTorch model (unfolded, as evaluated after training) through
    edge_ad.training.predict.predict, against Detector.heatmaps on the bundle. The tolerance is relative
    to the largest value of each: 1e-4 by default, the export's parity bound."""

    def check(run_dir, bundle, data_dir, *, rtol: float = 1e-4) -> dict:
        import numpy as np
        import torch

        import edge_ad
        from edge_ad.data import MVTecDataset
        from edge_ad.training.adapter import UInt8Input
        from edge_ad.training.data import Prepared
        from edge_ad.training.predict import predict
        from edge_ad.training.run import load_run

        _, model = load_run(run_dir)
        det = edge_ad.load(bundle, backend="onnxruntime-cpu")
        test = Prepared(MVTecDataset(str(data_dir), "test"), det.geometry)
        images = np.stack([test[i]["image"].numpy() for i in range(len(test))])
        batch = [{"image": torch.from_numpy(images), "label": torch.zeros(len(images))}]
        want = predict(UInt8Input(model, model.mean, model.std), batch, model.heatmap_spec(), "cpu")
        maps, scores = det.heatmaps(images)
        score_scale = float(np.abs(want["scores"]).max()) or 1.0
        map_scale = float(np.abs(want["maps"]).max()) or 1.0
        score_err = float(np.abs(scores - want["scores"]).max()) / score_scale
        map_err = float(np.abs(maps - want["maps"]).max()) / map_scale
        # and small against how much the scores differ between images: a constant would miss by ~half of it
        spread_err = float(np.abs(scores - want["scores"]).max()) / max(float(np.ptp(want["scores"])), 1e-30)
        assert maps.shape == want["maps"].shape
        assert score_err <= rtol and map_err <= rtol and spread_err <= 0.05, (score_err, map_err, spread_err)
        return {"score_err": score_err, "map_err": map_err, "spread_err": spread_err}

    return check


# Tiny configurations of every registered model (a few seconds each on 2 cores): test_every_model.py fails
# when a registered model has none, so a new model gets the same end-to-end tests.
TINY_MODELS = {
    "simplenet": ("washer", 1, {"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32}),
    "mkd": ("washer", 2, {"source": "tf_efficientnet_lite0", "image_size": 64}),
    "uniad": ("washer", 2, {"backbone": "tf_efficientnet_lite0", "image_size": 96, "hidden_dim": 32, "heads": 2,
                            "ffn_dim": 64, "encoder_layers": 1, "decoder_layers": 2, "neighbour_size": 3}),
    "spr": ("weave", 1, {"channels": (8, 16, 16), "image_size": 64}),
    "diffad": ("weave", 1, {"image_size": 64, "ae_channels": (8, 16, 16), "ae_attention": False,
                            "unet_channels": (16, 32), "unet_attention": (1,), "seg_channels": (8, 16, 16)}),
}


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> Callable[[str], dict]:
    """name -> {name, root, data, metrics, bundle}: the model of TINY_MODELS trained on a tiny synthetic
    category (8 training images, seed 2) and exported, once per session whichever test asks first."""
    from edge_ad.data.synthetic import Counts, make_category
    from edge_ad.training.run import TrainConfig, train
    from edge_ad_export.exporter import export_run

    done: dict[str, dict] = {}
    data: dict[str, object] = {}

    def get(name: str) -> dict:
        if name not in done:
            category, epochs, kwargs = TINY_MODELS[name]
            if category not in data:
                data[category] = make_category(tmp_path_factory.mktemp("data"), category,
                                               counts=Counts(train=8, test_good=2, test_per_defect=1), seed=2)
            root = tmp_path_factory.mktemp(name)
            metrics = train(TrainConfig(data=str(data[category]), out=str(root / "run"), model=name, epochs=epochs,
                                        batch_size=4, model_kwargs=kwargs))
            bundle = export_run(root / "run", root / "bundle").path
            done[name] = {"name": name, "root": root, "data": data[category], "metrics": metrics, "bundle": bundle}
        return done[name]

    return get
