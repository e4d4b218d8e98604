"""A real RTSP camera on the loopback: GStreamer's RTSP server sending H.264 from a file, read by the stream
through OpenCV's FFmpeg. It connects, survives the camera going away and coming back, a camera that hangs
with its connection open is caught by the read time-out, and TCP or UDP is chosen per source.

Needs ffmpeg (libx264) and GStreamer's RTSP server with its Python bindings (.ci/run installs them);
where they are missing the tests skip with the reason, except in CI, where they fail.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
from servers import unavailable
from servers.rtsp import RtspCamera, StallingProxy, gst_python, h264_video

import edge_ad
from edge_ad.stream import EventsSink, NetworkSource, Reconnect
from edge_ad.stream.capture import FFMPEG_OPTIONS_ENV, rtsp_transport

FAST = Reconnect(initial=0.1, factor=2.0, cap=0.4, timeout=2.0)


@pytest.fixture(scope="module")
def gst() -> str:
    python, why = gst_python()
    if python is None:
        unavailable(why)
    return python


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> object:
    path, why = h264_video(tmp_path_factory.mktemp("rtsp") / "cam.mp4")
    if path is None:
        unavailable(why)
    return path


@pytest.fixture
def camera(gst, video):
    with RtspCamera(gst, video) as cam:
        yield cam


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")


def _wait(predicate, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def _run_with(stream, operator) -> list:
    """Iterate `stream` while `operator(items)` runs beside it (it stops the stream); the items."""
    items: list = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            operator(items)
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(err)
        finally:
            stream.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for item in stream:
        items.append(item)
    thread.join(10)
    if errors:
        raise errors[0]
    return items


def test_the_stream_reads_h264_frames_from_the_camera(detector, camera) -> None:
    stream = detector.stream(camera.url, max_frames=20, reconnect=FAST)
    items = list(stream)
    s = stream.summary()["sources"][camera.url]
    assert len(items) == 20 and s["frames"] == 20 and s["corrupt"] == 0
    image = items[-1].frame.image
    assert image.shape == (120, 160, 3) and image.dtype == np.uint8
    assert float(image.std()) > 30                     # the test pattern's colour bars, not a grey frame
    indices = [i.frame.index for i in items]
    assert indices == sorted(set(indices))


def test_the_camera_going_away_and_coming_back_is_a_counted_gap(detector, camera, tmp_path) -> None:
    events_path = tmp_path / "events.jsonl"
    stream = detector.stream(camera.url, sinks=[EventsSink(events_path, frames="all")], reconnect=FAST)
    marks: dict[str, float] = {}

    def operator(items: list) -> None:
        _wait(lambda: len(items) >= 10)
        marks["down"] = time.time()
        camera.stop()                                          # power lost: the connection drops
        time.sleep(1.5)
        marks["up"] = time.time()
        camera.start()                                         # the same port, like a rebooted camera
        _wait(lambda: sum(i.frame.timestamp > marks["up"] for i in items) >= 10)

    items = _run_with(stream, operator)
    s = stream.summary()["sources"][camera.url]
    assert s["reconnects"] == 1 and 1.0 <= s["gap_seconds"] <= 15.0
    assert s["gaps"][0]["seconds"] == pytest.approx(s["gap_seconds"]) and s["gaps"][0]["attempts"] >= 2
    assert not [i for i in items if marks["down"] + 1.0 < i.frame.timestamp < marks["up"]]   # nothing made up
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    states = [e["state"] for e in events if e["event"] == "source"]
    assert states[:3] == ["connected", "reconnecting", "connected"] and states[-1] == "stopped"
    back = [e for e in events if e["event"] == "source" and "gap_s" in e]
    assert len(back) == 1 and back[0]["gap_s"] == pytest.approx(s["gap_seconds"], abs=1e-3)


def test_a_camera_that_hangs_with_its_connection_open_is_caught_by_the_read_timeout(detector, camera) -> None:
    proxy = StallingProxy(camera.port)
    url = proxy.url() + "?rtsp_transport=tcp"             # all of RTSP over the one proxied connection
    stream = detector.stream(url, reconnect=Reconnect(initial=0.1, cap=0.4, timeout=1.0))
    source = stream.source
    marks: dict[str, float] = {}

    def operator(items: list) -> None:
        _wait(lambda: len(items) >= 10)
        assert proxy.stall() == 1                             # the camera hangs; its connection stays open
        marks["stalled"] = time.monotonic()
        _wait(lambda: source.stats.state == "reconnecting", timeout=10)
        marks["noticed"] = time.monotonic()
        _wait(lambda: source.stats.reconnects == 1)           # a new connection through the proxy
        count = len(items)
        _wait(lambda: len(items) >= count + 5)

    try:
        _run_with(stream, operator)
    finally:
        proxy.close()
    assert 0.9 <= marks["noticed"] - marks["stalled"] <= 3.0  # the 1 s read time-out, not the TCP keep-alive
    assert any("stalled with its connection open" in e for e in source.stats.errors)
    assert stream.summary()["sources"][source.name]["reconnects"] == 1


@pytest.fixture(scope="module")
def one_way_cameras(gst, video):
    """Two cameras: one that accepts RTP over TCP only, one over UDP only."""
    with RtspCamera(gst, video, protocols="tcp") as tcp, RtspCamera(gst, video, protocols="udp") as udp:
        yield tcp, udp


def test_the_transport_is_chosen_per_source(detector, one_way_cameras, monkeypatch) -> None:
    """In one stream, each source opens with its own transport: the one that asks for what its camera
    accepts streams; the one that asks for what its camera refuses never connects (so the option is
    really used), and neither leaks into the other."""
    monkeypatch.delenv(FFMPEG_OPTIONS_ENV, raising=False)
    tcp, udp = one_way_cameras
    fits = [f"{tcp.url}?rtsp_transport=tcp", NetworkSource(udp.url, transport="udp", reconnect=FAST)]
    stream = detector.stream(fits, reconnect=FAST)
    _run_with(stream, lambda items: _wait(lambda: {i.frame.source for i in items} >= {s.name for s in stream.sources}
                                          and len(items) >= 20))
    per = stream.summary()["sources"]
    assert all(p["frames"] > 0 and p["reconnects"] == 0 for p in per.values()), per

    refused = Reconnect(initial=0.1, cap=0.1, budget=1, timeout=2.0)
    wrong = [NetworkSource(f"{tcp.url}?rtsp_transport=udp", reconnect=refused),
             NetworkSource(udp.url, transport="tcp", reconnect=refused),
             NetworkSource(udp.url, transport="udp", reconnect=refused)]
    stream = detector.stream(wrong, duration=20)
    _run_with(stream, lambda items: _wait(lambda: wrong[2].stats.processed >= 5 and all(
        s.stats.state == "failed" for s in wrong[:2])))
    assert [s.stats.processed > 0 for s in wrong] == [False, False, True]
    assert all("cannot connect" in s.stats.failure for s in wrong[:2])
    assert FFMPEG_OPTIONS_ENV not in os.environ                # restored once no capture is opening


@pytest.mark.parametrize("url, transport, opened, want", [
    ("rtsp://cam/s?rtsp_transport=udp", None, "rtsp://cam/s", "udp"),
    ("rtsp://cam/s?rtsp_transport=TCP&channel=1", None, "rtsp://cam/s?channel=1", "tcp"),
    ("rtsp://cam/s?channel=1&rtsp_transport=tcp&subtype=0", None, "rtsp://cam/s?channel=1&subtype=0", "tcp"),
    ("rtsp://cam/s", "udp", "rtsp://cam/s", "udp"),
    ("rtsp://cam/s?channel=1", None, "rtsp://cam/s?channel=1", None),
    ("http://cam/video.mjpg", None, "http://cam/video.mjpg", None),
])
def test_the_transport_comes_out_of_the_url(url, transport, opened, want) -> None:
    assert rtsp_transport(url, transport) == (opened, want)


@pytest.mark.parametrize("url, transport, message", [
    ("rtsp://cam/s?rtsp_transport=quic", None, "must be one of tcp, udp"),
    ("rtsp://cam/s?rtsp_transport=udp", "tcp", "must be one of tcp, udp (once)"),
    ("http://cam/v.mjpg?rtsp_transport=tcp", None, "applies to rtsp:// URLs only"),
    ("rtsp://cam/s", "http", "must be one of tcp, udp"),
])
def test_a_bad_transport_is_refused_with_what_to_give(url, transport, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NetworkSource(url, transport=transport)
