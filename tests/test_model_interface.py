"""The model interface (edge_ad/models/base.py): every registered model is an AnomalyModel with its required
members, the default hooks do what their docstrings say, and no file of the training side asks a model
with hasattr/getattr for a hook the base class declares (it calls the hook)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import edge_ad.models as registry
from edge_ad.models import create_model, list_models, model_class
from edge_ad.models.base import EXPORTED_MODE, LATENT_DDIM, SINGLE_GRAPH, AnomalyModel
from edge_ad.postprocess import HeatmapSpec, heatmap

from conftest import TINY_MODELS

ROOT = Path(__file__).resolve().parents[1]
TRAINING_SIDE = [ROOT / "edge_ad" / "models", ROOT / "edge_ad" / "training", ROOT / "export" / "edge_ad_export"]
HOOKS = sorted(name for name in {*vars(AnomalyModel), *AnomalyModel.__annotations__} if not name.startswith("_"))


class Tiny(AnomalyModel):
    """The least a model must define: the raw map is the first channel."""

    DEFAULTS = {"paper": {"epochs": 1, "batch_size": 1}, "cpu": {"epochs": 1, "batch_size": 1}}

    def __init__(self) -> None:
        super().__init__()
        self.config = {"image_size": 8, "resize_size": 8}
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * self.w

    def heatmap_spec(self) -> HeatmapSpec:
        return HeatmapSpec(output_size=(16, 16), smooth="box", window=3)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).mean()

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.parameters(), lr=0.1)]


def test_the_hooks_are_read_from_the_base_class() -> None:
    assert {"heatmap_spec", "prepare_training", "folded", "graph_inputs", "STAGES", "PIPELINE", "localize",
            "localization_modes", "max_grad_norm", "after_step", "mean", "std", "config", "DEFAULTS"} <= set(HOOKS)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_is_a_complete_anomaly_model(name: str) -> None:
    cls = model_class(name)
    assert issubclass(cls, AnomalyModel) and not cls.__abstractmethods__
    assert cls.heatmap_spec is not AnomalyModel.heatmap_spec
    assert {"paper", "cpu"} <= set(cls.DEFAULTS)
    assert cls.PIPELINE in (SINGLE_GRAPH, LATENT_DDIM) and isinstance(cls.STAGES, tuple)


@pytest.mark.parametrize("name", list_models())
def test_every_model_instance_sets_what_the_interface_requires(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, **TINY_MODELS[name][2], pretrained=False).eval()
    spec = model.heatmap_spec()
    assert isinstance(spec, HeatmapSpec) and spec.output_size == (model.config["image_size"],) * 2
    assert HeatmapSpec.from_meta(json.loads(json.dumps(spec._asdict()))) == spec         # what run.json and meta.json hold
    assert json.loads(json.dumps(model.config)) and model.config["resize_size"] >= model.config["image_size"]
    assert len(model.mean) == len(model.std) == 3 and all(s > 0 for s in model.std)
    assert model.localization_modes and isinstance(model.folded(), torch.nn.Module)
    assert all(isinstance(v, torch.Tensor) for v in model.graph_inputs().values())


def test_the_registry_refuses_a_class_that_is_not_an_anomaly_model(monkeypatch) -> None:
    monkeypatch.setitem(registry._REGISTRY, "linear", ("torch.nn", "Linear"))
    with pytest.raises(TypeError, match=r"torch.nn.Linear, which is not a subclass of .*AnomalyModel"):
        create_model("linear", in_features=2, out_features=1)


def test_a_model_without_the_required_methods_cannot_be_built() -> None:
    class NoSpec(AnomalyModel):
        def training_loss(self, x):
            return x.mean()

        def optimizers(self):
            return []

    with pytest.raises(TypeError, match="heatmap_spec"):
        NoSpec()


def test_the_default_hooks_mean_the_model_does_not_use_them() -> None:
    model = Tiny()
    model.prepare_training(iter(()))          # nothing to prepare, and nothing read
    model.after_step()
    assert model.folded() is model and model.graph_inputs() == {}
    assert model.STAGES == () and model.PIPELINE == SINGLE_GRAPH and model.max_grad_norm is None
    assert model.localization_modes == (EXPORTED_MODE,)
    with pytest.raises(ValueError, match="trains in one go"):
        model.set_stage("denoiser")


def test_the_default_localize_is_the_exported_map_through_the_kernel() -> None:
    model = Tiny()
    x = torch.rand(2, 3, 8, 8)
    maps, scores = model.localize(x)
    raw = x[:, :1].numpy()
    want_maps, want_scores = heatmap(np.ascontiguousarray(raw), (16, 16), smooth="box", window=3)
    np.testing.assert_array_equal(maps, want_maps)
    np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(model.heatmap_spec().apply(raw)[1], want_scores)
    assert model.localize(x, EXPORTED_MODE)[1].tolist() == scores.tolist()
    with pytest.raises(ValueError, match=r"unknown localization mode 'gradient'; choose from \('exported',\)"):
        model.localize(x, "gradient")


def _probes(path: Path) -> list[str]:
    """hasattr/getattr calls in `path` whose attribute name is a literal hook of the base class."""
    found = []
    for node in sorted(ast.walk(ast.parse(path.read_text(encoding="utf-8"))), key=lambda n: getattr(n, "lineno", 0)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in HOOKS:
            found.append(f"{path.name}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return found


def test_the_probe_finder_finds_a_probe(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('x = getattr(model, "PIPELINE", None) == "latent_ddim"\nif hasattr(m, "folded"): pass\n'
                   'y = getattr(self, f"pool{i}")\nz = getattr(data, "generator", None)\n')
    assert _probes(bad) == ["bad.py:1: getattr(..., 'PIPELINE')", "bad.py:2: hasattr(..., 'folded')"]


@pytest.mark.parametrize("path", sorted(p for folder in TRAINING_SIDE for p in folder.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_training_side_file_probes_a_model_for_a_hook(path: Path) -> None:
    assert _probes(path) == [], "call the hook (models/base.py declares it with a default) instead of probing"
