"""Hostile inputs for the stream, replayed with generated cases (seeded): image bombs in every format the
readers take, truncated and mangled image files, arrays of every dtype/shape/value, source names built
to forge lines or escape the output folder, snapshot folders full of someone else's files (and a
tampered manifest, and symlinks out), and full disks (a real one where a private tmpfs can be mounted;
else, and always as well, ENOSPC injected at os.write, the one test double here, since a full disk
cannot be made without privileges).

Each case asserts the invariants of issue 14: no file outside the output paths changed, no traceback
reaches the user, every file written is valid (JSON Lines complete and strict; no partial JPEGs), and
every refusal names what was refused.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import random
import re
import resource
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge_ad
from edge_ad import logs
from edge_ad.imaging import ImageReadError, ImageTooLargeError, read_image, to_rgb_uint8
from edge_ad.stream import EventsSink, IterableSource, SnapshotSink, VideoSink

LIMIT = 50_000_000


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")


@pytest.fixture
def flag_all(tiny_bundle):
    det = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    det.threshold = -1e9                                  # every frame anomalous: a snapshot per frame
    return det


def _strict(line: str) -> dict:
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(line, parse_constant=refuse)


def _tree(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (symlinks not followed): its kind, content hash and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if path.is_symlink():
                out[str(path)] = ("link", os.readlink(path))
            elif path.is_dir():
                out[str(path)] = ("dir",)
            else:
                out[str(path)] = ("file", hashlib.sha1(path.read_bytes()).hexdigest(), st.st_mtime_ns)
    return out


# Image bombs, every format ----------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb(fmt: str, w: int, h: int) -> bytes:
    """A small file whose header declares w x h pixels, in format `fmt`."""
    tail = zlib.compress(b"\0" * 2000)
    if fmt == "png":
        return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + _chunk(b"IDAT", tail) + _chunk(b"IEND", b""))
    if fmt == "jpeg":
        ok, data = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
        data = bytearray(data.tobytes())
        at = data.index(b"\xff\xc0")
        data[at + 5:at + 9] = struct.pack(">HH", h, w)
        return bytes(data)
    if fmt == "bmp":
        dib = struct.pack("<IiiHHIIiiII", 40, w, -h, 1, 24, 0, 0, 2835, 2835, 0, 0)
        return b"BM" + struct.pack("<IHHI", 54 + len(tail), 0, 0, 54) + dib + tail
    if fmt == "bmp-core":
        return b"BM" + struct.pack("<IHHI", 26 + len(tail), 0, 0, 26) + struct.pack("<IHHHH", 12, w, h, 1, 24) + tail
    if fmt in ("tiff-le", "tiff-be"):
        e = "<" if fmt == "tiff-le" else ">"
        entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 8),
                   (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, len(tail))]
        ifd = struct.pack(e + "H", len(entries))
        for tag, kind, count, value in entries:
            ifd += struct.pack(e + "HHI", tag, kind, count) + (struct.pack(e + "HH", value, 0) if kind == 3
                                                                 else struct.pack(e + "I", value))
        head = (b"II*\x00" if e == "<" else b"MM\x00*") + struct.pack(e + "I", 8 + len(tail))
        return head + tail + ifd + b"\0\0\0\0"
    if fmt == "bigtiff":
        entries = [(256, 16, 1, w), (257, 16, 1, h), (258, 3, 1, 8)]
        ifd = struct.pack("<Q", len(entries)) + b"".join(struct.pack("<HHQQ", t, k, c, v) for t, k, c, v in entries)
        return b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + ifd + struct.pack("<Q", 0) + tail
    if fmt == "webp-vp8x":
        size = (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
        body = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + size
        return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
    if fmt == "webp-vp8l":
        bits = (w - 1) | ((h - 1) << 14)
        body = b"VP8L" + struct.pack("<I", 5 + len(tail)) + b"\x2f" + struct.pack("<I", bits) + tail
        return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
    if fmt == "webp-vp8":
        frame = b"\x10\x02\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", w, h) + tail
        body = b"VP8 " + struct.pack("<I", len(frame)) + frame
        return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
    raise ValueError(fmt)


_MAX_SIDE = {"jpeg": 65535, "bmp-core": 65535, "webp-vp8x": 1 << 24, "webp-vp8l": 16384, "webp-vp8": 16383}
FORMATS = ["png", "jpeg", "bmp", "bmp-core", "tiff-le", "tiff-be", "bigtiff", "webp-vp8x", "webp-vp8l", "webp-vp8"]
SUFFIX = {"png": ".png", "jpeg": ".jpg", "bmp": ".bmp", "bmp-core": ".bmp", "tiff-le": ".tif", "tiff-be": ".tiff",
          "bigtiff": ".tif", "webp-vp8x": ".webp", "webp-vp8l": ".webp", "webp-vp8": ".webp"}


def _bomb_size(fmt: str, rng: random.Random) -> tuple[int, int]:
    """A random width x height over the 50 MP limit that the format can declare."""
    side = min(_MAX_SIDE.get(fmt, 200_000), 200_000)
    while True:
        w, h = rng.randint(1, side), rng.randint(1, side)
        if w * h > LIMIT:
            return w, h


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("seed", range(3))
def test_every_format_declaring_too_many_pixels_is_refused_before_decoding(fmt, seed, tmp_path) -> None:
    w, h = _bomb_size(fmt, random.Random(f"{fmt}{seed}"))
    path = tmp_path / f"bomb{SUFFIX[fmt]}"
    path.write_bytes(_bomb(fmt, w, h))
    with pytest.raises(ImageTooLargeError) as err:
        read_image(path)
    assert f"{path} is {w}x{h} pixels" in str(err.value) and "EDGE_AD_MAX_IMAGE_PIXELS" in str(err.value)


@pytest.mark.parametrize("seed", range(3))
def test_a_folder_of_generated_bombs_goes_on_with_its_good_images(detector, tmp_path, caplog, seed) -> None:
    rng = random.Random(seed)
    folder = tmp_path / "line"
    folder.mkdir()
    expected, bombs = [], []
    for k in range(10):
        if rng.random() < 0.5:
            fmt = rng.choice(FORMATS)
            name = f"{k:02d}_bomb{SUFFIX[fmt]}"
            (folder / name).write_bytes(_bomb(fmt, *_bomb_size(fmt, rng)))
            bombs.append(name)
        else:
            name = f"{k:02d}_good{rng.choice(['.png', '.jpg', '.bmp', '.tif', '.webp'])}"
            cv2.imwrite(str(folder / name), np.full((48, 64, 3), rng.randrange(256), np.uint8))
            expected.append(name)
    before = _tree(tmp_path)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with caplog.at_level(logging.WARNING):
        stream = detector.stream(str(folder))
        names = [item.frame.name for item in stream]
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    s = stream.summary()["sources"]["line"]
    assert names == expected and s["too_large"] == len(bombs) and s["state"] == "ended"
    assert all(name in caplog.text for name in bombs) and "Traceback" not in caplog.text
    assert grew_mb < 500                                          # nothing was decoded at its declared size
    assert _tree(tmp_path) == before                              # the stream changed no file


# Truncated and mangled files ---------------------------------------------------------------------------------

def _valid_images(rng: np.random.Generator) -> dict[str, bytes]:
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    out = {}
    for ext in (".png", ".jpg", ".bmp", ".tif", ".webp"):
        ok, data = cv2.imencode(ext, image)
        out[ext] = data.tobytes()
    ok, data = cv2.imencode(".png", rng.integers(0, 65536, (40, 56), dtype=np.uint16))
    out["16.png"] = data.tobytes()
    return out


@pytest.mark.parametrize("seed", range(4))
def test_truncated_and_mangled_files_are_read_or_refused_with_an_image_read_error(seed, tmp_path) -> None:
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for ext, data in _valid_images(rng).items():
        for trial in range(12):
            mutated = bytearray(data)
            kind = pyrng.choice(["truncate", "header", "dims", "garbage", "length"])
            if kind == "length":                              # a chunk/segment length field set huge
                at = pyrng.randrange(8, min(400, len(mutated) - 4))
                mutated[at:at + 4] = pyrng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\xff\xff\xff"])
            elif kind == "truncate":
                mutated = mutated[:pyrng.randrange(len(mutated))]
            elif kind == "header":
                for _ in range(pyrng.randint(1, 4)):
                    mutated[pyrng.randrange(min(64, len(mutated)))] = pyrng.randrange(256)
            elif kind == "dims":
                at = pyrng.randrange(12, min(40, len(mutated) - 4))
                mutated[at:at + 4] = pyrng.choice([b"\0\0\0\0", b"\xff\xff\xff\xff", b"\x7f\xff\x00\x01"])
            else:
                mutated = mutated[:pyrng.randrange(8, 40)] + bytes(pyrng.randrange(256) for _ in range(200))
            path = tmp_path / f"m{trial}.{ext.split('.')[-1]}"
            path.write_bytes(bytes(mutated))
            try:
                image = read_image(path)
            except ImageReadError as err:
                assert str(path) in str(err)                                   # names the file
            else:
                assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
                assert image.shape[0] * image.shape[1] <= LIMIT
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024 < 500   # no decoder allocated GBs


# Arrays of every dtype, shape and value -------------------------------------------------------------------------

def _random_array(rng: np.random.Generator):
    dtype = rng.choice(["uint8", "uint16", "float16", "float32", "float64", "int8", "int16", "int32", "int64",
                        "uint32", "bool", "complex64", ">u2", ">f4", "object"])
    ndim = int(rng.integers(0, 6))
    shape = tuple(int(rng.choice([0, 1, 2, 3, 4, 5, 7, 16])) for _ in range(ndim))
    if dtype == "object":
        return np.empty(shape, dtype=object)
    scale = rng.choice([1.0, 255.0, 65535.0, -1.0])
    data = (rng.random(shape) * scale).astype(dtype)
    if data.dtype.kind == "f" and data.size and rng.random() < 0.4:
        data.flat[int(rng.integers(data.size))] = rng.choice([np.nan, np.inf, -np.inf])
    return data


@pytest.mark.parametrize("seed", range(3))
def test_generated_arrays_convert_or_get_a_value_error(seed) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(300):
        with np.errstate(all="ignore"):                      # the generator's own casts overflow on purpose
            array = _random_array(rng)
        try:
            out = to_rgb_uint8(array, bgr=bool(rng.integers(2)))
        except ValueError as err:
            assert str(err) and "Traceback" not in str(err)
        else:
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.shape[:2] == array.shape[:2]
            if array.dtype.kind == "f":
                assert np.isfinite(array).all() and array.min() >= -1e-3 and array.max() <= 1 + 1e-3


# Source names ------------------------------------------------------------------------------------------------------

def _hostile_names(seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = ["\n", "\r\n", "\x1b[31m", "\x00", "\u202e", "\t", "../", "/etc/", "..", ".", "#2", " ", "?", "é",
              "2030-01-01 00:00:00,000 ERROR edge_ad: forged", '"}\n{"event": "anomaly"', "cam"]
    names = {"cam", "cam_1", "cam 1", "cam/1", "", "..", "/tmp/x", "a" * 300, "rtsp://user:s3cr3tpw@10.0.0.1/h264"}
    while len(names) < 14:
        names.add("".join(rng.choice(pieces) for _ in range(rng.randint(1, 5))))
    return sorted(names)


@pytest.mark.parametrize("seed", range(2))
def test_hostile_source_names_stay_inside_the_outputs_and_forge_nothing(flag_all, tmp_path, seed) -> None:
    names = _hostile_names(seed)
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "keep.txt").write_text("keep")
    before = _tree(outside)
    buf = io.StringIO()
    handler = logs.configure("text", "INFO", stream=buf)
    level = logging.getLogger().level
    try:
        rng = np.random.default_rng(seed)
        sources = [IterableSource([np.zeros((0, 0), np.uint8)] + [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)],
                                  name) for name in names]
        events = out / "events.jsonl"
        stream = flag_all.stream(sources, sinks=[SnapshotSink(out / "snaps"), EventsSink(events, frames="all"),
                                                 VideoSink(out / "video.avi", codec="MJPG")])
        list(stream)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
    assert _tree(outside) == before
    produced = [Path(p) for p in _tree(tmp_path) if not p.startswith(str(outside))]
    assert all(str(p).startswith(str(out)) for p in produced if p != out)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in produced)       # safe file names only
    assert len([p for p in (out / "snaps").iterdir() if p.is_dir()]) == len(names)
    assert len(list(out.glob("video.*.avi"))) == len(names)
    text = buf.getvalue()
    for line in text.splitlines():
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line) or line.startswith("  | "), line
    lines = events.read_text().splitlines()
    parsed = [_strict(line) for line in lines]
    assert all(e["event"] in ("start", "source", "frame", "anomaly", "summary") for e in parsed)
    assert len([e for e in parsed if e["event"] in ("frame", "anomaly")]) == len(names)
    for output in [text, events.read_text(), *(p.name for p in produced)]:
        assert "s3cr3tpw" not in output and "Traceback" not in output
    summary = stream.summary()
    assert len(summary["sources"]) == len(names) and not summary["failed"]["all_sources_failed"]


# Snapshot folders that hold someone else's files ---------------------------------------------------------------------

_OURS = "20240102-030405_f000000001.jpg"


@pytest.mark.parametrize("seed", range(3))
def test_a_snapshot_folder_full_of_foreign_files_keeps_them_all(flag_all, tmp_path, seed) -> None:
    rng = random.Random(seed)
    snaps, outside = tmp_path / "snaps", tmp_path / "outside"
    outside.mkdir()
    (outside / _OURS).write_bytes(b"outside")
    (outside / "photo.jpg").write_bytes(b"outside photo")
    for k in range(25):
        depth = rng.randint(0, 3)
        folder = snaps.joinpath(*[rng.choice(["cam", "photos", "2024", "x y", "keep"]) for _ in range(depth)])
        folder.mkdir(parents=True, exist_ok=True)
        name = rng.choice([_OURS, f"IMG_{k:04d}.jpg", f".{_OURS}.partial", f"{k}.jpeg", "notes.txt",
                           _OURS.replace(".jpg", "_heatmap.jpg")])
        (folder / name).write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 5000))))
    if seed == 1:                                           # the source's own folder name is a link out
        shutil.rmtree(snaps / "cam", ignore_errors=True)
        (snaps / "cam").symlink_to(outside, target_is_directory=True)
    if seed == 2:                                           # and a symlinked snapshot-named file
        (snaps / "cam").mkdir(exist_ok=True)
        (snaps / "cam" / "20240101-000000_f000000009.jpg").unlink(missing_ok=True)
        (snaps / "cam" / "20240101-000000_f000000009.jpg").symlink_to(outside / "photo.jpg")
    st = (outside / _OURS).stat()
    tampered = [{"file": f, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
                for f in ["../outside/" + _OURS, "cam/../../outside/" + _OURS, str(outside / _OURS), "cam/" + _OURS,
                          "cam/20240101-000000_f000000009.jpg"]]
    (snaps / ".edge_ad-snapshots").write_text("".join(json.dumps(e) + "\n" for e in tampered)
                                              + '{"dir": "../outside"}\n{"dir": "cam"}\n{"file": ')
    before, outside_before = _tree(snaps), _tree(outside)
    sink = SnapshotSink(snaps, budget_mb=0.02)
    items = list(flag_all.stream(IterableSource([np.random.default_rng(seed).integers(0, 256, (96, 128, 3), np.uint8)
                                                  for _ in range(10)], "cam"), sinks=[sink]))
    assert len(items) == 10
    assert _tree(outside) == outside_before
    after = _tree(snaps)
    for path, entry in before.items():
        if not path.endswith(".edge_ad-snapshots"):
            assert after.get(path) == entry, path                 # every foreign entry is still there, unchanged
    new = [p for p in after if p not in before]
    assert all(re.search(r"/cam(-[0-9a-f]{8})?/\d{8}-\d{6}_f\d{9}(-\d+)?(_heatmap)?\.jpg$", p)
               or p.endswith(".edge_ad-snapshots") for p in new)
    assert not [p for p in new if p.endswith(".partial")]
    if seed == 1:
        assert sink.written == 0 and sink.failed == 10            # refused to write through the link


# Full disks --------------------------------------------------------------------------------------------------------

class _FullDisk:
    """os.write under `root` fails with ENOSPC (after a short write, sometimes) on the calls in `fail`."""

    def __init__(self, root: Path, fail: set[int], rng: random.Random) -> None:
        self.root, self.fail, self.rng, self.real, self.calls = str(root), fail, rng, os.write, 0

    def __call__(self, fd: int, data) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.startswith(self.root):
            return self.real(fd, data)
        self.calls += 1
        if self.calls in self.fail:
            if len(data) > 1 and self.rng.random() < 0.5:
                return self.real(fd, bytes(data)[: self.rng.randrange(1, len(data))])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(fd, data)


@pytest.mark.parametrize("seed", range(4))
def test_injected_full_disk_at_random_points_leaves_valid_files(flag_all, tmp_path, monkeypatch, seed) -> None:
    """ENOSPC injected at os.write at random calls (the one test double: no full disk can be made here)."""
    rng = random.Random(seed)
    out = tmp_path / "out"
    monkeypatch.setattr(os, "write", _FullDisk(out, {rng.randrange(1, 120) for _ in range(25)}, rng))
    frames = [np.random.default_rng(seed).integers(0, 256, (64, 80, 3), np.uint8) for _ in range(25)]
    sinks = [SnapshotSink(out / "snaps"), EventsSink(out / "events.jsonl", frames="all")]
    items = list(flag_all.stream(IterableSource(frames, "cam"), sinks=sinks))
    monkeypatch.undo()
    assert len(items) == 25
    text = (out / "events.jsonl").read_text()
    assert text.endswith("\n")
    events = [_strict(line) for line in text.splitlines()]
    failed = {e["snapshot"] for e in events if e["event"] == "snapshot_failed"}
    for k, e in enumerate(events):           # an `events_lost` line after it: the file says lines are missing
        if e["event"] == "anomaly":
            assert (e["snapshot"] is None and e["snapshot_error"]) or Path(e["snapshot"]).exists() \
                or e["snapshot"] in failed or any(later["event"] == "events_lost" for later in events[k:])
    assert not list(out.rglob("*.partial"))
    for jpg in out.rglob("*.jpg"):
        assert cv2.imread(str(jpg)) is not None                   # every snapshot on disk is a whole JPEG
    SnapshotSink(out / "snaps").close()                            # the manifest written meanwhile still loads


def _private_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _private_tmpfs(), reason="no private tmpfs (unshare -rm + mount) on this machine")
def test_a_real_full_disk_leaves_valid_files_and_few_errors(tiny_bundle, tmp_path) -> None:
    """A real 1.5 MB tmpfs, mounted in a private user+mount namespace (no privileges needed), filled by
    snapshots while the events file is written there too."""
    disk, copy = tmp_path / "disk", tmp_path / "copy"
    disk.mkdir()
    script = textwrap.dedent(f"""
        import json, numpy as np, edge_ad
        from edge_ad import logs
        from edge_ad.stream import EventsSink, IterableSource, SnapshotSink
        logs.configure("text", "INFO")
        det = edge_ad.load({str(tiny_bundle)!r}, backend="onnxruntime-cpu")
        det.threshold = -1e9
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (240, 320, 3), np.uint8) for _ in range(60)]
        sinks = [SnapshotSink({str(disk / 'snaps')!r}, budget_mb=100),
                 EventsSink({str(disk / 'events.jsonl')!r}, frames="all")]
        stream = det.stream(IterableSource(frames, "cam"), sinks=sinks)
        print(json.dumps({{"items": sum(1 for _ in stream), "failed": sinks[0].failed}}))
    """)
    cmd = (f"mount -t tmpfs -o size=1536k tmpfs {disk} && {sys.executable} -c \"$SCRIPT\"; rc=$?; "
           f"cp -a {disk} {copy}; exit $rc")
    run = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=240,
                         env={**os.environ, "SCRIPT": script})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["items"] == 60 and result["failed"] > 0
    assert "no space left on" in run.stderr and "Traceback" not in run.stderr
    assert run.stderr.count("cannot write snapshot") <= 3                       # rate-limited, not one per frame
    text = (copy / "events.jsonl").read_text()
    assert not text or text.endswith("\n")
    events = [_strict(line) for line in text.splitlines()]
    failed = {e["snapshot"] for e in events if e["event"] == "snapshot_failed"}
    named = [e for e in events if e["event"] == "anomaly"]
    assert named
    for k, e in enumerate(named):
        if e["snapshot"] is None:                        # not queued: the disk was full, or the writer behind
            assert e["snapshot_error"]
        else:
            assert (copy / Path(e["snapshot"]).relative_to(disk)).exists() or e["snapshot"] in failed \
                or any(later["event"] == "events_lost" for later in events[events.index(e):])
    assert any("no space left on" in (e.get("snapshot_error") or e.get("reason") or "") for e in events)
    assert not list(copy.rglob("*.partial"))
    for jpg in copy.rglob("*.jpg"):
        assert cv2.imread(str(jpg)) is not None


# The command line --------------------------------------------------------------------------------------------------

def test_cli_on_a_folder_of_bombs_shows_no_traceback_and_says_it_failed(tiny_bundle, tmp_path) -> None:
    folder = tmp_path / "bombs"
    folder.mkdir()
    rng = random.Random(7)
    for k, fmt in enumerate(rng.sample(FORMATS, 4)):
        (folder / f"{k}{SUFFIX[fmt]}").write_bytes(_bomb(fmt, *_bomb_size(fmt, rng)))
    before = _tree(tmp_path)
    run = subprocess.run([sys.executable, "-m", "edge_ad.cli", "stream", str(tiny_bundle), "--source", str(folder)],
                         capture_output=True, text=True, timeout=120)
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout and run.returncode != 0
    assert all(f"{folder / name}" in run.stderr for name in os.listdir(folder))      # each bomb is named
    summary = json.loads(run.stdout[run.stdout.index("{"):run.stdout.rindex("}") + 1])
    assert summary["failed"]["all_sources_failed"] and "no usable frame" in summary["failed"]["reason"]
    assert _tree(tmp_path) == before
