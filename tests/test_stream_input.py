"""Bad input on every kind of source: each case is converted, or skipped and counted, with a log line."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

import edge_ad
from edge_ad.data.synthetic import write_conveyor_video
from edge_ad.stream import IterableSource


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")


def _frames(rng: np.random.Generator) -> list:
    """A camera SDK that misbehaves: every format a line camera can hand over, and some it should not."""
    colour = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    return [
        colour,                                                        # 0 BGR 8-bit
        rng.integers(0, 256, (96, 128), dtype=np.uint8),               # 1 grayscale, 2-D
        rng.integers(0, 256, (80, 64, 1), dtype=np.uint8),             # 2 grayscale H x W x 1, other size
        rng.integers(0, 65536, (96, 128), dtype=np.uint16),            # 3 16-bit mono (machine-vision cameras)
        rng.integers(0, 65536, (96, 128, 3), dtype=np.uint16),         # 4 16-bit colour
        rng.integers(0, 256, (120, 200, 4), dtype=np.uint8),           # 5 BGRA, other size
        rng.random((96, 128, 3), dtype=np.float32),                    # 6 float in [0, 1]
        np.zeros((0, 0, 3), np.uint8),                                 # 7 empty: skipped
        rng.integers(0, 256, (96, 128, 5), dtype=np.uint8),            # 8 five channels: skipped
        rng.integers(0, 9, (96, 128, 3), dtype=np.int32),              # 9 int32: skipped
        None,                                                          # 10 nothing: skipped
        colour.copy(),                                                 # 11 back to normal
    ]


def test_every_frame_format_is_converted_or_skipped(detector, caplog) -> None:
    frames = _frames(np.random.default_rng(0))
    with caplog.at_level(logging.INFO, logger="edge_ad.stream"):
        stream = detector.stream(IterableSource(frames, "sdk"))
        items = list(stream)
    s = stream.summary()["sources"]["sdk"]
    assert [i.frame.index for i in items] == [0, 1, 2, 3, 4, 5, 6, 11]
    assert s["corrupt"] == 4 and s["converted"] == 6 and s["frames"] == 8
    assert all(i.frame.image.dtype == np.uint8 and i.frame.image.shape[2] == 3 for i in items)
    assert all(np.isfinite(i.result.score) for i in items)
    assert [i.result.heatmap.shape for i in items][1:3] == [(96, 128), (80, 64)]     # results at each frame's size
    text = caplog.text
    assert "frame 7 skipped: empty or undecodable frame" in text and "frame 10 skipped" in text
    assert "frame 8 skipped: unsupported image shape" in text and "frame 9 skipped: unsupported image dtype" in text
    assert "the frames before were 128x96, 3 channels, uint8" in text       # the first format change is logged
    assert "converting them to 8-bit colour" in text


def test_converted_frames_score_like_their_8bit_originals(detector) -> None:
    """16-bit is scaled (>> 8), not clipped: a frame and its 16-bit copy give the same score."""
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    deep = frame.astype(np.uint16) << 8
    items = list(detector.stream(IterableSource([frame, deep, cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)])))
    assert items[1].result.score == pytest.approx(items[0].result.score, rel=1e-5)
    assert items[2].result.score == pytest.approx(items[0].result.score, rel=1e-5)


def test_folder_with_mixed_images_and_non_images(detector, tmp_path, caplog) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    rng = np.random.default_rng(2)
    cv2.imwrite(str(folder / "a_colour.png"), rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "b_gray.png"), rng.integers(0, 256, (60, 80), dtype=np.uint8))
    cv2.imwrite(str(folder / "c_16bit.png"), rng.integers(0, 65536, (90, 120), dtype=np.uint16))
    cv2.imwrite(str(folder / "d_rgba.png"), rng.integers(0, 256, (90, 120, 4), dtype=np.uint8))
    cv2.imwrite(str(folder / "e_truncated.jpg"), rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    data = (folder / "e_truncated.jpg").read_bytes()
    (folder / "e_truncated.jpg").write_bytes(data[:100])
    (folder / "f_notes.txt").write_text("operator notes")
    (folder / "g_fake.png").write_bytes(b"this is not a png")
    (folder / ".hidden.png").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="edge_ad.stream"):
        stream = detector.stream(str(folder))
        names = [item.frame.name for item in stream]
    s = stream.summary()["sources"]["inbox"]
    assert names == ["a_colour.png", "b_gray.png", "c_16bit.png", "d_rgba.png"]
    assert s["corrupt"] == 3 and s["format_changes"] == 2     # 120x90 -> 80x60 -> 120x90; all decoded to RGB
    assert "f_notes.txt is not an image file" in caplog.text
    assert "cannot decode" in caplog.text and "e_truncated.jpg" in caplog.text and "g_fake.png" in caplog.text


def test_truncated_video_file_ends_cleanly(detector, tmp_path) -> None:
    """A recording cut short (a full disk, a copy that stopped): the frames before the cut are processed."""
    video = tmp_path / "line.avi"
    write_conveyor_video(video, frames=20, seed=1, codec="MJPG")
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    stream = detector.stream(str(video))
    indices = [item.frame.index for item in stream]
    s = stream.summary()
    assert 5 <= len(indices) < 20 and indices == sorted(set(indices))
    assert s["sources"]["line.avi"]["state"] == "ended"


def test_frame_size_change_mid_stream(detector, caplog) -> None:
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(96, 128, 3)] * 3 + [(240, 320, 3)] * 3]
    with caplog.at_level(logging.WARNING, logger="edge_ad.stream"):
        stream = detector.stream(IterableSource(frames, "cam"))
        items = list(stream)
    assert [i.result.heatmap.shape for i in items] == [(96, 128)] * 3 + [(240, 320)] * 3
    assert stream.summary()["sources"]["cam"]["format_changes"] == 1
    assert "frame 3 is 320x240, 3 channels, uint8, the frames before were 128x96" in caplog.text
