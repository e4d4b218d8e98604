"""Does inspecting every pixel cost accuracy? The same model trained with each fit on the same data.

    python benchmarks/fit_accuracy.py --json benchmarks/results/accuracy-synthetic.json

For each synthetic category and each fit (squash, letterbox, crop: see edge_ad/runtime/preprocess.py),
SimpleNet is trained with the same seed, data and budget, exported, and run by the runtime
(ONNX Runtime, CPU) on the category's test images at their own size. Two views of the figures:

- `field_of_view`: the runtime's heat maps over the whole image, against the whole mask: what a line
  gets. A defect in the strips that "crop" never inspects counts as missed there.
- `model_view`: the training run's own metrics (metrics.json), on the pixels the model sees: for
  "crop" the centre crop only, so its border defects are left out of the count.

The conveyor category also streams the demo's video (conveyor.mp4, 300 frames) and scores each frame
against its label (`video_frame_auroc`, the demo's figure). The results go under the key `fit` of the
JSON file, next to the per-model entries that benchmarks/accuracy.py writes (kept as they are).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from common import cpu_name, environment, read_results, write_json

FITS = ("squash", "letterbox", "crop")
KEYS = ("image_auroc", "pixel_auroc")


def full_frame_metrics(bundle: Path, data: Path) -> dict:
    """Image and pixel AUROC of the bundle on data/test at each image's own size (masks from ground_truth)."""
    import edge_ad
    from edge_ad.imaging import read_image
    from edge_ad.metrics import image_auroc, pixel_auroc

    detector = edge_ad.load(bundle, backend="onnxruntime-cpu")
    labels, scores, masks, maps = [], [], [], []
    for path in sorted((data / "test").glob("*/*.png")):
        defect = path.parent.name
        result = detector.predict(path)
        mask_path = data / "ground_truth" / defect / f"{path.stem}_mask.png"
        mask = read_image(mask_path)[..., 0] > 127 if defect != "good" else np.zeros(result.image_size, bool)
        labels.append(int(defect != "good"))
        scores.append(result.score)
        masks.append(mask)
        maps.append(result.heatmap)
    return {"image_auroc": image_auroc(np.array(labels), np.array(scores)),
            "pixel_auroc": pixel_auroc(np.stack(masks), np.stack(maps)), "test_images": len(labels)}


def video_frame_auroc(bundle: Path, video: Path, labels_path: Path) -> float:
    """The demo's figure: every frame of the conveyor video streamed, its score against its label."""
    import edge_ad
    from edge_ad.metrics import image_auroc

    detector = edge_ad.load(bundle, backend="onnxruntime-cpu")
    scores = {item.frame.index: item.result.score for item in detector.stream(str(video))}
    labels = [json.loads(line) for line in labels_path.read_text().splitlines()]
    return image_auroc(np.array([e["anomalous"] for e in labels if e["frame"] in scores], dtype=int),
                       np.array([scores[e["frame"]] for e in labels if e["frame"] in scores]))


def run_one(data: Path, fit: str, work: Path, args: argparse.Namespace) -> dict:
    """Train, export and measure one category with one fit."""
    from edge_ad.training.run import TrainConfig, train
    from edge_ad_export.exporter import export_run

    start = time.perf_counter()
    run = work / "runs" / f"{data.name}-{fit}"
    metrics = train(TrainConfig(data=str(data), out=str(run), model="simplenet", epochs=args.epochs, batch_size=8,
                                seed=args.seed, overwrite=True, fit=fit,
                                model_kwargs={"image_size": args.image_size, "resize_size": args.image_size * 8 // 7}))
    bundle = export_run(run, work / "bundles" / f"{data.name}-{fit}", overwrite=True).path
    entry = {"field_of_view": full_frame_metrics(bundle, data),
             "model_view": {key: metrics[key] for key in (*KEYS, "aupro")}}
    if data.name == "conveyor":
        video = work / "conveyor.mp4"
        entry["video_frame_auroc"] = video_frame_auroc(bundle, video, video.with_name("conveyor_labels.jsonl"))
    entry["seconds"] = round(time.perf_counter() - start, 1)
    return entry


def means(per: dict, fit: str) -> dict:
    """Mean over categories of each figure of one fit."""
    out = {view: {key: float(np.mean([per[c][fit][view][key] for c in per])) for key in KEYS}
           for view in ("field_of_view", "model_view")}
    videos = [per[c][fit]["video_frame_auroc"] for c in per if "video_frame_auroc" in per[c][fit]]
    if videos:
        out["video_frame_auroc"] = float(np.mean(videos))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--categories", default="weave,washer,conveyor")
    parser.add_argument("--fits", default=",".join(FITS))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/fit-accuracy", help="data, runs and bundles go here")
    parser.add_argument("--json", help="results file: the `fit` entry is replaced, the others are kept")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")      # the offline backbone; never wait on a hub
    from edge_ad.data.synthetic import Counts, make_category, write_conveyor_video

    results = read_results(args.json) if args.json else {}     # a damaged file is refused before training
    work = Path(args.work)
    start = time.perf_counter()
    categories = args.categories.split(",")
    folders = [make_category(work / "data", c, counts=Counts(train=40, test_good=15, test_per_defect=6),
                             seed=args.seed) for c in categories]
    if "conveyor" in categories:
        write_conveyor_video(work / "conveyor.mp4", frames=300, seed=args.seed)
    fits = args.fits.split(",")
    per: dict = {}
    for data in folders:
        for fit in fits:
            per.setdefault(data.name, {})[fit] = entry = run_one(data, fit, work, args)
            fov, view = entry["field_of_view"], entry["model_view"]
            print(f"{data.name} {fit}: whole image AUROC {fov['image_auroc']:.3f} pixel {fov['pixel_auroc']:.3f} | "
                  f"model view {view['image_auroc']:.3f} / {view['pixel_auroc']:.3f}"
                  + (f" | video {entry['video_frame_auroc']:.3f}" if "video_frame_auroc" in entry else "")
                  + f" ({entry['seconds']:.0f} s)", flush=True)
    from edge_ad.runtime.preprocess import DEFAULT_FIT

    results["fit"] = {
        "default": DEFAULT_FIT, "model": "simplenet", "backbone": "tf_efficientnet_lite0 (offline ImageNet weights)",
        "budget": f"{args.epochs} epochs, batch 8, {args.image_size} px (crop: resize {args.image_size * 8 // 7}), "
                  f"CPU, one model per category and fit, seed {args.seed}",
        "data": "edge_ad.data.synthetic, 36 training + 4 calibration normals, 15 good + 6 per defect type in test",
        "mean": {fit: means(per, fit) for fit in fits}, "categories": per,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": f"CPU: {cpu_name()}, {os.cpu_count()} cores",
        "environment": environment(("edge_ad", "torch", "timm", "numpy", "onnxruntime", "opencv-python")),
    }
    for fit in fits:
        m = results["fit"]["mean"][fit]
        print(f"mean {fit}: whole image AUROC {m['field_of_view']['image_auroc']:.3f} pixel "
              f"{m['field_of_view']['pixel_auroc']:.3f}")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
