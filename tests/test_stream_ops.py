"""Operations: the events file survives a kill, graceful SIGINT/SIGTERM, snapshots within a disk budget,
the Prometheus endpoint, structured logs, and credentials that never leave the process."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

import edge_ad
from edge_ad.data.synthetic import write_conveyor_video
from edge_ad.logs import JsonFormatter, RedactFilter, redact
from edge_ad.stream import EventsSink, IterableSource, SnapshotSink
from edge_ad.stream.mjpeg import MjpegServer


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "belt.mp4"
    write_conveyor_video(path, frames=150, seed=4)
    return path


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "edge_ad.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_lines(path, n: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not (path.exists() and len(path.read_text().splitlines()) >= n):
        if proc.poll() is not None or time.monotonic() > end:
            raise AssertionError(f"no {n} events: exit {proc.poll()}, stderr {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_stream_drains_and_leaves_a_complete_events_file(tiny_bundle, video, tmp_path, sig) -> None:
    events = tmp_path / "events.jsonl"
    proc = _cli("--log-format", "json", "stream", str(tiny_bundle), "--source", str(video), "--source", str(video),
                "--realtime", "--events", str(events), "--events-frames", "all")
    _wait_for_lines(events, 20, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    text = events.read_text()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]             # every line parses
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "summary"
    frames = [e for e in lines if e["event"] in ("frame", "anomaly")]
    summary = lines[-1]
    assert len(frames) == summary["frames"] and 10 <= summary["frames"] < 300   # stopped early, nothing lost
    for name, per in summary["sources"].items():
        mine = [e["frame"] for e in frames if e["source"] == name]
        assert mine == list(range(len(mine))) and per["state"] == "stopped"  # every frame read was processed
        assert per["read"] == per["frames"]
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(signal.Signals(sig).name in entry["message"] for entry in logs)
    assert f'"frames": {summary["frames"]}' in out


def test_kill_9_loses_no_written_line(tiny_bundle, video, tmp_path) -> None:
    """Even SIGKILL (no handler runs) leaves only whole lines: each is one write as it happens."""
    events = tmp_path / "events.jsonl"
    proc = _cli("stream", str(tiny_bundle), "--source", str(video), "--realtime", "--events", str(events),
                "--events-frames", "all")
    _wait_for_lines(events, 15, proc)
    proc.kill()
    proc.communicate(timeout=30)
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    frames = [e["frame"] for e in lines if e["event"] in ("frame", "anomaly")]
    assert len(lines) >= 15 and lines[0]["event"] == "start" and frames == list(range(len(frames)))


def test_events_are_written_as_they_happen(detector, video, tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    stream = detector.stream(str(video), sinks=[EventsSink(path, frames="all")], max_frames=10)
    for item in stream:
        on_disk = path.read_text().splitlines()
        assert json.loads(on_disk[-1])["frame"] == item.frame.index         # before the next frame is read
    assert json.loads(path.read_text().splitlines()[-1])["event"] == "summary"


def test_snapshots_stay_within_the_disk_budget(tiny_bundle, tmp_path) -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(30)]
    detector = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    detector.threshold = float(np.median(detector.scores(frames[::2], color="BGR")))   # about half are flagged
    snaps = SnapshotSink(tmp_path / "snaps", budget_mb=0.25)
    events = tmp_path / "events.jsonl"
    stream = detector.stream(IterableSource(frames, "cam"), sinks=[snaps, EventsSink(events)])
    flagged = sum(item.result.is_anomalous for item in stream)
    assert flagged >= 10
    files = sorted((tmp_path / "snaps" / "cam").glob("*.jpg"))
    total = sum(f.stat().st_size for f in files)
    assert total <= 250_000 and snaps.deleted > 0 and snaps.written == flagged
    originals = [f for f in files if not f.name.endswith("_heatmap.jpg")]
    assert originals and all(f.with_name(f.stem + "_heatmap.jpg").exists() for f in originals[1:])
    assert not list((tmp_path / "snaps").rglob("*.partial"))
    named = [json.loads(line).get("snapshot") for line in events.read_text().splitlines()]
    assert str(originals[-1]) in named                                       # the events file points at it


def test_prometheus_endpoint_reports_per_source_figures(detector, video) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from edge_ad.stream.prometheus import MetricsServer

    stream = detector.stream([str(video), IterableSource([np.zeros((0, 0), np.uint8)] * 2 + [np.zeros((64, 64, 3), np.uint8)], "sdk")],
                             realtime=True)
    server = MetricsServer(stream, 0)
    scraped: dict = {}

    def scrape() -> None:
        time.sleep(2.0)
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
        scraped.update({(s.name, s.labels.get("source"), s.labels.get("state"), s.labels.get("le")): s.value
                        for family in text_string_to_metric_families(text) for s in family.samples})
        stream.stop()

    threading.Thread(target=scrape, daemon=True).start()
    list(stream)
    server.close()
    summary = stream.summary()["sources"]
    assert scraped[("edge_ad_fps", "belt.mp4", None, None)] > 5
    processed = scraped[("edge_ad_frames_processed_total", "belt.mp4", None, None)]
    assert 10 <= processed <= summary["belt.mp4"]["frames"]
    assert scraped[("edge_ad_frames_corrupt_total", "sdk", None, None)] == 2
    assert scraped[("edge_ad_source_state", "belt.mp4", "connected", None)] == 1
    assert scraped[("edge_ad_latency_seconds_count", "belt.mp4", None, None)] == processed
    assert scraped[("edge_ad_latency_seconds_bucket", "belt.mp4", None, "+Inf")] == processed
    assert ("edge_ad_anomalies_total", "belt.mp4", None, None) in scraped


def test_credentials_never_reach_logs_events_or_output(tiny_bundle, tmp_path) -> None:
    """An RTSP-style user:password in the URL and a password query parameter, through a connection,
    a lost server, failed reconnects and the end of the retry budget."""
    server = MjpegServer(lambda k: np.full((90, 120, 3), k % 200, np.uint8), fps=20).start()
    url = server.url.replace("http://", "http://inspector:S3cr3t-pw@") + "?password=Zz9-hidden"
    events = tmp_path / "events.jsonl"
    proc = _cli("--log-format", "json", "--log-level", "DEBUG", "stream", str(tiny_bundle), "--source", url,
                "--events", str(events), "--events-frames", "all", "--retry-initial", "0.1", "--retry-max", "0.2",
                "--retry-budget", "2")
    _wait_for_lines(events, 10, proc)
    server.stop()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3                   # the only source failed: its retry budget ran out
    everything = out + err + events.read_text()
    assert "S3cr3t-pw" not in everything and "Zz9-hidden" not in everything and "inspector" not in everything
    assert "http://***@127.0.0.1" in everything and "password=***" in everything
    assert '"state": "failed"' in events.read_text()


def test_redaction_and_json_logs() -> None:
    assert redact("rtsp://admin:pa55@10.0.0.7:554/h264") == "rtsp://***@10.0.0.7:554/h264"
    assert redact("rtspsrc location=rtsp://u:p@cam/s ! appsink") == "rtspsrc location=rtsp://***@cam/s ! appsink"
    assert redact("http://cam/snap.cgi?user=a&pwd=x1&channel=2") == "http://cam/snap.cgi?user=a&pwd=***&channel=2"
    assert redact("/data/line1.mp4") == "/data/line1.mp4"
    record = logging.LogRecord("edge_ad.x", logging.WARNING, "f.py", 1, "lost %s", ("rtsp://a:b@h/s",), None)
    record.source = "rtsp://a:b@h/s"
    assert RedactFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "lost rtsp://***@h/s" and entry["source"] == "rtsp://***@h/s"
    assert entry["level"] == "WARNING" and entry["time"].endswith("Z")


def test_a_stream_whose_start_fails_still_closes_its_sinks(detector) -> None:
    """A source that cannot start: the error reaches the caller, and every sink (an MQTT or webhook
    sink's worker thread among them) is closed, not left running."""
    class Broken(IterableSource):
        def start(self):
            raise RuntimeError("camera SDK refused to start")

    class Recorder:
        closed = False

        def write(self, item) -> None:
            pass

        def close(self) -> None:
            Recorder.closed = True

    stream = detector.stream(Broken(iter([]), "cam"), sinks=[Recorder()])
    with pytest.raises(RuntimeError, match="refused to start"):
        list(stream)
    assert Recorder.closed
