"""Soak: four sources through one detector for ten minutes, cameras and a broker going down on the way.

    python benchmarks/soak.py --bundle runs/demo/bundle --json benchmarks/results/soak.json

Sources, each at `--fps` (10 by default, so the run leaves room for other work on a small box):
two synthetic conveyor videos replayed in real time and looped (the first has per-frame labels), a
loopback HTTP MJPEG camera that goes down for 3 s at one and at two thirds of the run, and a real
RTSP H.264 camera (GStreamer's RTSP server of tests/servers, serving a conveyor video encoded by
ffmpeg) that is killed and brought back on the same port twice (at 20% and 70%, 5 s each). Every
anomalous frame goes to a real MQTT broker (mosquitto, tests/servers) that is stopped for a minute
at 40% of the run; a subscriber on the loopback counts what arrives. `edge-ad stream` runs in its
own process with `--events-frames all` and a Prometheus endpoint scraped every 10 s; its resident
memory is sampled every 2 s.

Figures: `rss_growth_pct` = the median RSS over the last 30 s against the median over the 30 s
after the warm-up (the first 60 s, or 10% of a shorter run); `rss_mb_at_s` is its course (about 60
samples), to tell a step from a slope. `file_frames_lost`: per video file,
frame positions up to the last one processed with no line in the events file (must be 0: files
lose nothing). `duplicate_frames`: (source, frame) pairs in the events file more than once.
`missed_anomalous_frames`: frames of the labelled video the labels call anomalous with no line (a
frame lost by the stream); how many the model *flagged* is its recall, reported beside it. `mqtt`:
the anomalous frames against what the sink delivered, dropped (its queue was full while the broker
was down) and left unsent, and what the subscriber received.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from common import environment, write_json

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "export"), str(REPO / "tests")]   # edge_ad, edge_ad_export, test servers

from edge_ad.data.synthetic import Counts, make_category, write_conveyor_video  # noqa: E402
from edge_ad.stream.mjpeg import MjpegServer  # noqa: E402
from servers import free_port  # noqa: E402
from servers.mosquitto import Broker, Subscriber, mosquitto_binary  # noqa: E402
from servers.rtsp import RtspCamera, gst_python  # noqa: E402

LABELLED_SECONDS = 100          # the labelled video's length: six passes in ten minutes
MJPEG_DOWN_S, RTSP_DOWN_S = 3.0, 5.0
BROKER_DOWN_S = 60.0


def make_bundle(work: Path, epochs: int) -> Path:
    """The demo's recipe (SimpleNet, EfficientNet-Lite0, 224 px) with a shorter training budget."""
    from edge_ad.training.run import TrainConfig, train
    from edge_ad_export.exporter import export_run

    data = make_category(work / "data", "conveyor", counts=Counts(train=40, test_good=15, test_per_defect=6), seed=0)
    train(TrainConfig(data=str(data), out=str(work / "run"), overwrite=True, epochs=epochs, batch_size=8,
                      model_kwargs={"image_size": 224, "resize_size": 256}))
    return export_run(work / "run", work / "bundle", overwrite=True).path


def videos(work: Path, fps: int, duration: float) -> list[Path]:
    """belt0 (labelled), belt1 (files), belt2 (the MJPEG camera's), belt3.h264.mp4 (the RTSP camera's: long
    enough for the whole run, so the camera never ends by itself)."""
    paths = []
    for seed, frames in ((0, LABELLED_SECONDS * fps), (1, 20 * fps), (2, 20 * fps), (3, 20 * fps)):
        path = work / f"belt{seed}-{fps}fps.mp4"
        if not path.exists():
            write_conveyor_video(path, frames=frames, fps=fps, seed=seed)
        paths.append(path)
    h264 = work / f"belt3-{fps}fps-{int(duration)}s.h264.mp4"
    if not h264.exists():
        subprocess.run([shutil.which("ffmpeg") or "ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-stream_loop",
                        "-1", "-i", str(paths[3]), "-t", str(duration + 120), "-c:v", "libx264", "-preset", "veryfast",
                        "-g", str(fps), "-pix_fmt", "yuv420p", "-r", str(fps), str(h264)], check=True, timeout=1800)
    return [*paths[:3], h264]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def schedule(duration: float, mjpeg: MjpegServer, rtsp: RtspCamera, broker: Broker) -> list[tuple[float, str, object]]:
    """(second, what, action) of the outages, in time order."""
    down = min(BROKER_DOWN_S, 0.1 * duration)
    plan = [(duration / 3, "mjpeg down", mjpeg.stop), (duration / 3 + MJPEG_DOWN_S, "mjpeg up", mjpeg.start),
            (2 * duration / 3, "mjpeg down", mjpeg.stop), (2 * duration / 3 + MJPEG_DOWN_S, "mjpeg up", mjpeg.start),
            (0.2 * duration, "rtsp down", rtsp.stop), (0.2 * duration + RTSP_DOWN_S, "rtsp up", rtsp.start),
            (0.7 * duration, "rtsp down", rtsp.stop), (0.7 * duration + RTSP_DOWN_S, "rtsp up", rtsp.start),
            (0.4 * duration, "broker down", broker.stop), (0.4 * duration + down, "broker up", broker.start)]
    return sorted(plan, key=lambda step: step[0])


def watch(proc: subprocess.Popen, plan: list, metrics_port: int) -> dict:
    """Sample RSS, scrape the metrics and carry out the outages, until the process exits."""
    start = time.monotonic()
    samples: list[tuple[float, float]] = []
    scrapes, done = 0, []
    next_scrape = 10.0
    while proc.poll() is None:
        t = time.monotonic() - start
        if (mb := rss_mb(proc.pid)) is not None:
            samples.append((t, mb))
        while plan and t >= plan[0][0]:
            _, what, action = plan.pop(0)
            action()
            done.append({"at_s": round(time.monotonic() - start, 1), "what": what})
        if t >= next_scrape:
            next_scrape += 10.0
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
                scrapes += 1
            except OSError:
                pass
        time.sleep(min(2.0, max(0.05, plan[0][0] - t)) if plan else 2.0)
    return {"samples": samples, "scrapes": scrapes, "outages": done}


def rss_growth(samples: list[tuple[float, float]], duration: float) -> dict:
    warm = min(60.0, 0.1 * duration)
    early = [mb for t, mb in samples if warm <= t < warm + 30]
    late = [mb for t, mb in samples if t >= max(samples[-1][0] - 30, warm + 30)]
    if not early or not late:
        raise RuntimeError("the run was too short to compare memory after the warm-up")
    a, b = statistics.median(early), statistics.median(late)
    timeline = {str(int(t)): round(mb, 1) for t, mb in samples[::max(1, len(samples) // 60)]}
    return {"rss_after_warmup_mb": round(a, 1), "rss_end_mb": round(b, 1),
            "rss_max_mb": round(max(mb for _, mb in samples), 1), "rss_growth_pct": round(100 * (b - a) / a, 2),
            "warmup_s": warm, "rss_mb_at_s": timeline}


def check_events(events: list[dict], files: list[str], labelled: str, labels: list[dict]) -> dict:
    frames = [e for e in events if e.get("event") in ("frame", "anomaly")]
    pairs = Counter((e["source"], e["frame"]) for e in frames)
    lost = {}
    for name in files:
        seen = {e["frame"] for e in frames if e["source"] == name}
        lost[name] = (max(seen) + 1 - len(seen)) if seen else None
    mine = {e["frame"]: e for e in frames if e["source"] == labelled}
    last = max(mine) if mine else -1
    anomalous = [i for i in range(last + 1) if labels[i % len(labels)]["anomalous"]]
    return {"frames": len(frames), "duplicate_frames": sum(n - 1 for n in pairs.values() if n > 1),
            "file_frames_lost": lost, "labelled_frames_processed": len(mine),
            "anomalous_frames_labelled": len(anomalous),
            "missed_anomalous_frames": sum(1 for i in anomalous if i not in mine),
            "anomalous_frames_flagged_by_model": sum(1 for i in anomalous if i in mine and mine[i]["anomalous"]),
            "normal_frames_flagged_by_model": sum(1 for i, e in mine.items()
                                                  if e["anomalous"] and not labels[i % len(labels)]["anomalous"])}


def mqtt_figures(summary: dict, received: list[dict], back_at: float) -> dict:
    """What the MQTT sink did with the anomalous frames, and what reached the subscriber (`back_at`: the
    Unix time the broker came back)."""
    sink = next(s for s in summary["sinks"] if s["kind"] == "mqtt")
    seqs = Counter(m["seq"] for m in received)
    return {"anomalous_frames": summary["anomalous"], "accepted": sink["accepted"], "delivered": sink["delivered"],
            "dropped_queue_full": sink["dropped"], "refused": sink["refused"], "failed": sink["failed"],
            "unsent_at_end": sink["unsent"], "queued_at_end": sink["queued"], "retries": sink["retries"],
            "received_by_subscriber": len(seqs), "received_twice": sum(n - 1 for n in seqs.values() if n > 1),
            "received_for_frames_after_broker_back": sum(1 for m in received if m["time"] > back_at)}


def check_servers() -> tuple[str, str]:
    python, why = gst_python()
    if python is None:
        raise RuntimeError(f"the RTSP camera cannot run: {why}")
    binary, why = mosquitto_binary()
    if binary is None:
        raise RuntimeError(f"the MQTT broker cannot run: {why}")
    return python, binary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle to run (default: train the demo recipe)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs when no --bundle is given")
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--fps", type=int, default=10, help="frame rate of every source")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "soak")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    gst, mosquitto = check_servers()
    bundle = args.bundle.resolve() if args.bundle else make_bundle(args.work, args.epochs)
    belt0, belt1, belt2, h264 = videos(args.work, args.fps, args.duration)
    labels = [json.loads(line) for line in belt0.with_name(belt0.stem + "_labels.jsonl").read_text().splitlines()]
    mjpeg = MjpegServer(belt2, fps=float(args.fps)).start()
    rtsp = RtspCamera(gst, h264, log=args.work / "rtsp.log").start()
    broker = Broker(mosquitto, args.work).start()
    subscriber = Subscriber(broker.port, "edge_ad/#")
    events_path = args.work / "events.jsonl"
    events_path.unlink(missing_ok=True)
    metrics_port = free_port()
    command = [sys.executable, "-m", "edge_ad.cli", "--log-format", "json", "stream", str(bundle),
               "--backend", "onnxruntime-cpu", "--source", str(belt0), "--source", str(belt1), "--source", mjpeg.url,
               "--source", rtsp.url + "?rtsp_transport=tcp", "--realtime", "--loop", "--duration", str(args.duration),
               "--events", str(events_path), "--events-frames", "all", "--metrics-port", str(metrics_port),
               "--mqtt", broker.url, "--retry-initial", "0.25", "--retry-max", "4"]
    plan = schedule(args.duration, mjpeg, rtsp, broker)
    broker_down = [round(t, 1) for t, what, _ in plan if what.startswith("broker")]
    try:
        with open(args.work / "stream.log", "w") as log:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, cwd=REPO)
            started = time.time()
            try:
                watched = watch(proc, plan, metrics_port)
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)
        time.sleep(2.0)                                   # the last acknowledged messages reach the subscriber
        received = list(m for _, m in subscriber.messages)
    finally:
        subscriber.close()
        for server in (mjpeg, rtsp, broker):
            server.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"edge-ad stream exited with {proc.returncode}; see {args.work / 'stream.log'}")
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    summary = next(e for e in reversed(events) if e["event"] == "summary")
    per = summary["sources"]
    rtsp_name = next(name for name in per if name.startswith("rtsp://"))
    mjpeg_name = next(name for name in per if name.startswith("http://"))
    cameras = ("frames", "reconnects", "gap_seconds", "dropped", "corrupt")
    result = {"sources": [belt0.name, belt1.name, "http MJPEG loopback camera", "rtsp H.264 loopback camera"],
              "fps_per_source": args.fps, "duration_s": summary["seconds"],
              **rss_growth(watched["samples"], args.duration),
              **check_events(events, [belt0.name, belt1.name], belt0.name, labels),
              "mqtt": {**mqtt_figures(summary, received, started + broker_down[1]), "broker_down_s": broker_down},
              "rtsp_camera": {f: per[rtsp_name][f] for f in cameras},
              "mjpeg_camera": {f: per[mjpeg_name][f] for f in cameras},
              "fps": summary["fps"], "anomalous": summary["anomalous"], "latency_ms_p50": summary["latency_ms_p50"],
              "latency_ms_p99": summary["latency_ms_p99"], "batch": summary["batch"],
              "per_source": {k: {f: v[f] for f in ("frames", "fps", "latency_ms_p50", "latency_ms_p99", "dropped",
                                                   "corrupt", "reconnects", "gap_seconds", "state")}
                             for k, v in per.items()},
              "outages": watched["outages"], "broker_down_s": broker_down, "metrics_scrapes": watched["scrapes"],
              "bundle": str(bundle), "model": next((e["model"] for e in events if e["event"] == "start"), None),
              "environment": environment(("edge_ad", "onnxruntime", "opencv-python", "numpy", "prometheus-client",
                                          "paho-mqtt"))}
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
