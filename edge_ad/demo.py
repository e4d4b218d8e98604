"""The main job on the embedded default, end to end on the CPU, offline:

synthetic conveyor category + video -> train SimpleNet (offline EfficientNet-Lite0 backbone, a short
budget) -> export the bundle -> ONNX Runtime -> stream the video -> annotated mp4, events.jsonl and
summary.json under the output folder.

The output folder is the demo's own: it writes (and replaces on the next run) data/, run/, bundle/,
events.jsonl, annotated.mp4 and summary.json there. So that it never replaces files it did not write,
a folder that already holds anything is used only when it carries the demo's marker file (`.edge_ad-demo`,
written when the demo takes the folder), or is recognisably an earlier demo's output (only the demo's
names, with its summary.json), or when `overwrite=True` is given.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from edge_ad.data.synthetic import Counts, make_category, write_conveyor_video
from edge_ad.metrics import image_auroc

EPOCHS = 45          # 225 optimizer steps of batch 8 on 36 training images: about 4.5 min on 2 cores
IMAGE_SIZE = 224     # the paper's 256 -> 224 setting, faster on a CPU than the code's 329 -> 288
MARKER = ".edge_ad-demo"
OUTPUTS = ("data", "run", "bundle", "events.jsonl", "annotated.mp4", "summary.json")   # what a demo writes
_SUMMARY_KEYS = {"model", "budget", "video_frame_auroc", "model_fps", "stream_fps"}


class DemoOutError(ValueError):
    """--out is not a folder the demo may write into; the message says why and what to do."""


def claim_out(out: Path, *, overwrite: bool = False) -> None:
    """Make `out` the demo's folder (create it, write the marker), or refuse one that holds files the
    demo did not write: every output of the demo replaces what is there under its name."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DemoOutError(f"--out {out} exists and is not a folder; choose a folder for the demo's outputs")
    if out.is_dir() and not overwrite and not (out / MARKER).is_file() and any(out.iterdir()) \
            and not _earlier_demo(out):
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise DemoOutError(f"--out {out} already holds files the demo did not write ({shown}); the demo replaces "
                           f"{', '.join(OUTPUTS)} in its folder: choose an empty or new folder, or pass --overwrite "
                           "to let it replace them")
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    if not marker.is_file():
        marker.write_text("edge_ad demo output folder: `edge-ad demo --out` may replace its files\n")


def _earlier_demo(out: Path) -> bool:
    """A folder written by a demo from before the marker: only the demo's names, and its summary.json."""
    if not {p.name for p in out.iterdir()} <= set(OUTPUTS):
        return False
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and _SUMMARY_KEYS <= set(summary)


def run(out: str | Path, *, seed: int = 0, epochs: int | None = None, video_frames: int = 300,
        overwrite: bool = False) -> dict:
    """The demo into `out` (see the module docstring: a folder of someone else's files is refused unless
    `overwrite`); returns the summary also written to out/summary.json."""
    import edge_ad
    from edge_ad.stream import EventsSink, VideoSink
    from edge_ad.training.fit import write_text_atomic
    from edge_ad.training.run import TrainConfig, train
    from edge_ad_export.exporter import export_run

    out = Path(out)
    claim_out(out, overwrite=overwrite)
    epochs = EPOCHS if epochs is None else epochs
    start = time.perf_counter()
    data = make_category(out / "data", "conveyor", counts=Counts(train=40, test_good=15, test_per_defect=6), seed=seed)
    labels_path = write_conveyor_video(out / "data" / "conveyor.mp4", frames=video_frames, seed=seed)
    print(f"data: {data}, video: {out / 'data' / 'conveyor.mp4'}")
    metrics = train(TrainConfig(data=str(data), out=str(out / "run"), epochs=epochs, batch_size=8, seed=seed,
                                overwrite=True, model_kwargs={"image_size": IMAGE_SIZE, "resize_size": IMAGE_SIZE * 8 // 7}))
    bundle = export_run(out / "run", out / "bundle", overwrite=True)
    detector = edge_ad.load(bundle.path, backend="onnxruntime-cpu")
    model_fps = _model_fps(detector)
    for stale in ("events.jsonl", "annotated.mp4"):
        (out / stale).unlink(missing_ok=True)
    stream = detector.stream(str(out / "data" / "conveyor.mp4"),
                             sinks=[VideoSink(out / "annotated.mp4"), EventsSink(out / "events.jsonl")])
    scores = {item.frame.index: item.result.score for item in stream}
    labels = [json.loads(line) for line in labels_path.read_text().splitlines()]
    frame_labels = np.array([e["anomalous"] for e in labels if e["frame"] in scores], dtype=int)
    frame_scores = np.array([scores[e["frame"]] for e in labels if e["frame"] in scores])
    s = stream.summary()
    summary = {
        "model": "simplenet", "backbone": "tf_efficientnet_lite0 (offline ImageNet weights)",
        "budget": f"{epochs} epochs, batch 8, {IMAGE_SIZE} px, CPU",
        "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics["pixel_auroc"], "aupro": metrics["aupro"],
        "model_fps": model_fps, "stream_fps": s["fps"],
        "stream_latency_ms_p50": s["latency_ms_p50"], "stream_latency_ms_p99": s["latency_ms_p99"],
        "video_frames": s["frames"], "video_frame_auroc": image_auroc(frame_labels, frame_scores),
        "events": s["anomalous"], "backend": "onnxruntime (CPU)", "seconds": round(time.perf_counter() - start, 1),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _model_fps(detector, repeats: int = 50) -> float:
    """Model-only frames per second at batch 1: median of timed backend calls after warm-up."""
    h, w = detector.geometry.crop
    batch = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    for _ in range(5):
        detector.infer(batch)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        detector.infer(batch)
        times.append(time.perf_counter() - t)
    return 1.0 / statistics.median(times)
