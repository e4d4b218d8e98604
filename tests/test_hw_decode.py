"""Choosing the decoder of H.264/H.265 streams: software by default; NVDEC through GStreamer on a Jetson,
OpenCV's FFmpeg hardware decoding on an NVIDIA GPU; a clear error when hardware decoding is required
and absent, a logged fallback when it is only wanted (decode=auto).

The hardware paths cannot run here (no Jetson, no NVIDIA GPU, pip's OpenCV without GStreamer): their
selection is tested with the box's facts given, and the check after opening runs on a real capture.
"""

from __future__ import annotations

import logging
import re

import cv2
import numpy as np
import pytest

import edge_ad
from edge_ad.cli import main
from edge_ad.stream.camera_settings import CameraSettings
from edge_ad.stream.capture import NetworkSource, VideoFileSource
from edge_ad.stream.hw_decode import (FFMPEG_HW, JETSON, SOFTWARE, DecodeFacts, HardwareDecodeUnavailable,
                                      choose_decoder, jetson_pipeline)

URL = "rtsp://user:secret@10.0.0.5/stream1"
JETSON_BOX = DecodeFacts(jetson=True, opencv_gstreamer=True, nvv4l2decoder=True)
GPU_BOX = DecodeFacts(nvidia_gpu=True)
PLAIN_BOX = DecodeFacts()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "belt.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (160, 120))
    for k in range(10):
        writer.write(np.full((120, 160, 3), 20 * k, np.uint8))
    writer.release()
    return path


@pytest.mark.parametrize("facts", [JETSON_BOX, GPU_BOX, PLAIN_BOX])
def test_software_is_the_default_everywhere(facts) -> None:
    for mode in (None, "software"):
        plan = choose_decoder(URL, mode, kind="rtsp", facts=facts)
        assert plan.kind == SOFTWARE and plan.target == URL and plan.params == () and not plan.options


def test_a_jetson_decodes_rtsp_on_nvdec_through_gstreamer() -> None:
    plan = choose_decoder(URL, "auto", kind="rtsp", transport="tcp", facts=JETSON_BOX)
    assert plan.kind == JETSON and plan.api == cv2.CAP_GSTREAMER and not plan.required
    assert plan.target.startswith(f'rtspsrc location="{URL}"') and " protocols=tcp" in plan.target
    assert "rtph264depay ! h264parse ! nvv4l2decoder ! nvvidconv" in plan.target
    assert plan.target.endswith("appsink drop=true max-buffers=1 sync=false")
    h265 = choose_decoder(URL, "hardware", kind="rtsp", codec="h265", facts=JETSON_BOX)
    assert "rtph265depay ! h265parse ! nvv4l2decoder" in h265.target and h265.required


@pytest.mark.parametrize("facts, why", [
    (DecodeFacts(jetson=True, nvv4l2decoder=True), "pip's opencv-python(-headless) wheels"),
    (DecodeFacts(jetson=True, opencv_gstreamer=True), "nvv4l2decoder element is missing"),
    (PLAIN_BOX, "no NVIDIA decoder"),
])
def test_hardware_that_is_absent_is_an_error_saying_why_and_auto_falls_back(facts, why) -> None:
    with pytest.raises(HardwareDecodeUnavailable, match=why.replace("(", r"\(").replace(")", r"\)")):
        choose_decoder(URL, "hardware", kind="rtsp", facts=facts)
    plan = choose_decoder(URL, "auto", kind="rtsp", facts=facts)
    assert plan.kind == SOFTWARE and why in plan.note and plan.note.startswith("decoding in software")


def test_an_nvidia_gpu_asks_opencvs_ffmpeg_for_the_cuda_decoder() -> None:
    plan = choose_decoder(URL, "hardware", kind="rtsp", facts=GPU_BOX)
    assert plan.kind == FFMPEG_HW and plan.api == cv2.CAP_FFMPEG and plan.required
    assert plan.params == (cv2.CAP_PROP_HW_ACCELERATION, cv2.VIDEO_ACCELERATION_ANY)
    assert plan.options == {"hw_decoders_any": "cuda"}
    assert choose_decoder("belt.mp4", "auto", kind="file", facts=GPU_BOX).kind == FFMPEG_HW


@pytest.mark.parametrize("kind, why", [("camera", "V4L2"), ("pipeline", "chooses its own decoder")])
def test_sources_without_a_stream_to_decode_cannot_ask_for_hardware(kind, why) -> None:
    for facts in (JETSON_BOX, GPU_BOX):
        with pytest.raises(HardwareDecodeUnavailable, match=why):
            choose_decoder("0", "hardware", kind=kind, facts=facts)
    assert choose_decoder("0", "auto", kind=kind, facts=GPU_BOX).kind == SOFTWARE


def test_a_jetson_file_source_stays_in_software_unless_required() -> None:
    assert choose_decoder("belt.mp4", "auto", kind="file", facts=JETSON_BOX).kind == SOFTWARE
    with pytest.raises(HardwareDecodeUnavailable, match="built for rtsp:// streams"):
        choose_decoder("belt.mp4", "hardware", kind="file", facts=JETSON_BOX)


def test_a_quote_in_the_url_cannot_end_the_pipelines_location() -> None:
    assert 'location="rtsp://cam/a%22 ! filesrc"' in jetson_pipeline('rtsp://cam/a" ! filesrc')
    with pytest.raises(ValueError, match="h264 or h265"):
        jetson_pipeline(URL, codec="vp9")


def test_this_machine_is_probed_as_it_is() -> None:
    facts = DecodeFacts.probe()
    built = re.search(r"^\s*GStreamer:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    assert facts.opencv_gstreamer == (built is not None and built.group(1) == "YES")
    plan = choose_decoder(URL, "auto", kind="rtsp")
    if not (facts.jetson or facts.nvidia_gpu):                       # this CPU box, and CI
        assert plan.kind == SOFTWARE and "no NVIDIA decoder" in plan.note
        with pytest.raises(HardwareDecodeUnavailable):
            NetworkSource(URL, settings=CameraSettings(decode="hardware"))     # at construction, not streaming


def test_ffmpeg_that_falls_back_to_software_fails_a_required_hardware_decode(tiny_bundle, video, caplog) -> None:
    """A real capture asked for hardware decoding on a box without it: OpenCV opens it in software and
    says so (CAP_PROP_HW_ACCELERATION reads back none), which decode=hardware refuses, decode=auto logs."""
    detector = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    required = VideoFileSource(video)
    required.decoder = choose_decoder(str(video), "hardware", kind="file", facts=GPU_BOX)
    if DecodeFacts.probe().nvidia_gpu:
        pytest.skip("this box has an NVIDIA GPU: OpenCV's FFmpeg may really decode on it")
    with pytest.raises(HardwareDecodeUnavailable, match="decodes this stream in software"):
        list(detector.stream(required))
    caplog.set_level(logging.INFO)
    wanted = VideoFileSource(video)
    wanted.decoder = choose_decoder(str(video), "auto", kind="file", facts=GPU_BOX)
    assert len(list(detector.stream(wanted))) == 10
    assert any("did not take the NVIDIA decoder" in r.getMessage() for r in caplog.records)


def test_the_stream_command_refuses_absent_hardware_decoding_before_loading(video, tmp_path, capsys) -> None:
    if DecodeFacts.probe().jetson or DecodeFacts.probe().nvidia_gpu:
        pytest.skip("this box has an NVIDIA decoder")
    missing_bundle = tmp_path / "not-loaded"
    assert main(["stream", str(missing_bundle), "--source", str(video), "--decode", "hardware"]) == 2
    err = capsys.readouterr().err
    assert "decode=hardware" in err and "no NVIDIA decoder" in err and "not-loaded" not in err
