"""Real network streams on the loopback: an HTTP MJPEG server that stops mid-stream and comes back."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

import edge_ad
from edge_ad.stream import EventsSink, Reconnect
from edge_ad.stream.mjpeg import MjpegServer

FAST = Reconnect(initial=0.1, factor=2.0, cap=0.4, timeout=2.0)


def _picture(k: int) -> np.ndarray:
    rng = np.random.default_rng(k % 50)
    return rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")


def _wait(predicate, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def test_server_restart_reconnects_and_reports_the_gap(detector, tmp_path) -> None:
    server = MjpegServer(_picture, fps=20).start()
    events_path = tmp_path / "events.jsonl"
    stream = detector.stream(server.url, sinks=[EventsSink(events_path, frames="all")], reconnect=FAST)
    items: list = []
    marks: dict[str, float] = {}

    def operator() -> None:
        _wait(lambda: len(items) >= 10)
        marks["down"] = time.time()
        server.stop()
        time.sleep(1.5)
        marks["up"] = time.time()
        server.start()                                          # the same port, like a rebooted camera
        _wait(lambda: sum(i.frame.timestamp > marks["up"] for i in items) >= 10)
        stream.stop()

    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    for item in stream:
        items.append(item)
    thread.join(5)
    s = stream.summary()["sources"][server.url]
    after = [i for i in items if i.frame.timestamp > marks["up"]]
    assert len(after) >= 10                                      # frames after the restart were processed
    assert s["reconnects"] == 1 and 1.0 <= s["gap_seconds"] <= 5.0          # the server was down 1.5 s
    assert s["gaps"][0]["seconds"] == pytest.approx(s["gap_seconds"]) and s["gaps"][0]["attempts"] >= 2
    indices = [i.frame.index for i in items]
    assert indices == sorted(set(indices))                       # never a frame twice, never out of order
    assert not [i for i in items if marks["down"] + 1.0 < i.frame.timestamp < marks["up"]]   # nothing made up
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    states = [e["state"] for e in events if e["event"] == "source"]
    assert states[:3] == ["connected", "reconnecting", "connected"] and states[-1] == "stopped"
    back = [e for e in events if e["event"] == "source" and "gap_s" in e]
    assert len(back) == 1 and back[0]["gap_s"] == pytest.approx(s["gap_seconds"], abs=1e-3)
    assert sum(e["event"] in ("frame", "anomaly") for e in events) == len(items)
    server.stop()


def test_retry_budget_spent_fails_the_source_and_ends_the_stream(detector, caplog) -> None:
    server = MjpegServer(_picture, fps=20).start()
    stream = detector.stream(server.url, reconnect=Reconnect(initial=0.1, factor=2.0, cap=0.3, budget=3, timeout=1.0))
    count = 0
    started = time.monotonic()
    for _ in stream:
        count += 1
        if count == 5:
            server.stop()                                         # and never comes back
    s = stream.summary()["sources"][server.url]
    assert s["state"] == "failed" and count >= 5
    assert "cannot connect (attempt 3); next try in 0.3 s" in caplog.text   # 0.1, 0.2, then the 0.3 cap
    assert "retry budget 3" in caplog.text
    assert time.monotonic() - started < 15


def test_back_off_doubles_up_to_the_cap() -> None:
    policy = Reconnect(initial=0.5, factor=2.0, cap=30.0)
    assert [policy.delay(k) for k in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    with pytest.raises(ValueError, match="cap >= initial"):
        Reconnect(initial=5, cap=1)


def test_broken_jpeg_parts_are_counted_not_a_reconnect(detector) -> None:
    """Every 10th part is not a JPEG: those frames are skipped and counted; the connection stays."""
    def pictures(k: int):
        return b"\xff\xd8" + bytes(200) + b"\xff\xd9" if k % 10 == 5 else _picture(k)

    server = MjpegServer(pictures, fps=30).start()
    stream = detector.stream(server.url, reconnect=FAST, max_frames=40)
    items = list(stream)
    server.stop()
    s = stream.summary()["sources"][server.url]
    assert len(items) == 40 and s["reconnects"] == 0 and s["corrupt"] >= 3


def test_dead_and_slow_sources_never_stall_the_others(detector, tmp_path) -> None:
    """A URL where nothing listens (retried for ever) and a source that gives a frame every 2 s run
    beside a video file: the file's frames all come through at full speed."""
    from edge_ad.data.synthetic import write_conveyor_video
    from edge_ad.stream import IterableSource

    video = tmp_path / "belt.mp4"
    write_conveyor_video(video, frames=40, seed=2)

    def slow():
        for k in range(3):
            time.sleep(2.0)
            yield _picture(k)

    dead = "rtsp://operator:hunter2@127.0.0.1:9/line"          # port 9 (discard): refused at once
    stream = detector.stream([dead, IterableSource(slow(), "slow"), str(video)], reconnect=FAST, duration=30)
    first_file_frame = {}
    start = time.monotonic()
    for item in stream:
        if item.frame.source == "belt.mp4":
            first_file_frame.setdefault("t", time.monotonic() - start)
            if item.frame.index == 39:
                file_done = time.monotonic() - start
                stream.stop()
    s = stream.summary()["sources"]
    assert s["belt.mp4"]["frames"] == 40 and file_done < 8.0
    assert s["rtsp://***@127.0.0.1:9/line"]["state"] in ("reconnecting", "stopped")
    assert s["rtsp://***@127.0.0.1:9/line"]["frames"] == 0
    assert "hunter2" not in json.dumps(stream.summary())
