"""`edge-ad export BUNDLE --triton DIR`: a Triton Inference Server model repository of a bundle.

    DIR/<model>_onnx/config.pbtxt     platform "onnxruntime_onnx", the FP32 graph
    DIR/<model>_onnx/1/model.onnx
    DIR/<model>_trt/config.pbtxt      platform "tensorrt_plan", when the bundle carries engines:
    DIR/<model>_trt/1/<model>.sm86.plan   one plan per compute capability, `cc_model_filenames`

Both with `max_batch_size` (dims exclude the batch) and `dynamic_batching` (preferred batch sizes,
a queue delay), so frames from many cameras on many line PCs are batched on one GPU server; the
raw map comes back and the edge_ad client (runtime/triton.py) post-processes it with the bundle's
heatmap parameters and calibration, exactly as the local backends do.

A bundle with fixed extra inputs (SPR's seeded noise) gets them frozen into the repository's ONNX
graph as constants, since Triton batches every input of a batched model; such bundles get no TensorRT
model (the plan keeps `noise` as an input). DiffAD's loop runs in edge_ad, not in Triton: refused.
A plan must match the server's TensorRT version: build the engines with the server's TensorRT.
The config follows Triton's model_config.proto; tests parse it with the schema of tritonclient.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edge_ad.bundle import Bundle
from edge_ad.runtime.inputs import seeded_inputs
from edge_ad.runtime.triton import model_names

__all__ = ["write_repository", "model_names"]

TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}


def _config(name: str, platform: str, bundle: Bundle, *, max_batch: int, preferred: list[int], delay_us: int,
            instances: int, extra: list[str]) -> str:
    inp, out = bundle.meta["input"], bundle.meta["outputs"][0]
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        "input [",
        f'  {{ name: "{inp["name"]}" data_type: {TRITON_TYPES[inp["dtype"]]} '
        f'dims: [ {inp["height"]}, {inp["width"]}, 3 ] }}',
        "]",
        "output [",
        f'  {{ name: "{out["name"]}" data_type: {TRITON_TYPES[out["dtype"]]} '
        f'dims: [ {", ".join(str(d) for d in out["shape"][1:])} ] }}',
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]",
        f"  max_queue_delay_microseconds: {delay_us}",
        "}",
        f"instance_group [ {{ count: {instances} }} ]",
        "version_policy: { latest { num_versions: 1 } }",
        *extra,
    ]
    return "\n".join(lines) + "\n"


def _frozen_onnx(bundle: Bundle, dst: Path) -> None:
    """The FP32 graph with its fixed extra inputs (SPR's noise) turned into constants at the bundle's seed."""
    model = onnx.load(str(bundle.file("model.onnx")))
    for name, value in seeded_inputs(bundle.meta.get("graph_inputs", {}), None).items():
        graph_input = next(i for i in model.graph.input if i.name == name)
        model.graph.input.remove(graph_input)
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
    onnx.save(model, str(dst))


def _plans(bundle: Bundle) -> dict[str, str]:
    """Compute capability -> engine file of the bundle's main graph (the newest TensorRT per capability)."""
    found: dict[str, tuple[str, str]] = {}
    for name, info in bundle.meta.get("engines", {}).items():
        if info.get("graph") != bundle.meta.get("fp16", {}).get("model.onnx"):
            continue
        cc, version = info["device"]["compute_capability"], info["device"]["tensorrt"]
        if cc not in found or tuple(map(int, version.split(".")[:3])) > tuple(map(int, found[cc][1].split(".")[:3])):
            found[cc] = (name, version)
    return {cc: name for cc, (name, _) in found.items()}


def write_repository(bundle: Bundle, out: str | Path, *, max_batch: int = 8, preferred: list[int] | None = None,
                     delay_us: int = 2000, instances: int = 1) -> list[Path]:
    """Write (or add to) a model repository; returns the model folders written. Each model folder is
    written to a temporary sibling and renamed, so an interrupted export leaves no half model."""
    if bundle.meta.get("pipeline", {}).get("kind", "single") != "single":
        raise ValueError(f"{bundle.model_name} is a multi-graph diffusion bundle: its DDIM loop runs in edge_ad, "
                         "not in Triton; serve it with `edge-ad stream` on the GPU machine instead")
    preferred = sorted({b for b in (preferred or [max_batch // 2, max_batch]) if 1 <= b <= max_batch})
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names, written = model_names(bundle), []
    common = dict(max_batch=max_batch, preferred=preferred, delay_us=delay_us, instances=instances)

    def onnx_model(tmp: Path) -> None:
        (tmp / "1").mkdir()
        _frozen_onnx(bundle, tmp / "1" / "model.onnx")
        (tmp / "config.pbtxt").write_text(_config(names["onnx"], "onnxruntime_onnx", bundle, extra=[], **common))

    written.append(_write_model(out / names["onnx"], onnx_model))
    plans = _plans(bundle) if not bundle.meta.get("graph_inputs") else {}
    if plans:
        def trt_model(tmp: Path) -> None:
            (tmp / "1").mkdir()
            entries = []
            for cc, engine in sorted(plans.items()):
                target = f"{bundle.model_name}.sm{cc.replace('.', '')}.plan"
                shutil.copy2(bundle.file(engine), tmp / "1" / target)
                entries.append(f'  {{ key: "{cc}" value: "{target}" }}')
            extra = ["cc_model_filenames [", ",\n".join(entries), "]"]
            (tmp / "config.pbtxt").write_text(_config(names["tensorrt"], "tensorrt_plan", bundle, extra=extra, **common))

        written.append(_write_model(out / names["tensorrt"], trt_model))
    return written


def _write_model(target: Path, fill) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
