"""Accuracy of each model on synthetic categories after its default CPU training budget.

    python benchmarks/accuracy.py --json benchmarks/results/accuracy-synthetic.json

    python benchmarks/accuracy.py --models spr,diffad --categories weave --json benchmarks/results/accuracy-synthetic.json

Data: `edge_ad.data.synthetic` categories (40 normal training images, of which 4 are held out for
calibration; 15 good and 6 per defect type in test), seed 0, offline EfficientNet-Lite0 backbone for
every model. SimpleNet and MKD train one model per category; UniAD trains one model on all of them
(its paper's unified setting). SPR and DiffAD train from scratch (no backbone) and were measured on the
texture category `weave`. The budget is each model's `DEFAULTS["cpu"]` (edge-ad train --budget cpu).
Figures are the means over categories; per-category figures are kept beside them. MKD's entry also
carries the paper's `gradient` localization measured on the same images (`edge-ad eval`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import cpu_name, environment, read_results, write_json

DEFAULT_CATEGORIES = "weave,washer,conveyor"
UNIFIED = {"uniad"}


def run_model(name: str, folders: list[Path], work: Path) -> dict:
    from edge_ad.models import training_defaults
    from edge_ad.training.evaluate import evaluate_run
    from edge_ad.training.run import TrainConfig, mean_of, train

    defaults = training_defaults(name, "cpu")
    start = time.perf_counter()
    groups = [folders] if name in UNIFIED else [[f] for f in folders]
    per: dict = {}
    extra: dict = {}
    for group in groups:
        run = work / name / ("unified" if len(group) > 1 else group[0].name)
        result = train(TrainConfig(data=[str(f) for f in group], out=str(run), model=name, budget="cpu",
                                   overwrite=True))
        per.update(result.get("categories", {group[0].name: result}))
        if name == "mkd":
            report = evaluate_run(run, modes=["gradient"])
            extra.setdefault("gradient_mode", {}).update(report["modes"]["gradient"])
    entry = {key: mean_of([m[key] for m in per.values()]) for key in ("image_auroc", "pixel_auroc", "aupro")}
    size = json.loads((run / "run.json").read_text())["config"]["image_size"]
    epochs = defaults["epochs"]
    if isinstance(epochs, dict):          # staged training (DiffAD)
        epochs = " + ".join(f"{stage} {n}" for stage, n in epochs.items())
    entry["budget"] = (f"{epochs} epochs, batch {defaults['batch_size']}, {size} px, CPU"
                       + (", one model for all categories" if name in UNIFIED else ", one model per category"))
    entry["categories"] = {c: {k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro")} for c, m in per.items()}
    if extra:
        g = extra["gradient_mode"]
        entry["gradient_mode"] = {key: mean_of([m[key] for m in g.values()]) for key in ("image_auroc", "pixel_auroc", "aupro")}
        entry["gradient_mode"]["categories"] = g
    entry["seconds"] = round(time.perf_counter() - start, 1)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="simplenet,mkd,uniad")
    parser.add_argument("--categories", default=DEFAULT_CATEGORIES)
    parser.add_argument("--work", default="runs/accuracy", help="data and runs go here")
    parser.add_argument("--json", help="{model: {image_auroc, pixel_auroc, aupro, budget, ...}}: the models run "
                                       "here replace their entries, others are kept")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")      # the offline backbone; never wait on a hub
    from edge_ad.data.synthetic import Counts, make_category

    results = read_results(args.json) if args.json else {}     # a damaged file is refused before hours of training
    work = Path(args.work)
    folders = [make_category(work / "data", c, counts=Counts(train=40, test_good=15, test_per_defect=6), seed=0)
               for c in args.categories.split(",")]
    machine = f"CPU: {cpu_name()}, {os.cpu_count()} cores"
    for name in args.models.split(","):
        results[name] = run_model(name, folders, work)
        results[name]["machine"] = machine
        results[name]["environment"] = environment(("edge_ad", "torch", "timm", "numpy"))
        print(f"{name}: image AUROC {results[name]['image_auroc']:.3f}, pixel AUROC {results[name]['pixel_auroc']:.3f}, "
              f"AUPRO {results[name]['aupro']:.3f} ({results[name]['budget']}, {results[name]['seconds']:.0f} s)", flush=True)
        if args.json:
            write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
