"""The README's stream promises that had no test: the 5 s read time-out of a silent camera, three
failed reads as a lost connection, --loop, --duration, --fsync, --metrics-host, and the Prometheus
reconnect, disconnected-seconds and inference-error series with credentials kept out of their labels."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

import edge_ad
from edge_ad.cli import main
from edge_ad.data.synthetic import write_conveyor_video
from edge_ad.stream import EventsSink, IterableSource, Reconnect
from edge_ad.stream.mjpeg import MjpegServer
from edge_ad.stream.prometheus import MetricsServer

FAST = Reconnect(initial=0.1, factor=2.0, cap=0.4, timeout=2.0)


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("claims") / "belt.mp4"
    write_conveyor_video(path, frames=12, seed=5)
    return path


def _silent_camera() -> tuple[socket.socket, threading.Event, str]:
    """An MJPEG 'camera' that sends five frames, then keeps the connection open and says nothing."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    stop = threading.Event()
    _, jpeg = cv2.imencode(".jpg", np.full((120, 160, 3), 90, np.uint8))

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=f\r\n\r\n")
            for _ in range(5):
                conn.sendall(b"--f\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                             + jpeg.tobytes() + b"\r\n")
            threading.Thread(target=lambda c=conn: (stop.wait(60), c.close()), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return sock, stop, f"http://127.0.0.1:{sock.getsockname()[1]}/silent.mjpg"


def test_a_silent_camera_is_lost_after_the_5_s_read_timeout(detector) -> None:
    sock, stop, url = _silent_camera()
    stream = detector.stream(url, reconnect=Reconnect(initial=0.5, cap=1.0))      # the default 5 s time-out
    first: list[float] = []
    deadline = time.monotonic() + 30
    for item in stream:
        if len(first) < 5:
            first.append(item.frame.timestamp)
        if stream.summary()["sources"][url]["reconnects"] >= 1 or time.monotonic() > deadline:
            stream.stop()
    stop.set()
    sock.close()
    gaps = stream.summary()["sources"][url]["gaps"]
    assert first and gaps, "the silent connection was never given up"
    silent_for = gaps[0]["from"] - max(t for t in first if t <= gaps[0]["from"])
    assert 4.5 <= silent_for <= 12.0            # not at once, not never: the read time-out fired


def _broken_runs(run: int):
    """Frames of a camera whose parts 30.. (run of them) are not JPEG, every 40 parts."""
    def frame(k: int):
        if 30 <= k % 40 < 30 + run:
            return b"not a jpeg at all"
        return np.random.default_rng(k % 7).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    return frame


@pytest.mark.parametrize("run, lost", [(2, False), (3, True)])
def test_three_failed_reads_in_a_row_are_a_lost_connection(detector, run, lost) -> None:
    server = MjpegServer(_broken_runs(run), fps=40).start()
    stream = detector.stream(server.url, reconnect=FAST)
    threading.Thread(target=lambda: (time.sleep(2.5), stream.stop()), daemon=True).start()
    list(stream)
    server.stop()
    s = stream.summary()["sources"][server.url]
    if lost:
        assert s["reconnects"] >= 1
    else:
        assert s["reconnects"] == 0 and s["corrupt"] >= run


def test_loop_replays_a_file_and_max_frames_stops_it(video, tiny_bundle, tmp_path) -> None:
    events = tmp_path / "events.jsonl"
    assert main(["stream", str(tiny_bundle), "--source", str(video), "--loop", "--max-frames", "30",
                 "--events", str(events), "--events-frames", "all", "--backend", "onnxruntime-cpu"]) == 0
    frames = [json.loads(line) for line in events.read_text().splitlines()]
    frames = [e for e in frames if e["event"] in ("frame", "anomaly")]
    assert len(frames) == 30                    # a 12-frame file, replayed: more frames than it holds


def test_duration_stops_a_looping_stream_in_time(video, tiny_bundle) -> None:
    start = time.monotonic()
    assert main(["stream", str(tiny_bundle), "--source", str(video), "--loop", "--realtime", "--duration", "1.5",
                 "--backend", "onnxruntime-cpu"]) == 0
    assert 1.4 <= time.monotonic() - start <= 15.0


def test_fsync_syncs_every_events_line(detector, video, tmp_path, monkeypatch) -> None:
    """os.fsync is wrapped to count its calls (it still syncs): one per line with fsync=True, none without."""
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    for fsync in (False, True):
        calls.clear()
        path = tmp_path / f"events-{fsync}.jsonl"
        sink = EventsSink(path, frames="all", fsync=fsync)
        list(detector.stream(str(video), sinks=[sink]))
        lines = len(path.read_text().splitlines())
        assert lines > 12 and (len(calls) >= lines if fsync else len(calls) == 0)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_metrics_bind_to_the_loopback_unless_a_host_is_given(detector) -> None:
    stream = detector.stream(IterableSource([np.zeros((64, 64, 3), np.uint8)], "one"))
    default = MetricsServer(stream, 0)
    other = MetricsServer(stream, 0, host="127.0.0.2")
    try:
        assert _reachable("127.0.0.1", default.port) and not _reachable("127.0.0.2", default.port)
        assert _reachable("127.0.0.2", other.port) and not _reachable("127.0.0.1", other.port)
    finally:
        default.close()
        other.close()
        list(stream)


def test_prometheus_counts_reconnects_gaps_and_inference_errors_without_secrets(detector) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    server = MjpegServer(lambda k: np.full((120, 160, 3), k % 200, np.uint8), fps=20).start()
    url = server.url.replace("http://", "http://inspector:Pw-9x@") + "?access_token=Tk-77&api_key=Ak-5"
    nan_frames = IterableSource([np.full((64, 64, 3), 100, np.uint8)] * 3, "nan-cam")
    stream = detector.stream([url, nan_frames], reconnect=FAST)
    real = detector.backend.infer
    metrics = MetricsServer(stream, 0)
    scraped: dict = {}
    page: list[str] = []

    def operator() -> None:
        time.sleep(1.0)
        server.stop()
        time.sleep(1.0)
        server.start()
        time.sleep(1.5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=5).read().decode()
        page.append(text)
        scraped.update({(s.name, s.labels.get("source")): s.value
                        for family in text_string_to_metric_families(text) for s in family.samples})
        stream.stop()

    # a backend double that returns NaN for the uniform 100-grey frames of "nan-cam" (the real model never does)
    def infer(batch):
        raw = real(batch)
        raw[(batch == 100).all(axis=(1, 2, 3))] = np.nan
        return raw

    detector.backend.infer = infer
    try:
        threading.Thread(target=operator, daemon=True).start()
        list(stream)
    finally:
        detector.backend.infer = real
        metrics.close()
        server.stop()
    text = page[0]
    assert "Pw-9x" not in text and "Tk-77" not in text and "Ak-5" not in text and "inspector" not in text
    cam = next(name for (metric, name) in scraped if metric == "edge_ad_reconnects_total" and name and "127.0.0.1" in name)
    assert scraped[("edge_ad_reconnects_total", cam)] >= 1
    assert scraped[("edge_ad_disconnected_seconds_total", cam)] >= 0.5
    assert scraped[("edge_ad_inference_errors_total", "nan-cam")] == 3


def test_show_says_why_no_window_opens(tiny_bundle, tmp_path, capsys, monkeypatch) -> None:
    """--show without a display, or with the headless OpenCV, streams anyway and says why (no window)."""
    from edge_ad.stream.sinks import WindowSink, opencv_gui

    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((40, 40, 3), 100, np.uint8))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["stream", str(tiny_bundle), "--source", str(folder), "--show", "--backend", "onnxruntime-cpu"]) == 0
    assert "--show: no window: no display" in capsys.readouterr().err
    monkeypatch.setenv("DISPLAY", ":0")
    if opencv_gui() == "NONE":
        assert "no GUI" in WindowSink.unavailable() and not WindowSink.available()
    else:
        assert WindowSink.unavailable() is None
