"""`edge-ad train`: fit a model on train/good, calibrate on a held-out part of it, evaluate on test."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import edge_ad
from edge_ad.data import MVTecDataset
from edge_ad.models import create_model
from edge_ad.runtime.preprocess import Geometry
from edge_ad.training.adapter import UInt8Input
from edge_ad.training.calibrate import calibrate
from edge_ad.training.data import Prepared, loader, split_train_val
from edge_ad.training.evaluate import metrics, predict
from edge_ad.training.fit import fit

RUN_FILE = "run.json"


@dataclass
class TrainConfig:
    data: str
    out: str
    model: str = "simplenet"
    epochs: int = 160
    batch_size: int = 8
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    val_fraction: float = 0.1
    model_kwargs: dict = field(default_factory=dict)   # backbone, image_size, resize_size, pretrained, ...


def train(cfg: TrainConfig) -> dict:
    """Train, calibrate and evaluate; writes RUN/checkpoint.pt, RUN/run.json and RUN/metrics.json."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.out)
    train_set, test_set = MVTecDataset(cfg.data, "train"), MVTecDataset(cfg.data, "test")
    model = create_model(cfg.model, **cfg.model_kwargs).to(cfg.device)
    size, resize = model.config["image_size"], model.config["resize_size"]
    geometry = Geometry((resize, resize), (size, size))
    train_idx, val_idx = split_train_val(len(train_set), cfg.val_fraction, cfg.seed)
    wrapped = UInt8Input(model, model.mean, model.std).to(cfg.device)   # the export's own pre-processing
    run_info = {"model": cfg.model, "config": model.config, "geometry": geometry.to_dict(),
                "heatmap": model.heatmap_spec()._asdict(), "data": str(Path(cfg.data).resolve()),
                "epochs": cfg.epochs, "batch_size": cfg.batch_size, "seed": cfg.seed,
                "train_images": len(train_idx), "val_images": len(val_idx), "edge_ad": edge_ad.__version__,
                "torch": torch.__version__}
    train_data = loader(Prepared(train_set, geometry, train_idx), cfg.batch_size, shuffle=True, seed=cfg.seed)
    if not cfg.resume and hasattr(model, "prepare_training"):   # e.g. SimpleNet's feature statistics
        model.prepare_training(wrapped.normalize(b["image"].to(cfg.device)) for b in train_data)
    losses = fit(model, train_data,
                 wrapped.normalize, epochs=cfg.epochs, run_dir=run_dir, device=cfg.device,
                 resume=cfg.resume, extra={"model_name": cfg.model, "config": model.config})
    spec = model.heatmap_spec()
    val = predict(wrapped, loader(Prepared(train_set, geometry, val_idx), cfg.batch_size, shuffle=False), spec, cfg.device)
    calibration = calibrate(val["scores"], val["maps"])
    test = predict(wrapped, loader(Prepared(test_set, geometry), cfg.batch_size, shuffle=False), spec, cfg.device)
    result = metrics(test)
    result["per_defect_image_auroc"] = _per_defect(test_set, test)
    result["seconds"] = time.perf_counter() - start
    run_info.update(calibration=calibration.to_dict(), losses=losses, metrics=result)
    (run_dir / RUN_FILE).write_text(json.dumps(run_info, indent=2) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _per_defect(test_set: MVTecDataset, pred: dict) -> dict:
    """Image AUROC of each defect type against the normal test images."""
    from edge_ad.metrics import image_auroc

    defects = np.array([s.defect for s in test_set.samples])
    good = defects == "good"
    out = {}
    for d in sorted(set(defects) - {"good"}):
        keep = good | (defects == d)
        if good.any():
            out[d] = image_auroc(pred["labels"][keep], pred["scores"][keep])
    return out
