"""Soak: four sources through one detector for ten minutes, watching memory, duplicates and losses.

    python benchmarks/soak.py --bundle runs/demo/bundle --json benchmarks/results/soak.json

Sources: three synthetic conveyor videos replayed in real time and looped (15 FPS each; the first
has per-frame labels) and a loopback HTTP MJPEG camera (15 FPS) that goes down for 3 s at one and at
two thirds of the run. `edge-ad stream` runs in its own process with `--events-frames all` and a
Prometheus endpoint, which is scraped every 10 s; its resident memory is sampled every 2 s.

Figures: `rss_growth_pct` = the median RSS over the last 30 s against the median over the 30 s
after the warm-up (the first 60 s, or 10% of a shorter run). `duplicate_frames`: (source, frame)
pairs in the events file more than once. `missed_anomalous_frames`: frames of the labelled video,
up to the last one processed, that the labels call anomalous and that have no line in the events
file (a frame lost by the stream). How many of those the model *flagged* is reported beside it:
that is the model's recall, not the stream's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from common import environment, write_json

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "export")]   # edge_ad, and the export pipeline (edge_ad_export)

from edge_ad.data.synthetic import Counts, make_category, write_conveyor_video  # noqa: E402
from edge_ad.stream.mjpeg import MjpegServer  # noqa: E402

LABELLED_FRAMES = 1500          # 100 s at 15 FPS: six passes in ten minutes


def make_bundle(work: Path, epochs: int) -> Path:
    """The demo's recipe (SimpleNet, EfficientNet-Lite0, 224 px) with a shorter training budget."""
    from edge_ad.training.run import TrainConfig, train
    from edge_ad_export.exporter import export_run

    data = make_category(work / "data", "conveyor", counts=Counts(train=40, test_good=15, test_per_defect=6), seed=0)
    train(TrainConfig(data=str(data), out=str(work / "run"), overwrite=True, epochs=epochs, batch_size=8,
                      model_kwargs={"image_size": 224, "resize_size": 256}))
    return export_run(work / "run", work / "bundle", overwrite=True).path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def watch(proc: subprocess.Popen, duration: float, camera: MjpegServer, metrics_port: int) -> dict:
    """Sample RSS, scrape the metrics, and take the camera down twice, until the process exits."""
    start = time.monotonic()
    samples: list[tuple[float, float]] = []
    scrapes, outages = 0, []
    downs = [duration / 3, 2 * duration / 3]
    next_scrape = 10.0
    while proc.poll() is None:
        t = time.monotonic() - start
        if (mb := rss_mb(proc.pid)) is not None:
            samples.append((t, mb))
        if downs and t >= downs[0]:
            downs.pop(0)
            camera.stop()
            time.sleep(3.0)
            camera.start()
            outages.append(round(t, 1))
        if t >= next_scrape:
            next_scrape += 10.0
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
                scrapes += 1
            except OSError:
                pass
        time.sleep(2.0)
    return {"samples": samples, "scrapes": scrapes, "outages_at_s": outages}


def rss_growth(samples: list[tuple[float, float]], duration: float) -> dict:
    warm = min(60.0, 0.1 * duration)
    early = [mb for t, mb in samples if warm <= t < warm + 30]
    late = [mb for t, mb in samples if t >= max(samples[-1][0] - 30, warm + 30)]
    if not early or not late:
        raise RuntimeError("the run was too short to compare memory after the warm-up")
    a, b = statistics.median(early), statistics.median(late)
    return {"rss_after_warmup_mb": round(a, 1), "rss_end_mb": round(b, 1),
            "rss_max_mb": round(max(mb for _, mb in samples), 1), "rss_growth_pct": round(100 * (b - a) / a, 2),
            "warmup_s": warm}


def check_events(events: list[dict], labelled: str, labels: list[dict]) -> dict:
    frames = [e for e in events if e.get("event") in ("frame", "anomaly")]
    pairs = Counter((e["source"], e["frame"]) for e in frames)
    mine = {e["frame"]: e for e in frames if e["source"] == labelled}
    last = max(mine) if mine else -1
    anomalous = [i for i in range(last + 1) if labels[i % len(labels)]["anomalous"]]
    return {"frames": len(frames), "duplicate_frames": sum(n - 1 for n in pairs.values() if n > 1),
            "labelled_frames_processed": len(mine), "labelled_frames_lost": (last + 1) - len(mine),
            "anomalous_frames_labelled": len(anomalous),
            "missed_anomalous_frames": sum(1 for i in anomalous if i not in mine),
            "anomalous_frames_flagged_by_model": sum(1 for i in anomalous if i in mine and mine[i]["anomalous"]),
            "normal_frames_flagged_by_model": sum(1 for i, e in mine.items()
                                                  if e["anomalous"] and not labels[i % len(labels)]["anomalous"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle to run (default: train the demo recipe)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs when no --bundle is given")
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "soak")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or make_bundle(args.work, args.epochs)
    videos = []
    for seed, frames in ((0, LABELLED_FRAMES), (1, 300), (2, 300), (3, 300)):
        path = args.work / f"belt{seed}.mp4"
        if not path.exists():
            write_conveyor_video(path, frames=frames, seed=seed)
        videos.append(path)
    labels = [json.loads(line) for line in (args.work / "belt0_labels.jsonl").read_text().splitlines()]
    camera = MjpegServer(videos[3], fps=15.0).start()
    events_path = args.work / "events.jsonl"
    events_path.unlink(missing_ok=True)
    metrics_port = free_port()
    command = [sys.executable, "-m", "edge_ad.cli", "--log-format", "json", "stream", str(bundle),
               "--backend", "onnxruntime-cpu", *[a for v in videos[:3] for a in ("--source", str(v))],
               "--source", camera.url, "--realtime", "--loop", "--duration", str(args.duration),
               "--events", str(events_path), "--events-frames", "all", "--metrics-port", str(metrics_port),
               "--retry-initial", "0.25", "--retry-max", "4"]
    with open(args.work / "stream.log", "w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, cwd=REPO)
        try:
            watched = watch(proc, args.duration, camera, metrics_port)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
            camera.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"edge-ad stream exited with {proc.returncode}; see {args.work / 'stream.log'}")
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    summary = next(e for e in reversed(events) if e["event"] == "summary")
    result = {"sources": [*(v.name for v in videos[:3]), "http MJPEG loopback camera"],
              "duration_s": summary["seconds"], **rss_growth(watched["samples"], args.duration),
              **check_events(events, videos[0].name, labels),
              "fps": summary["fps"], "latency_ms_p50": summary["latency_ms_p50"],
              "latency_ms_p99": summary["latency_ms_p99"], "batch": summary["batch"],
              "per_source": {k: {f: v[f] for f in ("frames", "fps", "latency_ms_p50", "latency_ms_p99", "dropped",
                                                   "corrupt", "reconnects", "gap_seconds", "state")}
                             for k, v in summary["sources"].items()},
              "camera_outages_at_s": watched["outages_at_s"], "metrics_scrapes": watched["scrapes"],
              "bundle": str(bundle), "model": summary.get("model", "simplenet"),
              "environment": environment(("edge_ad", "onnxruntime", "opencv-python", "numpy", "prometheus-client"))}
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
