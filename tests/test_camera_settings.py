"""Camera settings (--camera width=...,fps=...,exposure=...): asked after opening, read back, and what the
camera refuses is logged and reported with its `connected` event; the stream goes on with what it gives.

A video file and an RTSP stream refuse resolution, frame rate and exposure for real (OpenCV's FFmpeg
backend cannot set them), so the "refused, it gives X" path is exercised on real captures here.
"""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
from servers import unavailable
from servers.rtsp import RtspCamera, gst_python, h264_video

import edge_ad
from edge_ad.cli import main
from edge_ad.stream import EventsSink, Reconnect
from edge_ad.stream.camera_settings import CameraSettings, apply_settings, log_settings, per_source_settings
from edge_ad.stream.sources import open_source


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 320x240 MJPEG-in-AVI file at 15 FPS, 20 frames."""
    path = tmp_path_factory.mktemp("video") / "belt.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (320, 240))
    rng = np.random.default_rng(0)
    for _ in range(20):
        writer.write(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    writer.release()
    return path


def test_settings_parse_from_key_value_text() -> None:
    s = CameraSettings.parse("width=1920, height=1080,fps=29.97,exposure=-6,bit_depth=12,decode=auto,codec=H265")
    assert (s.width, s.height, s.fps, s.exposure, s.bit_depth, s.decode, s.codec) == \
        (1920, 1080, 29.97, -6.0, 12, "auto", "h265")
    assert CameraSettings.parse("exposure=AUTO").exposure == "auto"
    assert CameraSettings.parse("-").empty and CameraSettings.parse("").empty
    assert CameraSettings.parse(s.text()) == s


@pytest.mark.parametrize("text, message", [
    ("width=abc", "is not a number"), ("widht=1920", "unknown camera setting 'widht'"), ("fps=0", "above 0"),
    ("exposure=fast", "is not a number"), ("decode=gpu", "software, auto, hardware"), ("width", "KEY=VALUE"),
    ("width=1,width=2", "given twice"), ("bit_depth=20", "from 8 to 16"), ("height=0", "from 1 to 65535"),
])
def test_a_bad_setting_says_what_to_give(text, message) -> None:
    with pytest.raises(ValueError, match=message):
        CameraSettings.parse(text)


def test_one_camera_value_per_source_or_one_for_all() -> None:
    one = per_source_settings(["fps=30"], 2, bit_depth=12)
    assert [s.fps for s in one] == [30.0, 30.0] and [s.bit_depth for s in one] == [12, 12]
    each = per_source_settings(["width=640", "-"], 2, decode="auto")
    assert each[0].width == 640 and each[0].decode == "auto" and each[1].decode == "auto" and each[1].width is None
    assert per_source_settings(None, 3) == [None, None, None]               # nothing set: opened as before
    assert per_source_settings(["bit_depth=10"], 1, bit_depth=12)[0].bit_depth == 10   # its own wins
    with pytest.raises(ValueError, match="given 2 times for 3"):
        per_source_settings(["fps=1", "fps=2"], 3)


def test_a_video_file_refuses_resolution_rate_and_exposure_and_says_what_it_gives(detector, video, tmp_path,
                                                                                   caplog) -> None:
    caplog.set_level(logging.INFO)
    settings = CameraSettings(width=1920, height=1080, fps=30.0, exposure=-6.0)
    events = tmp_path / "events.jsonl"
    stream = detector.stream(open_source(str(video), settings=settings), sinks=[EventsSink(events)])
    assert len(list(stream)) == 20                                         # the stream goes on with what it gets
    connected = next(e for e in map(json.loads, events.read_text().splitlines()) if e.get("state") == "connected")
    report = connected["settings"]
    assert report["asked"] == {"width": 1920, "height": 1080, "fps": 30.0, "exposure": -6.0}
    assert report["got"]["width"] == 320 and report["got"]["height"] == 240 and report["got"]["fps"] == 15.0
    assert report["refused"] == ["width", "height", "fps", "exposure"] and report["backend"] == "FFMPEG"
    refused = [r.getMessage() for r in caplog.records if " refused " in r.getMessage()]
    assert any("refused width=1920: it gives 320" in m for m in refused) and len(refused) == 4


def test_a_looped_file_reports_its_settings_once(detector, video, caplog) -> None:
    caplog.set_level(logging.WARNING)
    stream = detector.stream(open_source(str(video), loop=True, settings=CameraSettings(width=1920)), max_frames=50)
    assert len(list(stream)) == 50                                          # two and a half passes
    assert len([r for r in caplog.records if "refused width=1920" in r.getMessage()]) == 1


def test_what_the_capture_already_gives_is_reported_as_asked(video, caplog) -> None:
    caplog.set_level(logging.INFO)
    cap = cv2.VideoCapture(str(video))
    try:
        report = apply_settings(cap, CameraSettings(width=320, fps=15.0, exposure="auto"))
    finally:
        cap.release()
    assert report["refused"] == ["exposure"] and report["got"]["width"] == 320 and report["backend"] == "FFMPEG"
    log_settings(report, "belt")
    assert any("settings as asked: width=320, fps=15" in r.getMessage() for r in caplog.records)
    assert any("belt refused exposure=auto" in r.getMessage() for r in caplog.records)
    assert apply_settings(cv2.VideoCapture(), CameraSettings(bit_depth=12)) == {}   # nothing to ask


def test_settings_that_an_image_folder_cannot_take_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="width can be asked of a camera"):
        open_source(str(tmp_path), settings=CameraSettings(width=640))
    assert open_source(str(tmp_path), settings=CameraSettings(bit_depth=12)).bit_depth == 12
    with pytest.raises(ValueError, match="goes with rtsp:// URLs only"):
        open_source(str(tmp_path), transport="tcp")


def test_the_stream_command_takes_camera_settings(tiny_bundle, video, tmp_path, capsys) -> None:
    events = tmp_path / "events.jsonl"
    code = main(["stream", str(tiny_bundle), "--backend", "onnxruntime-cpu", "--source", str(video), "--source",
                 str(video), "--camera", "width=1280,fps=60", "--camera", "-", "--events", str(events)])
    assert code == 0
    connected = [e for e in map(json.loads, events.read_text().splitlines()) if e.get("state") == "connected"]
    assert sorted("settings" in e for e in connected) == [False, True]
    assert main(["stream", str(tiny_bundle), "--source", str(video), "--camera", "fps=fast"]) == 2
    assert "fps='fast' is not a number" in capsys.readouterr().err


@pytest.fixture(scope="module")
def rtsp_camera(tmp_path_factory):
    python, why = gst_python()
    if python is None:
        unavailable(why)
    path, why = h264_video(tmp_path_factory.mktemp("rtsp") / "cam.mp4", seconds=30)
    if path is None:
        unavailable(why)
    with RtspCamera(python, path) as camera:
        yield camera


def test_an_rtsp_camera_reports_the_resolution_it_really_sends(detector, rtsp_camera, caplog) -> None:
    """An IP camera's resolution is set in its own configuration: asking checks what arrives."""
    caplog.set_level(logging.WARNING)
    source = open_source(rtsp_camera.url, settings=CameraSettings(width=1920, height=1080),
                         reconnect=Reconnect(initial=0.1, cap=0.4, timeout=2.0))
    stream = detector.stream(source, max_frames=5)
    assert len(list(stream)) == 5
    assert source.settings_report["got"] == {"width": 160, "height": 120}
    assert source.settings_report["refused"] == ["width", "height"]
    assert any("refused width=1920: it gives 160" in r.getMessage() for r in caplog.records)
