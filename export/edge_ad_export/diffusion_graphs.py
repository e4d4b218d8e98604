"""Multi-graph bundles of the latent diffusion models (DiffAD): one ONNX graph per part, the loop in the runtime.

encoder.onnx       images (uint8 N x H x W x 3)                        -> cond (N x 4 x h x w)
denoiser.onnx      latent, cond (N x 4 x h x w), timestep (N, float32) -> eps
decoder.onnx       latent, cond                                        -> recon, inter (N x 3 x H x W)
segmentation.onnx  images, recon, inter                                -> raw_map (N x 1 x H x W)

Each graph also gets its mixed FP16 twin (`encoder.fp16.onnx`, ...; export/edge_ad_export/fp16.py) for TensorRT.
Parity is checked graph by graph on the intermediate tensors of real images, and for the whole
pipeline: the runtime's own `DdimPipeline` on ONNX Runtime against the PyTorch model, from the same
starting latent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from edge_ad.runtime.latent_ddim import DdimPipeline, sessions_from_dir
from edge_ad.training.adapter import UInt8Input
from .fp16 import write_fp16
from .onnx import INPUT, OUTPUT, export_graph
from .parity import TOLERANCE, ParityError, relative_max_error

if TYPE_CHECKING:
    from edge_ad.models.diffad import DiffAD

GRAPHS = {"encoder": "encoder.onnx", "denoiser": "denoiser.onnx", "decoder": "decoder.onnx",
          "segmentation": "segmentation.onnx"}


class _Encoder(UInt8Input):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode(self.normalize(images))


class _Denoiser(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent: torch.Tensor, cond: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.model.denoise(latent, cond, timestep)


class _Decoder(_Denoiser):
    def forward(self, latent: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.decode_pair(latent, cond)


class _Segmentation(UInt8Input):
    def forward(self, images: torch.Tensor, recon: torch.Tensor, inter: torch.Tensor) -> torch.Tensor:
        return self.model.segment(self.normalize(images), recon, inter)


def pipeline_meta(model: "DiffAD") -> dict:
    c = model.config
    return {"kind": "latent_ddim", "graphs": dict(GRAPHS), "steps": c["steps"], "timesteps": c["timesteps"],
            "beta_start": c["beta_start"], "beta_end": c["beta_end"], "latent_shape": list(model.latent_shape),
            "seed": c["noise_seed"], "clamp": None}


def export_parts(model: "DiffAD", folder: Path, images: np.ndarray, *, fp16_tool: str = "converter") -> dict:
    """Write the four graphs into `folder`, check each and the whole loop; returns the parity report."""
    model = model.eval()
    x = torch.from_numpy(images)
    encoder, segmentation = _Encoder(model, model.mean, model.std), _Segmentation(model, model.mean, model.std)
    with torch.no_grad():
        cond = encoder(x)
        latent = model.sample(cond)
        t = torch.full((len(x),), float(model.config["timesteps"] - 1))
        recon, inter = model.decode_pair(latent, cond)
        expected = model(encoder.normalize(x))
    cases = {
        "encoder": (encoder, {INPUT: x}, ["cond"]),
        "denoiser": (_Denoiser(model), {"latent": latent, "cond": cond, "timestep": t}, ["eps"]),
        "decoder": (_Decoder(model), {"latent": latent, "cond": cond}, ["recon", "inter"]),
        "segmentation": (segmentation, {INPUT: x, "recon": recon, "inter": inter}, [OUTPUT]),
    }
    report = {}
    for part, (module, inputs, outputs) in cases.items():
        export_graph(module, folder / GRAPHS[part], inputs, outputs)
        report[part] = _graph_parity(module, folder / GRAPHS[part], inputs)
        feeds = {k: v.numpy() for k, v in inputs.items()}
        report[part]["fp16"] = write_fp16(folder, GRAPHS[part], feeds, ranks=part == "segmentation", tool=fp16_tool)
    pipeline = DdimPipeline(sessions_from_dir(folder, GRAPHS), pipeline_meta(model))
    error = relative_max_error(pipeline.infer(images), expected.numpy())
    if not error < TOLERANCE:
        raise ParityError(f"the DDIM pipeline on ONNX Runtime differs from PyTorch: relative max error {error:.2e}")
    report["pipeline"] = {"relative_max_error": error, "steps": pipeline.steps, "images": len(images)}
    (folder / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _graph_parity(module: nn.Module, path: Path, inputs: dict[str, torch.Tensor]) -> dict:
    import onnxruntime as ort

    with torch.no_grad():
        expected = module(*inputs.values())
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    errors = [relative_max_error(g, e.numpy()) for g, e in zip(got, expected)]
    if not max(errors) < TOLERANCE:
        raise ParityError(f"{path.name}: ONNX Runtime and PyTorch differ, relative max error {max(errors):.2e}")
    return {"relative_max_error": max(errors)}
