"""INT8 Q/DQ graphs of one single-graph bundle by two tools, on ONNX Runtime's CPU provider.

    python benchmarks/int8_tools.py [--bundle runs/demo/bundle] [--data DIR] [--repeats 5]
        [--modelopt-python ~/.cache/edge_ad/modelopt-venv/bin/python] [--json benchmarks/results/int8-tools.json]

Variants, all calibrated on the same good training images (up to 64) of the bundle's category:

- `onnxruntime`: the export's route (edge_ad_export.int8.quantize_int8: U8S8 Q/DQ, fixed FP32 islands and
  the greedy search), and `onnxruntime-all` the same with no search (only the fixed islands FP32).
- `modelopt-max`, `modelopt-entropy`: NVIDIA Model Optimizer's ONNX PTQ (`modelopt.onnx.quantization.quantize`,
  quantize_mode int8, FP32 elsewhere, calibrated on the CPU provider), run in its own venv
  (--modelopt-python: nvidia-modelopt[onnx] pins onnx 1.21 / onnxruntime 1.24) in a subprocess, on a
  copy of the graph (modelopt 0.47 rewrote the model.onnx it was given in place: keep it off a bundle);
  `modelopt-islands` is modelopt-max with the export's FP32 nodes excluded (the same placement question).

Each graph: quantization time, ORT CPU model-only FPS at batch 1 and 8 (median of --repeats runs of
--iters calls, with the runtime's own session settings, FP32 timed in the same rounds), image AUROC on
the test split, Spearman rank correlation and verdict flips (at the bundle's threshold) against FP32,
and whether TensorRT could parse its Q/DQ pairs as they are (int8, zero point 0).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import environment, write_json

MODELOPT_PYTHON = Path.home() / ".cache" / "edge_ad" / "modelopt-venv" / "bin" / "python"
MODELOPT_SCRIPT = """
import json, sys, time, numpy as np
from modelopt.onnx.quantization import quantize
import modelopt
src, dst, data, method, exclude = sys.argv[1:6]
images = np.load(data)["images"]
start = time.perf_counter()
quantize(src, quantize_mode="int8", calibration_data={"images": images}, calibration_method=method,
         calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=dst, log_level="ERROR",
         nodes_to_exclude=json.loads(exclude) or None)
print(json.dumps({"seconds": time.perf_counter() - start, "modelopt": modelopt.__version__}))
"""


def load_images(bundle, data: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(good training images to calibrate on, test images, their labels), prepared as the runtime does."""
    from edge_ad.runtime.preprocess import Geometry, prepare
    from edge_ad.training.run import load_categories

    if data is None:
        run = json.loads((Path(bundle.path).parent / "run" / "run.json").read_text())
        data = run["data"]
    category = load_categories(data)[0]
    geometry = Geometry.from_dict(bundle.meta["geometry"])
    train, test = category.train, category.test
    picks = np.linspace(0, len(train) - 1, min(64, len(train))).astype(int)
    good = np.stack([prepare(train[int(i)]["image"], geometry) for i in picks])
    images = np.stack([prepare(test[i]["image"], geometry) for i in range(len(test))])
    return good, images, np.asarray(test.labels)


def onnxruntime_variants(src: Path, folder: Path, good: np.ndarray, spec) -> dict[str, dict]:
    from edge_ad_export.int8 import quantize_int8

    out = {}
    for name, search in (("onnxruntime", True), ("onnxruntime-all", False)):
        dst = folder / f"{name}.onnx"
        start = time.perf_counter()
        report = quantize_int8(src, dst, "images", good, {}, spec, search=search)
        out[name] = {"path": dst, "quantize_s": round(time.perf_counter() - start, 1), "gpu_needed": False,
                     "fp32_groups": report["search"]["fp32_groups"], "search_error": report["search"]["error"]}
    return out


def modelopt_variants(src: Path, folder: Path, good: np.ndarray, python: str, islands: list[str]) -> dict[str, dict]:
    import onnx

    from edge_ad_export.fp16 import name_nodes

    named = name_nodes(onnx.load(str(src)))          # the export's node names, so islands match by name
    data = folder / "calibration.npz"
    np.savez(data, images=good)
    out = {}
    runs = {"modelopt-max": ("max", []), "modelopt-entropy": ("entropy", []), "modelopt-islands": ("max", islands)}
    for name, (method, exclude) in runs.items():
        dst, copy = folder / f"{name}.onnx", folder / f"{name}.fp32.onnx"
        onnx.save(named, str(copy))                     # modelopt rewrites the graph it is given, in place
        patterns = [f"^{re.escape(n)}$" for n in exclude]
        done = subprocess.run([python, "-c", MODELOPT_SCRIPT, str(copy), str(dst), str(data), method,
                               json.dumps(patterns)], capture_output=True, text=True, timeout=1800,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})   # the CPU: no GPU needed
        if done.returncode != 0:
            out[name] = {"error": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else "failed"}
            continue
        facts = json.loads(done.stdout.strip().splitlines()[-1])
        out[name] = {"path": dst, "quantize_s": round(facts["seconds"], 1), "modelopt": facts["modelopt"],
                     "gpu_needed": False, "fp32_nodes_excluded": len(exclude)}
    return out


def tensorrt_parses_as_is(path: Path) -> bool:
    """Every Q/DQ zero point int8 (or int32 for biases) and zero: what TensorRT's parser takes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) == 3 and node.input[2] in inits:
            zp = inits[node.input[2]]
            if zp.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.INT32) or numpy_helper.to_array(zp).any():
                return False
    return True


def scores(path: Path, images: np.ndarray, spec) -> np.ndarray:
    from edge_ad.runtime.onnxruntime import ort_session

    session, _ = ort_session(path, device="cpu")
    raw = np.concatenate([session.run(None, {"images": images[i:i + 8]})[0] for i in range(0, len(images), 8)])
    return np.asarray(spec.apply(raw.astype(np.float32))[1], dtype=np.float64)


def fps(path: Path, images: np.ndarray, batch: int, iters: int) -> float:
    from edge_ad.runtime.onnxruntime import ort_session

    session, _ = ort_session(path, device="cpu")
    x = images[:batch]
    for _ in range(3):
        session.run(None, {"images": x})
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        session.run(None, {"images": x})
        samples.append(time.perf_counter() - start)
    return batch / float(np.median(samples))


def compare(graphs: dict[str, dict], src: Path, images: np.ndarray, labels: np.ndarray, spec, threshold: float,
            repeats: int, iters: int) -> dict:
    from edge_ad.metrics import image_auroc
    from edge_ad_export.int8 import _rank_correlation

    want = scores(src, images, spec)
    table = {"fp32": {"image_auroc": float(image_auroc(labels, want))}}
    for name, g in graphs.items():
        if "path" not in g:
            table[name] = g
            continue
        got = scores(g["path"], images, spec)
        table[name] = {**{k: v for k, v in g.items() if k != "path"}, "image_auroc": float(image_auroc(labels, got)),
                       "rank_correlation": _rank_correlation(want, got),
                       "verdict_flips": int(np.sum((want > threshold) != (got > threshold))),
                       "score_max_abs_diff": float(np.abs(got - want).max()),
                       "tensorrt_parses_as_is": tensorrt_parses_as_is(g["path"])}
    timed = {"fp32": src, **{n: g["path"] for n, g in graphs.items() if "path" in g}}
    for batch in (1, 8):
        rounds = {name: [] for name in timed}
        for _ in range(repeats):                        # interleaved: the machine's noise hits every graph alike
            for name, path in timed.items():
                rounds[name].append(round(fps(path, images, batch, iters), 1))
        for name, values in rounds.items():
            table[name][f"fps_b{batch}"] = float(np.median(values))
            table[name][f"fps_b{batch}_runs"] = values
            table[name][f"speedup_b{batch}"] = round(float(np.median(values)) / float(np.median(rounds["fp32"])), 2)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="runs/demo/bundle")
    parser.add_argument("--data", default=None, help="MVTec-layout category (default: the demo run's)")
    parser.add_argument("--modelopt-python", default=str(MODELOPT_PYTHON) if MODELOPT_PYTHON.exists() else None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json", default="benchmarks/results/int8-tools.json")
    args = parser.parse_args()

    from edge_ad.bundle import read_bundle
    from edge_ad.postprocess import HeatmapSpec

    bundle = read_bundle(args.bundle)
    spec = HeatmapSpec.from_meta(bundle.meta["heatmap"])
    threshold = float(bundle.meta["calibration"]["image_threshold"])
    good, images, labels = load_images(bundle, args.data)
    src = bundle.file("model.onnx")
    with tempfile.TemporaryDirectory(prefix="int8_tools.") as tmp:
        folder = Path(tmp)
        graphs = onnxruntime_variants(src, folder, good, spec)
        islands = _islands(src, graphs["onnxruntime"]["fp32_groups"])
        if args.modelopt_python:
            graphs.update(modelopt_variants(src, folder, good, args.modelopt_python, islands))
        table = compare(graphs, src, images, labels, spec, threshold, args.repeats, args.iters)
    payload = {"bundle": str(args.bundle), "model": bundle.meta["model"], "calibration_images": int(len(good)),
               "test_images": int(len(images)), "threshold": threshold, "variants": table,
               "environment": environment(("onnxruntime", "onnx", "numpy", "torch"))}
    print(json.dumps({k: {m: v.get(m) for m in ("image_auroc", "fps_b1", "fps_b8", "speedup_b1", "speedup_b8",
                                                  "verdict_flips", "rank_correlation", "quantize_s", "error")}
                      for k, v in table.items()}, indent=1))
    write_json(args.json, payload)


def _islands(src: Path, groups: list[str]) -> list[str]:
    """The export's FP32 nodes for the chosen groups, by name: fixed islands and the search's groups."""
    import onnx

    from edge_ad_export.fp16 import name_nodes
    from edge_ad_export.int8 import fixed_fp32, node_groups

    model = name_nodes(onnx.load(str(src)))
    fixed = fixed_fp32(model)
    found = node_groups(model, fixed)
    return sorted({*fixed, *(n for g in groups for n in found[g])})


if __name__ == "__main__":
    sys.exit(main())
