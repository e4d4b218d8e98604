"""Issue 14, the stream's part: snapshots that only touch their own files, a full disk that leaves every
file valid, strict JSON events, image bombs, float/NaN images, folders being written, source names that
sanitise alike or hold newlines, and a summary that says when everything failed.

Real components throughout (real files, OpenCV, ONNX Runtime on the tiny SimpleNet bundle). Two test
doubles, each said where used: OSError(ENOSPC) injected at the os.write layer (a full disk cannot be
made on this machine without privileges; the real-tmpfs version is in tests/hostile/), and a backend
wrapper that turns the real model's output into NaN for some frames (no real model here outputs NaN).
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge_ad
from edge_ad import logs
from edge_ad.data import MVTecDataset
from edge_ad.imaging import (ImageReadError, ImageTooLargeError, max_image_pixels, read_image, read_mask,
                                 to_rgb_uint8)
from edge_ad.stream import EventsSink, IterableSource, Reconnect, SnapshotSink, VideoSink
from edge_ad.stream.sinks import safe_name


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")


@pytest.fixture
def flag_all(tiny_bundle):
    """A detector that flags every frame (its threshold lowered), so each frame makes a snapshot."""
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    det.threshold = -1e9
    return det


def _noise(n: int, seed: int = 0, shape=(120, 160, 3)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def _strict(line: str) -> dict:
    """json.loads that refuses NaN/Infinity tokens (strict JSON)."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(line, parse_constant=refuse)


def _snapshot_of(files: dict[Path, bytes]) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


# 1. Snapshots delete only their own files -----------------------------------------------------------

def _plant_foreign(folder: Path) -> list[Path]:
    """Photos a user keeps in the folder (and one level down), some even named like snapshots."""
    rng = np.random.default_rng(9)
    paths = [folder / "top.jpg", folder / "photos" / "IMG_0001.jpg", folder / "photos" / "deep" / "IMG_0002.jpg",
             folder / "keep" / "20240101-000000_f000000001.jpg", folder / "cam" / "mine.jpg",
             folder / "cam" / ".notes.partial"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, data = cv2.imencode(".jpg", rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
        path.write_bytes(data.tobytes())
    return paths


def test_snapshot_budget_never_deletes_files_it_did_not_write(flag_all, tmp_path) -> None:
    snaps = tmp_path / "snaps"
    foreign = _plant_foreign(snaps)
    before = _snapshot_of(foreign)
    sink = SnapshotSink(snaps, budget_mb=0.05)
    items = list(flag_all.stream(IterableSource(_noise(12), "cam"), sinks=[sink]))
    assert len(items) == 12 and sink.written == 12 and sink.deleted > 0
    assert _snapshot_of(foreign) == before                                   # every photo kept, unchanged
    mine = [p for p in (snaps / "cam").iterdir() if re.match(r"\d{8}-\d{6}_f\d{9}", p.name)]
    assert 0 < sum(p.stat().st_size for p in mine) <= 50_000 or len(mine) == 2
    assert not [p for p in snaps.rglob(".*.jpg.partial")]


def test_snapshots_of_an_earlier_run_count_but_edited_ones_are_left_alone(flag_all, tmp_path) -> None:
    snaps = tmp_path / "snaps"
    first = SnapshotSink(snaps, budget_mb=10)
    list(flag_all.stream(IterableSource(_noise(4, seed=1), "cam"), sinks=[first]))
    written = sorted((snaps / "cam").glob("*.jpg"))
    assert len(written) == 8
    edited = written[0]
    edited.write_bytes(edited.read_bytes() + b"user edit")                  # no longer the sink's file
    second = SnapshotSink(snaps, budget_mb=10)
    assert second.bytes == sum(p.stat().st_size for p in written[1:])       # the others are adopted
    second.close()
    third = SnapshotSink(snaps, budget_mb=0.001)                             # tiny budget: delete all it may
    list(flag_all.stream(IterableSource(_noise(1, seed=2), "cam"), sinks=[third]))
    assert edited.exists() and all(not p.exists() for p in written[1:])


def test_stale_partials_are_removed_by_their_own_naming_only(flag_all, tmp_path) -> None:
    snaps = tmp_path / "snaps"
    list(flag_all.stream(IterableSource(_noise(1), "cam"), sinks=[SnapshotSink(snaps)]))
    stale = snaps / "cam" / ".20240101-000000_f000000007_heatmap.jpg.partial"      # a killed run's
    other = [snaps / "cam" / ".holiday.jpg.partial", snaps / "elsewhere" / ".20240101-000000_f000000007.jpg.partial"]
    for path in [stale, *other]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x" * 10)
    SnapshotSink(snaps).close()
    assert not stale.exists() and all(p.exists() for p in other)


def test_a_tampered_manifest_cannot_make_the_sink_delete_outside_its_files(flag_all, tmp_path) -> None:
    snaps, victim = tmp_path / "snaps", tmp_path / "victim.jpg"
    victim.write_bytes(b"precious")
    snaps.mkdir()
    st = victim.stat()
    entries = [{"file": "../victim.jpg"}, {"file": "cam/../../victim.jpg"}, {"file": str(victim)}]
    (snaps / ".edge_ad-snapshots").write_text("".join(json.dumps({**e, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
                                                      + "\n" for e in entries) + '{"dir": ".."}\n')
    sink = SnapshotSink(snaps, budget_mb=0.001)
    list(flag_all.stream(IterableSource(_noise(3), "cam"), sinks=[sink]))
    assert victim.read_bytes() == b"precious"


# 7. A full disk ---------------------------------------------------------------------------------------

class _FullDisk:
    """Test double for a full disk: os.write on files under `root` writes part of the data and then raises
    OSError(ENOSPC) while `full` is set (a full disk cannot be made here without privileges)."""

    def __init__(self, root: Path) -> None:
        self.root, self.full, self.real = str(root), False, os.write
        self.failures = 0

    def __call__(self, fd: int, data) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if self.full and target.startswith(self.root):
            self.failures += 1
            if self.failures % 2 == 1 and len(data) > 1:
                return self.real(fd, bytes(data)[: len(data) // 2])       # a short write, then ENOSPC
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(fd, data)


def test_events_file_keeps_only_complete_lines_when_the_disk_fills(detector, tmp_path, monkeypatch) -> None:
    disk = _FullDisk(tmp_path / "out")
    monkeypatch.setattr(os, "write", disk)
    path = tmp_path / "out" / "events.jsonl"
    sink = EventsSink(path, frames="all")
    errors = []
    stream = detector.stream(IterableSource(_noise(30), "cam"), sinks=[sink])
    for item in stream:
        disk.full = 8 <= item.frame.index < 20
    sink.close()
    lines = path.read_bytes().decode().split("\n")
    assert lines[-1] == ""                                                    # ends with a complete line
    events = [_strict(line) for line in lines[:-1]]                           # every line parses
    lost = [e for e in events if e["event"] == "events_lost"]
    assert lost and "no space left on" in lost[0]["reason"] and str(tmp_path / "out") in lost[0]["reason"]
    frames = [e["frame"] for e in events if e["event"] == "frame"]
    assert frames[:8] == list(range(8)) and frames[-1] == 29 and events[-1]["event"] == "summary"
    assert not errors


def test_events_sink_repairs_a_torn_tail_and_refuses_a_file_that_is_not_events(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "start"}\n{"event": "anomaly", "sco')
    EventsSink(path).close()
    assert path.read_text() == '{"event": "start"}\n'
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(ValueError, match="not an edge_ad events file"):
        EventsSink(notes)
    assert notes.read_text() == "my notes\n"


def test_snapshot_writer_on_a_full_disk(flag_all, tmp_path, monkeypatch, caplog) -> None:
    """Partial files removed, one error line (not one per frame) saying "no space left on DIR", and no
    event names a snapshot that is not on disk without saying it was not written."""
    snaps = tmp_path / "snaps"
    disk = _FullDisk(snaps)
    monkeypatch.setattr(os, "write", disk)
    events = tmp_path / "events.jsonl"
    sink = SnapshotSink(snaps, budget_mb=100)
    disk.full = True
    with caplog.at_level(logging.WARNING):
        items = list(flag_all.stream(IterableSource(_noise(40), "cam"), sinks=[sink, EventsSink(events)]))
    assert len(items) == 40 and sink.written == 0 and sink.failed > 0
    assert not list(snaps.rglob("*.partial"))
    lines = [_strict(line) for line in events.read_text().splitlines()]
    failed = {e["snapshot"] for e in lines if e["event"] == "snapshot_failed"}
    for event in (e for e in lines if e["event"] == "anomaly"):
        named = event.get("snapshot")
        assert (named and (Path(named).exists() or named in failed)) or (named is None and event["snapshot_error"])
    errors = [r for r in caplog.records if "cannot write snapshot" in r.getMessage()]
    assert 1 <= len(errors) <= 2 and "no space left on" in errors[0].getMessage()
    disk.full = False


# 4. Strict JSON, non-finite model output -------------------------------------------------------------

def test_events_are_strict_json_without_nan_or_infinity(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    sink = EventsSink(path)
    sink.event({"event": "x", "a": float("nan"), "b": float("inf"), "c": np.float32("-inf"), "d": [np.float64(1.5)],
                "e": np.int64(3)})
    sink.close()
    event = _strict(path.read_text())
    assert event == {"event": "x", "a": None, "b": None, "c": None, "d": [1.5], "e": 3}


class _NaNOnWhite:
    """Test double: the real backend, with its output replaced by NaN for all-white frames (a model that
    outputs NaN on some input cannot be made from the tiny bundle)."""

    def __init__(self, real) -> None:
        self.real = real

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = np.array(self.real.infer(batch), dtype=np.float32, copy=True)
        out[batch.reshape(len(batch), -1).min(axis=1) >= 250] = np.nan
        return out

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_nan_model_output_is_an_inference_error_and_the_other_sources_go_on(tiny_bundle, tmp_path, caplog) -> None:
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    det.backend = _NaNOnWhite(det.backend)
    white = np.full((120, 120, 3), 255, np.uint8)      # square: the letterbox fit adds no black padding
    bad = [white if k % 2 else frame for k, frame in enumerate(_noise(8, seed=5))]
    events = tmp_path / "events.jsonl"
    with caplog.at_level(logging.ERROR):
        stream = det.stream([IterableSource(_noise(8), "good"), IterableSource(bad, "bad")],
                            sinks=[EventsSink(events, frames="all")])
        items = list(stream)
    assert sorted(i.frame.index for i in items if i.frame.source == "good") == list(range(8))
    assert sorted(i.frame.index for i in items if i.frame.source == "bad") == [0, 2, 4, 6]
    assert all(np.isfinite(i.result.score) for i in items)
    s = stream.summary()
    assert s["sources"]["bad"]["inference_errors"] == 4 and s["sources"]["good"]["inference_errors"] == 0
    assert not s["failed"]["all_inference_failed"] and not s["failed"]["all_sources_failed"]
    assert "source bad: frame 1: inference failed" in caplog.text
    [_strict(line) for line in events.read_text().splitlines()]


def test_every_inference_failing_is_in_the_summary(tiny_bundle) -> None:
    """NaN outputs fail their frames (the stream goes on: a white flash must not end a line's stream);
    when every frame failed, the summary says so for the exit code."""
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    det.backend = _NaNOnWhite(det.backend)
    stream = det.stream(IterableSource([np.full((64, 64, 3), 255, np.uint8)] * 12, "white"))
    s = stream.run()
    assert s["frames"] == 0 and s["sources"]["white"]["inference_errors"] == 12
    assert s["failed"]["all_inference_failed"] and "every inference failed (12 frames)" in s["failed"]["reason"]
    assert "not finite" in s["failed"]["reason"]
    assert "inference failed on every frame" in s["sources"]["white"]["reason"]


class _Broken:
    """Test double: a backend whose every run raises, as a crashed inference server would."""

    def __init__(self, real) -> None:
        self.real = real

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("backend crashed")

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_broken_backend_ends_the_stream_with_the_reason(tiny_bundle) -> None:
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    det.backend = _Broken(det.backend)
    stream = det.stream([IterableSource(_noise(20), "a"), IterableSource(_noise(20), "b")])
    with pytest.raises(RuntimeError, match="inference failed 5 times in a row; last error: backend crashed"):
        stream.run()
    failed = stream.summary()["failed"]
    assert failed["all_inference_failed"] and "backend crashed" in failed["reason"]


# 5. Image bombs --------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A 3 KB PNG whose header declares width x height (a decompression bomb)."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 3000)) + _chunk(b"IEND", b""))


def png_real(width: int, height: int) -> bytes:
    """A valid grayscale PNG of width x height zeros: small on disk, width*height bytes decoded."""
    comp, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    ok, data = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    data = bytearray(data.tobytes())
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_png_bomb_and_big_png_in_a_folder_are_skipped_and_the_folder_goes_on(detector, tmp_path, caplog) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    good = _noise(3, seed=3, shape=(90, 120, 3))
    cv2.imwrite(str(folder / "a.png"), good[0])
    (folder / "b_bomb.png").write_bytes(png_declaring(100_000, 100_000))
    cv2.imwrite(str(folder / "c.png"), good[1])
    (folder / "d_big.png").write_bytes(png_real(8000, 8000))              # 64 MP: over the 50 MP default
    (folder / "e_bomb.jpg").write_bytes(jpeg_declaring(60_000, 60_000))
    cv2.imwrite(str(folder / "f.png"), good[2])
    with caplog.at_level(logging.WARNING):
        stream = detector.stream(str(folder))
        names = [i.frame.name for i in stream]
    s = stream.summary()["sources"]["inbox"]
    assert names == ["a.png", "c.png", "f.png"]
    assert s["too_large"] == 3 and s["corrupt"] == 3 and s["state"] == "ended"
    for name in ("b_bomb.png", "d_big.png", "e_bomb.jpg"):
        assert name in caplog.text
    assert "over the limit of 50 MP" in caplog.text and "Traceback" not in caplog.text
    from edge_ad.stream.prometheus import StreamCollector

    scraped = {(sample.name, sample.labels["source"]): sample.value for m in StreamCollector(stream).collect()
               for sample in m.samples if "source" in sample.labels}
    assert scraped[("edge_ad_frames_too_large_total", "inbox")] == 3


def test_a_single_image_file_source_is_checked_like_a_folder_image(detector, tmp_path) -> None:
    """An image given as the source is read by the image reader (header checked), not FFmpeg."""
    (tmp_path / "big.png").write_bytes(png_real(8000, 8000))
    cv2.imwrite(str(tmp_path / "ok.png"), _noise(1, shape=(60, 80, 3))[0])
    s = detector.stream([str(tmp_path / "big.png"), str(tmp_path / "ok.png")]).run()
    assert s["sources"]["big.png"]["too_large"] == 1 and s["sources"]["big.png"]["frames"] == 0
    assert s["sources"]["ok.png"]["frames"] == 1 and not s["failed"]["all_sources_failed"]


def test_pixel_limit_is_configurable_by_argument_and_environment(tmp_path, monkeypatch) -> None:
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), np.zeros((90, 120, 3), np.uint8))
    assert read_image(path).shape == (90, 120, 3)
    with pytest.raises(ImageTooLargeError, match="small.png is 120x90"):
        read_image(path, max_pixels=1000)
    monkeypatch.setenv("EDGE_AD_MAX_IMAGE_PIXELS", "1000")
    assert max_image_pixels() == 1000
    with pytest.raises(ImageTooLargeError, match="EDGE_AD_MAX_IMAGE_PIXELS"):
        read_image(path)
    with pytest.raises(ImageTooLargeError):
        read_mask(path)
    monkeypatch.setenv("EDGE_AD_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="EDGE_AD_MAX_IMAGE_PIXELS='lots' is not a number"):
        read_image(path)


def test_a_bomb_in_training_data_names_the_file(tmp_path) -> None:
    good = tmp_path / "cat" / "train" / "good"
    good.mkdir(parents=True)
    cv2.imwrite(str(good / "000.png"), np.zeros((32, 32, 3), np.uint8))
    (good / "001.png").write_bytes(png_declaring(100_000, 100_000))
    data = MVTecDataset(tmp_path / "cat", "train")
    assert data[0]["image"].shape == (32, 32, 3)
    with pytest.raises(ImageReadError, match=r"001\.png is 100000x100000 pixels"):
        data[1]


# predict() input conversion ---------------------------------------------------------------------------

@pytest.mark.parametrize("image, match", [
    (np.full((8, 8, 3), 200.0, np.float32), "divide by 255"),
    (np.full((8, 8), -3.0, np.float64), "must be in \\[0, 1\\]"),
    (np.array([[0.5, np.nan]], np.float32), "NaN or infinite"),
    (np.array([[0.5, np.inf]], np.float64), "NaN or infinite"),
    (np.zeros((2, 8, 8, 3), np.uint8), "a 4-D array is a batch"),
    (np.zeros((3, 8, 8), np.uint8), "channels last"),
    (np.zeros((8, 8, 2), np.uint8), "unsupported image shape"),
    (np.zeros((8, 8, 3), np.int32), "unsupported image dtype int32"),
    (np.zeros((8, 8, 3), bool), "unsupported image dtype bool"),
    (np.zeros(8, np.uint8), "unsupported image shape"),
    ("image.png", "numpy array"),
])
def test_bad_image_arrays_get_a_clear_error(image, match) -> None:
    with pytest.raises(ValueError, match=match):
        to_rgb_uint8(image)


def test_float_big_endian_and_flipped_images_convert(detector) -> None:
    base = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb_uint8(base.astype(np.float32) / 255, bgr=False), base)
    assert np.array_equal(to_rgb_uint8(base.astype(np.float16) / 255, bgr=False)[..., 0].astype(int),
                          to_rgb_uint8(base.astype(np.float16) / 255, bgr=False)[..., 0].astype(int))
    assert np.array_equal(to_rgb_uint8((base.astype(">u2") << 8), bgr=False), base)
    assert np.array_equal(to_rgb_uint8(base[::-1, ::-1], bgr=False), base[::-1, ::-1])
    with pytest.raises(ValueError, match="divide by 255"):
        detector.predict(base.astype(np.float32))                                   # 0..255 float: refused


# Folder sources -----------------------------------------------------------------------------------------

def test_a_file_still_being_written_is_read_once_it_is_complete(detector, tmp_path) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    ok, data = cv2.imencode(".png", _noise(1, shape=(90, 120, 3))[0])
    data = data.tobytes()
    (folder / "a.png").write_bytes(data[: len(data) // 3])                         # the camera is writing it
    finish = threading.Timer(0.3, lambda: (folder / "a.png").write_bytes(data))
    finish.start()
    stream = detector.stream(str(folder))
    names = [i.frame.name for i in stream]
    finish.join()
    assert names == ["a.png"] and stream.summary()["sources"]["drop"]["corrupt"] == 0


def test_an_old_corrupt_file_is_skipped_without_retries(detector, tmp_path, caplog) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    os.utime(folder / "a.png", (time.time() - 3600, time.time() - 3600))
    with caplog.at_level(logging.INFO):
        stream = detector.stream(str(folder))
        list(stream)
    assert stream.summary()["sources"]["old"]["corrupt"] == 1 and "reading it again" not in caplog.text


# Names ---------------------------------------------------------------------------------------------------

def test_sources_whose_names_sanitise_alike_get_distinct_files(flag_all, tmp_path) -> None:
    names = ["cam 1", "cam_1", "cam/1", "cam?1"]
    assert len({safe_name(n) for n in names}) == 4 and safe_name("cam_1") == "cam_1"
    snaps = tmp_path / "snaps"
    video = tmp_path / "out.avi"
    sources = [IterableSource(_noise(2, seed=k), name) for k, name in enumerate(names)]
    sources += [IterableSource(_noise(2), "line1.mp4"), IterableSource(_noise(2), "line1.avi")]
    list(flag_all.stream(sources, sinks=[SnapshotSink(snaps), VideoSink(video, codec="MJPG")]))
    folders = [p for p in snaps.iterdir() if p.is_dir()]
    assert len(folders) == 6 and all(len(list(f.glob("*.jpg"))) == 4 for f in folders)
    assert len(list(tmp_path.glob("out.*.avi"))) == 6


def test_a_newline_in_a_source_name_cannot_forge_a_log_or_event_line(detector, tmp_path) -> None:
    forged = "cam\n2030-01-01 00:00:00,000 ERROR edge_ad: forged\r\x1b[2J\u202e"
    buf = io.StringIO()
    handler = logs.configure("text", "INFO", stream=buf)
    root_level = logging.getLogger().level
    try:
        frames = [np.zeros((0, 0), np.uint8)] + _noise(2)                          # one skipped frame: a log line
        events = tmp_path / "events.jsonl"
        stream = detector.stream(IterableSource(frames, forged), sinks=[EventsSink(events, frames="all")])
        list(stream)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(root_level)
    text = buf.getvalue()
    assert "cam\\n2030-01-01" in text
    for line in text.splitlines():
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ", line) or line.startswith("  | ")
        assert "\x1b" not in line and "\u202e" not in line and "\r" not in line
    assert not any(line.startswith("2030-01-01") for line in text.splitlines())
    lines = events.read_text().splitlines()
    assert len(lines) == len([_strict(line) for line in lines])
    [name] = stream.summary()["sources"]
    assert "\n" not in name and name.startswith("cam\\n")


# Summary ---------------------------------------------------------------------------------------------------

def test_summary_says_when_every_source_failed(detector, tmp_path) -> None:
    folder = tmp_path / "bombs"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_declaring(90_000, 90_000))
    dead = "http://127.0.0.1:9/stream.mjpg"
    stream = detector.stream([str(folder), dead], reconnect=Reconnect(initial=0.05, cap=0.05, budget=1, timeout=1))
    s = stream.run()
    assert s["failed"]["all_sources_failed"] and not s["failed"]["all_inference_failed"]
    assert "bombs: no usable frame" in s["failed"]["reason"] and "retry budget" in s["failed"]["reason"]
    assert s["sources"]["bombs"]["reason"].startswith("no usable frame: 1 skipped")


def test_summary_failed_is_false_when_one_source_works(detector, tmp_path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    s = detector.stream([str(folder), IterableSource(_noise(2), "cam")]).run()
    assert s["failed"] == {"all_sources_failed": False, "all_inference_failed": False, "reason": ""}
    assert s["sources"]["empty"]["reason"] == "the source ended without delivering a frame"
    assert s["sources"]["cam"]["reason"] is None
