"""`edge-ad eval RUN`: a trained run's metrics on test data, for each localization mode it has.

The first mode is always what bundles compute (the model's forward map through the heatmap kernel). A
model with other modes (MKD's paper-style `gradient` maps) lists them in `localization_modes` and
computes them in `localize(x, mode) -> (maps, scores)` (models/base.py); all modes are scored on the
same images, so a departure of the exported mode from the paper is a measured difference, not a guess.

The test images are the run's (the data sources run.json records, in their layouts), or `data`
(folders, their layout detected or named by `format`). The exported mode's metrics include the
operating point at the run's calibrated image threshold. A category without test images has its
metrics null with the reason, as in training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edge_ad.models.base import AnomalyModel
from edge_ad.runtime.preprocess import Geometry
from edge_ad.training.adapter import UInt8Input
from edge_ad.training.calibrate import Calibration
from edge_ad.training.data import Prepared, loader
from edge_ad.training.predict import metrics, predict, predict_with
from edge_ad.training.fit import write_text_atomic
from edge_ad.training.run import (EVAL_FILE, categories_to_test, check_device, load_run, no_test_metrics,
                                  with_operating_point)


def evaluate_run(run: str | Path, *, data: list[str] | None = None, modes: list[str] | None = None,
                 device: str = "cpu", batch_size: int = 8, format: str | None = None,
                 category: str | None = None) -> dict:
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
    categories = categories_to_test(info, data, format=format, category=category)
    threshold = Calibration.from_dict(info["calibration"]).image_threshold
    geometry = Geometry.from_dict(info["geometry"])
    wrapped = UInt8Input(model, model.mean, model.std).to(device).eval()
    spec = model.heatmap_spec()
    report: dict = {"run": str(run), "model": info["model"], "exported_mode": exported_mode, "modes": {}}
    for mode in modes:
        per = {}
        for c in categories:
            if c.test is None or not len(c.test):
                per[c.name] = no_test_metrics(c.test_where)
                continue
            data_loader = loader(Prepared(c.test, geometry), batch_size, shuffle=False)
            if mode == exported_mode:       # the threshold is this mode's: its operating point
                pred = predict(wrapped, data_loader, spec, device)
                per[c.name] = with_operating_point(metrics(pred), pred, threshold)
            else:
                pred = predict_with(_localizer(model, wrapped, mode), data_loader, device)
                per[c.name] = metrics(pred)
            if c.test_note:
                per[c.name]["test_note"] = c.test_note
        report["modes"][mode] = per
    report["written"] = str(run / EVAL_FILE)
    write_text_atomic(run / EVAL_FILE, json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def _localizer(model: AnomalyModel, wrapped: UInt8Input, mode: str):
    def run(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return model.localize(wrapped.normalize(images), mode)
    return run
