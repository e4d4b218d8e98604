"""`edge-ad eval RUN`: a trained run's metrics on test data, for each localization mode it has.

The first mode is always what bundles compute (the model's forward map through the heatmap kernel). A
model with other modes (MKD's paper-style `gradient` maps) lists them in `localization_modes` and
computes them in `localize(x, mode) -> (maps, scores)` (models/base.py); all modes are scored on the
same images, so a departure of the exported mode from the paper is a measured difference, not a guess.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edge_ad.models.base import AnomalyModel
from edge_ad.runtime.preprocess import Geometry
from edge_ad.training.adapter import UInt8Input
from edge_ad.training.data import Prepared, loader
from edge_ad.training.predict import metrics, predict, predict_with
from edge_ad.training.fit import write_text_atomic
from edge_ad.training.run import EVAL_FILE, check_device, load_categories, load_run


def evaluate_run(run: str | Path, *, data: list[str] | None = None, modes: list[str] | None = None,
                 device: str = "cpu", batch_size: int = 8) -> dict:
    """{"modes": {mode: {category: metrics}}, ...}; also written to RUN/eval.json."""
    run = Path(run)
    check_device(device)
    info, model = load_run(run)
    model = model.to(device)
    available = list(model.localization_modes)
    exported_mode = available[0]
    modes = modes or available
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    unknown = [m for m in modes if m not in available]
    if unknown:
        raise ValueError(f"{info['model']} has no localization mode {unknown}; it has {', '.join(available)}")
    categories = load_categories(data or info["data"])
    geometry = Geometry.from_dict(info["geometry"])
    wrapped = UInt8Input(model, model.mean, model.std).to(device).eval()
    spec = model.heatmap_spec()
    report: dict = {"run": str(run), "model": info["model"], "exported_mode": exported_mode, "modes": {}}
    for mode in modes:
        per = {}
        for c in categories:
            data_loader = loader(Prepared(c.test, geometry), batch_size, shuffle=False)
            if mode == exported_mode:
                pred = predict(wrapped, data_loader, spec, device)
            else:
                pred = predict_with(_localizer(model, wrapped, mode), data_loader, device)
            per[c.name] = metrics(pred)
        report["modes"][mode] = per
    report["written"] = str(run / EVAL_FILE)
    write_text_atomic(run / EVAL_FILE, json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def _localizer(model: AnomalyModel, wrapped: UInt8Input, mode: str):
    def run(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return model.localize(wrapped.normalize(images), mode)
    return run
