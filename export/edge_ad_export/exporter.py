"""`edge-ad export RUN --out BUNDLE`: a trained run -> a self-describing bundle (docs/architecture.md)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
try:
    import onnxruntime
except ImportError:                       # the `train` extra alone has no ONNX Runtime: it comes with cpu or gpu
    raise ImportError('exporting checks every graph on ONNX Runtime, which is not installed: pip install '
                      '"edge_ad[train,cpu]" (or [train,gpu] on an NVIDIA box; never both)') from None
import torch

import edge_ad
from edge_ad.bundle import Bundle, check_calibration, check_name, write_bundle
from edge_ad.models.base import LATENT_DDIM, AnomalyModel
from edge_ad.runtime.preprocess import Geometry, prepare
from edge_ad.training.adapter import UInt8Input
from edge_ad.training.fit import CHECKPOINT, file_sha256
from edge_ad.training.data import train_val_parts
from edge_ad.training.run import TrainConfig, load_categories, load_run, run_data
from .onnx import INPUT, OPSET, OUTPUT, export_onnx
from .diffusion_graphs import GRAPHS, export_parts, pipeline_meta
from .fp16 import TOOLS as FP16_TOOLS
from .fp16 import fp16_name, write_fp16
from .int8 import CALIBRATION_IMAGES, int8_name, write_int8
from .verdict_set import write_verdict_set
from .parity import check_parity

MODEL_FILE = "model.onnx"


def export_run(run_dir: str | Path, out: str | Path, *, overwrite: bool = False, parity_images: int = 4,
               int8: bool = False, fp16_tool: str = "converter") -> Bundle:
    """Fold, export, check parity against the unfolded PyTorch model, and write the bundle atomically.
    `int8`: add the Q/DQ INT8 graph, calibrated on the run's good images and checked on its verdicts
    (int8.py). `fp16_tool`: what writes the FP16 graphs (fp16.TOOLS)."""
    run_dir = Path(run_dir)
    info, model = load_run(run_dir)
    check_calibration(info.get("calibration"), str(run_dir), "run.json")
    geometry = Geometry.from_dict(info["geometry"])
    judged = _judged_images(info, geometry, required=int8)
    return export_model(model, out, name=info["model"], geometry=geometry, calibration=info["calibration"],
                        images=_parity_images(info, geometry, parity_images), checkpoint=run_dir / CHECKPOINT,
                        metrics=info.get("metrics"), overwrite=overwrite,
                        checkpoint_sha256=info.get("checkpoint_sha256"),
                        int8_images=judged[:2] if int8 else None, fp16_tool=fp16_tool,
                        verdict_images=judged[1:] if judged is not None else None)


def export_model(model: AnomalyModel, out: str | Path, *, name: str, geometry: Geometry, calibration: dict,
                 images: np.ndarray, checkpoint: Path | None = None, metrics: dict | None = None,
                 overwrite: bool = False, checkpoint_sha256: str | None = None,
                 int8_images: tuple[np.ndarray, np.ndarray] | None = None, fp16_tool: str = "converter",
                 verdict_images: tuple[np.ndarray, np.ndarray] | None = None) -> Bundle:
    """Write the bundle of an in-memory model: ONNX of its deployable form (`folded()`) + meta.json.

    Every graph gets its mixed FP16 twin for TensorRT (export/edge_ad_export/fp16.py), listed in meta `fp16`.
    Diffusion models with `PIPELINE = LATENT_DDIM` (DiffAD) become four graphs and a `pipeline` entry
    (export/edge_ad_export/diffusion_graphs.py); models whose `graph_inputs()` are not empty (SPR) get those
    inputs in the graph and their seeds in `graph_inputs`. The hooks are models/base.py's.

    The model name and the calibration are checked before anything is exported (a NaN threshold
    would flag nothing); the whole meta.json is validated again before the bundle is committed."""
    check_name(name, "model", str(out))
    check_calibration(calibration, str(out))
    if fp16_tool not in FP16_TOOLS:
        raise ValueError(f"unknown FP16 tool {fp16_tool!r}; choose one of {', '.join(FP16_TOOLS)}")
    if fp16_tool == "autocast":
        from .fp16_autocast import require_autocast

        require_autocast()                         # before a long export, not after it
    height, width = geometry.crop
    model = model.eval()
    multi = model.PIPELINE == LATENT_DDIM
    deploy = UInt8Input(model.folded(), model.mean, model.std).eval()
    reference = UInt8Input(model, model.mean, model.std).eval()
    extras = model.graph_inputs()

    if int8_images is not None and multi:
        # Measured (DiffAD at its CPU budget, ONNX Runtime's CPU provider, batch 1): its decoder is half of a
        # frame and gains nothing from INT8; the denoiser's five steps would save 7% of the frame, quantizing
        # every part 15%, against errors of 2-10% per part that five chained steps and a trained model's
        # reconstruction margin were not checked against. No part is quantized.
        raise ValueError(f"--int8 covers single-graph models; {name} is a diffusion pipeline, where INT8 saves "
                         "7-15% of a frame on the CPU (its decoder, half the time, gains nothing): export it "
                         "without --int8")

    def fill(tmp: Path) -> None:
        if multi:
            export_parts(model, tmp, images, fp16_tool=fp16_tool)
        else:
            export_onnx(deploy, tmp / MODEL_FILE, height, width, extras=extras)
            feeds = {k: v.numpy() for k, v in extras.items()}
            parity = check_parity(reference, tmp / MODEL_FILE, images, feeds)
            parity["fp16"] = {MODEL_FILE: write_fp16(tmp, MODEL_FILE, {INPUT: images, **feeds}, tool=fp16_tool)}
            if int8_images is not None:
                parity["int8"] = {MODEL_FILE: write_int8(tmp, MODEL_FILE, INPUT, *int8_images, feeds,
                                                         model.heatmap_spec(),
                                                         calibration["image_threshold"])}
            if verdict_images is not None and len(verdict_images[0]):
                meta["verdict_set"] = write_verdict_set(tmp, MODEL_FILE, INPUT, *verdict_images, feeds,
                                                        model.heatmap_spec(), calibration["image_threshold"])
            (tmp / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
        if checkpoint is not None:
            shutil.copy2(checkpoint, tmp / CHECKPOINT)
            # the bytes copied must be the checkpoint the run verified (not one swapped in since)
            if checkpoint_sha256 is not None and file_sha256(tmp / CHECKPOINT) != checkpoint_sha256:
                raise ValueError(f"{checkpoint} changed while it was being exported (its sha256 no longer matches "
                                 "run.json); is a training still writing that run? Export again when it is done")

    with torch.no_grad():
        raw_shape = list(reference(torch.from_numpy(images[:1])).shape)
    meta = {
        "model": name,
        "config": model.config,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {"name": INPUT, "dtype": "uint8", "layout": "NHWC", "color": "RGB", "height": height, "width": width},
        "outputs": [{"name": OUTPUT, "dtype": "float32", "shape": ["batch", *raw_shape[1:]]}],
        "geometry": geometry.to_dict(),
        "heatmap": model.heatmap_spec()._asdict(),
        "calibration": calibration,
        "metrics": metrics,
        "versions": {"edge_ad": edge_ad.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "opset": OPSET},
        "engines": {},
    }
    graphs = GRAPHS.values() if multi else [MODEL_FILE]
    meta["fp16"] = {g: fp16_name(g) for g in graphs}
    if int8_images is not None:
        meta["int8"] = {MODEL_FILE: int8_name(MODEL_FILE)}
    if multi:
        meta["pipeline"] = pipeline_meta(model)
    if extras:
        seed = model.config["noise_seed"]
        meta["graph_inputs"] = {name: {"shape": list(v.shape), "dtype": "float32", "distribution": "standard_normal",
                                       "seed": seed} for name, v in extras.items()}
    return write_bundle(out, meta, fill, overwrite=overwrite)


def _judged_images(info: dict, geometry: Geometry, *,
                   required: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(calibration images, check images, check labels: 0 good, 1 defective) of a run: up to 64 good
    training images of all its categories, evenly picked, to calibrate the INT8 graph on; to check verdicts
    on (the INT8 check's and the bundle's verdict set, verdict_set.py), the images the run calibrated its
    threshold on (its validation images, which may be among the calibration images too), its test split
    and the good training images not calibrated on. None when the run's data, or any image of it, cannot
    be read (the bundle then has no verdict set), unless `required` (--int8): then a ValueError."""
    try:
        return _read_judged(info, geometry)
    except (ValueError, OSError) as err:
        if not required:
            return None
        raise ValueError(f"--int8 calibrates on the run's training images, which cannot be read ({err}); restore "
                         "the data the run was trained on, or export without --int8") from None


def _read_judged(info: dict, geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """_judged_images' reading: ValueError or OSError when the data or an image cannot be read."""
    categories = load_categories(run_data(info))
    fraction, seed = float(info.get("val_fraction", TrainConfig.val_fraction)), int(info.get("seed", 0))
    vals = [train_val_parts(c.train, c.val, fraction, seed)[1] for c in categories]
    train = [(c.train, i) for c in categories for i in range(len(c.train))]
    picks = np.linspace(0, len(train) - 1, min(CALIBRATION_IMAGES, len(train))).astype(int).tolist()
    calibration = np.stack([prepare(train[k][0][train[k][1]]["image"], geometry) for k in picks])
    checked = [train[k] for k in range(len(train)) if k not in set(picks)]
    seen = {(id(d), i) for d, i in checked}
    checked += [(v.dataset, i) for v in vals for i in v.indices if (id(v.dataset), i) not in seen]
    checked += [(c.test, i) for c in categories if c.test is not None for i in range(len(c.test))]
    items = [dataset[i] for dataset, i in checked]
    if not items:
        return calibration, calibration, np.zeros(len(calibration), np.int8)
    check = np.stack([prepare(item["image"], geometry) for item in items])
    return calibration, check, np.array([int(item["label"]) for item in items], np.int8)


def _parity_images(info: dict, geometry: Geometry, count: int) -> np.ndarray:
    """Real images of the training data when it is still there, else seeded noise."""
    try:
        category = load_categories(run_data(info))[0]        # any layout; a good-only run has no test split
        data = category.test if category.test is not None and len(category.test) else category.train
        picks = np.linspace(0, len(data) - 1, count).astype(int)
        return np.stack([prepare(data[int(i)]["image"], geometry) for i in picks])
    except (ValueError, OSError):
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (count, *geometry.crop, 3), dtype=np.uint8)
