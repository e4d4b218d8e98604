"""The backend seam: the registry behind `edge_ad.load`, the Backend interface every backend implements,
the heat-map spec and DDIM plan resolved once at load, and the extra named when a library is missing."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edge_ad
from edge_ad.bundle import read_bundle
from edge_ad.postprocess import HeatmapSpec
from edge_ad.runtime import BACKENDS, Detector, registry
from edge_ad.runtime.backend import Backend, BaseBackend, LoadOptions
from edge_ad.runtime.ddim_plan import DdimPlan
from edge_ad.runtime.devices import gpu_present, tensorrt_missing
from edge_ad.runtime.noise_schedules import ddim_schedule, seeded_normal
from edge_ad.runtime.onnxruntime import open_onnxruntime

PIPELINE = {"kind": "latent_ddim", "steps": 5, "timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.02,
            "latent_shape": [4, 8, 8], "seed": 7, "clamp": None}


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(n)]


# ------------------------------------------------------------------------------------------ registry


def test_every_listed_backend_resolves_to_a_factory() -> None:
    assert BACKENDS == ("auto", "tensorrt", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "openvino",
                        "openvino-cpu", "openvino-gpu", "torch", "torch-cpu", "torch-cuda", "triton")
    for name in BACKENDS[1:]:
        entry = registry.get_backend(name)
        assert entry.name == name and callable(entry.build_factory())
    devices = {name: registry.get_backend(name).device for name in BACKENDS[1:]}
    assert devices["onnxruntime-cpu"] == "cpu" and devices["onnxruntime-cuda"] == "cuda"
    assert devices["torch-cpu"] == "cpu" and devices["torch-cuda"] == "cuda" and devices["onnxruntime"] == "auto"
    assert registry.get_backend("onnxruntime-cuda").extra == "gpu" and registry.get_backend("torch").extra == "train"


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT is usable here: auto picks it")
def test_auto_is_onnxruntime_without_tensorrt() -> None:
    cpu_openvino = registry.openvino_for_cpu() and not gpu_present()
    assert registry.resolve("auto").name == ("openvino" if cpu_openvino else "onnxruntime")


def test_a_new_backend_is_one_factory_and_one_registration(tiny_bundle, monkeypatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))       # this test's names only

    class Doubled(BaseBackend):
        """ONNX Runtime on the CPU, maps doubled: a backend of its own, to see load() use it."""

        name = "doubled"

        def __init__(self, bundle, options: LoadOptions) -> None:
            self.inner = open_onnxruntime(bundle, LoadOptions(device="cpu", seed=options.seed))

        def infer(self, batch: np.ndarray) -> np.ndarray:
            return 2 * self.inner.infer(batch)

    registry.register_backend("doubled", Doubled, requires=("onnxruntime",), extra="cpu")
    assert "doubled" in edge_ad.runtime.BACKENDS
    prepared = np.stack([f[:64, :64] for f in _frames(2)])
    plain = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu").infer(prepared)
    doubled = edge_ad.load(tiny_bundle, backend="doubled")
    assert doubled.backend.name == "doubled"
    np.testing.assert_allclose(doubled.infer(prepared), 2 * plain, rtol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_backend("doubled", Doubled)
    with pytest.raises(ValueError, match="'package.module:attribute'"):
        registry.register_backend("broken", "edge_ad.runtime.onnxruntime.open_onnxruntime")


def test_a_backend_refuses_a_pipeline_it_does_not_serve(tiny_bundle, monkeypatch) -> None:
    """Triton serves single graphs only; the same check, turned around, on the single-graph bundle here."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_backend("diffusion-only", open_onnxruntime, pipelines=("latent_ddim",))
    with pytest.raises(ValueError, match="backend 'diffusion-only' serves latent_ddim bundles; simplenet needs the "
                                         "'single' pipeline"):
        edge_ad.load(tiny_bundle, backend="diffusion-only")
    assert registry.get_backend("triton").pipelines == ("single",)


# ------------------------------------------------------------------------------------------ interface


@pytest.mark.parametrize("name", ["onnxruntime-cpu", "torch-cpu"])
def test_the_backends_that_run_here_implement_the_interface(tiny_bundle, name) -> None:
    det = edge_ad.load(tiny_bundle, backend=name)
    backend = det.backend
    assert isinstance(backend, Backend) and backend.name == name.split("-")[0]
    assert backend.device_heatmap is False and backend.max_batch in (None, *range(1, 1025))
    prepared = np.stack([f[:64, :64] for f in _frames(3)])
    raw = backend.infer(prepared)
    assert raw.dtype == np.float32 and raw.ndim == 4 and raw.shape[:2] == (3, 1)
    with pytest.raises(NotImplementedError, match="post-processes on the host"):
        backend.infer_heatmap(prepared)
    maps, scores = det.heatmaps(prepared)
    assert maps.shape == (3, *det.heatmap_spec.output_size) and scores.shape == (3,)
    det.close()


def test_the_detector_takes_only_a_backend(tiny_bundle) -> None:
    class InferOnly:
        def infer(self, batch):
            return np.zeros((len(batch), 1, 8, 8), np.float32)

    with pytest.raises(TypeError, match="must implement edge_ad.runtime.backend.Backend"):
        Detector(read_bundle(tiny_bundle), InferOnly())


def test_the_heatmap_spec_is_read_once_as_one_object(tiny_bundle) -> None:
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    meta = read_bundle(tiny_bundle).meta["heatmap"]
    assert isinstance(det.heatmap_spec, HeatmapSpec)
    assert det.heatmap_spec.output_size == tuple(meta["output_size"]) and det.heatmap_spec.sigma == meta["sigma"]
    assert {**det.heatmap_spec._asdict(), "output_size": list(det.heatmap_spec.output_size)} == meta


# ------------------------------------------------------------------------------------------ DDIM plan


def test_the_ddim_plan_resolves_steps_and_seed_once() -> None:
    plan = DdimPlan.from_pipeline(PIPELINE)
    assert plan.steps == 5 and plan.schedule == ddim_schedule(5) and plan.latent_shape == (4, 8, 8)
    np.testing.assert_array_equal(plan.start, seeded_normal(7, (1, 4, 8, 8)))
    chosen = DdimPlan.from_pipeline(PIPELINE, steps=2, seed=3)
    assert chosen.steps == 2 and chosen.timesteps == ddim_schedule(2).timesteps
    np.testing.assert_array_equal(chosen.start, seeded_normal(3, (1, 4, 8, 8)))
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        DdimPlan.from_pipeline(PIPELINE, steps=1001)


def test_the_host_loop_is_the_ddim_update() -> None:
    """sample_host against the DDIM formula written out in float64, with a denoiser that depends on z and t."""
    plan = DdimPlan.from_pipeline(PIPELINE, steps=3)
    cond = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)
    calls = []

    def denoise(z, c, t):
        calls.append(t.copy())
        return (0.3 * z + 0.1 * c + t[:, None, None, None] / 1000.0).astype(np.float32)

    got = plan.sample_host(cond, denoise)
    z = np.broadcast_to(plan.start, cond.shape).astype(np.float64)
    for t, (a_t, a_prev) in zip(plan.timesteps, plan.alphas()):
        eps = 0.3 * z + 0.1 * cond + t / 1000.0
        x0 = (z - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        z = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    np.testing.assert_allclose(got, z, rtol=1e-4, atol=1e-4)
    assert [int(t[0]) for t in calls] == list(plan.timesteps) and all(len(t) == 2 for t in calls)
    assert not np.array_equal(got, np.broadcast_to(plan.start, cond.shape))


# ------------------------------------------------------------------------------------------ missing libraries

_BLOCK = """
import json
import edge_ad

messages = {{}}
for name in {names!r}:
    try:
        edge_ad.load({bundle!r}, backend=name)
        messages[name] = None
    except RuntimeError as err:
        messages[name] = f"{{type(err).__name__}}: {{err}}"
print(json.dumps(messages))
"""


def _messages(bundle, blocked: tuple[str, ...], names: tuple[str, ...]) -> dict:
    from fakes import python_without

    out = python_without(blocked, _BLOCK.format(names=names, bundle=str(bundle)))
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_without_an_inference_library_each_backend_names_its_extra(tiny_bundle) -> None:
    names = ("auto", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "openvino", "openvino-gpu", "tensorrt",
             "torch", "torch-cuda", "triton")
    got = _messages(tiny_bundle, ("onnxruntime", "openvino", "tensorrt", "torch", "tritonclient"), names)
    assert got["auto"].startswith("BackendUnavailable: no usable inference library")
    assert "TensorRT is installed" not in got["auto"]
    for extra in ("cpu", "gpu", "openvino", "tensorrt"):
        assert f'pip install "edge_ad[{extra}]"' in got["auto"] or f'"edge_ad[{extra}]"' in got["auto"]
    for name, extra in (("onnxruntime", "cpu"), ("onnxruntime-cpu", "cpu"), ("onnxruntime-cuda", "gpu"),
                        ("openvino", "openvino"), ("openvino-gpu", "openvino"),
                        ("tensorrt", "tensorrt"), ("torch", "train"), ("torch-cuda", "train"), ("triton", "triton")):
        assert f'pip install "edge_ad[{extra}]"' in got[name], (name, got[name])
    assert got["tensorrt"].startswith("BackendUnavailable: backend 'tensorrt' needs tensorrt, which is not installed")
    assert "needs onnxruntime, which is not installed" in got["onnxruntime-cpu"]


def test_a_broken_inference_library_names_its_extra_too(tiny_bundle) -> None:
    """onnxruntime is found but its compiled part does not import (a partial install): the same advice."""
    got = _messages(tiny_bundle, ("onnxruntime.capi", "tensorrt"), ("onnxruntime-cpu",))
    assert got["onnxruntime-cpu"].startswith("BackendUnavailable: backend 'onnxruntime-cpu' cannot import onnxruntime")
    assert got["onnxruntime-cpu"].endswith('pip install "edge_ad[cpu]"')


def test_the_extras_block_nothing_that_is_installed(tiny_bundle) -> None:
    """The control: the same script, nothing blocked, loads on ONNX Runtime."""
    assert _messages(tiny_bundle, ("nothing_by_this_name",), ("onnxruntime-cpu",)) == {"onnxruntime-cpu": None}
