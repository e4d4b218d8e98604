"""Where stream results go: a JSON Lines events file, annotated videos, OpenCV windows.

A sink has `write(item)` for each processed frame and `close()`; `event(dict)` (optional) receives
the stream's other events: start, source state changes (with reconnection gaps) and the summary.
A sink may also have `take_events()` (events of its own for the other sinks, e.g. a snapshot that
could not be written) and `flush(timeout)` (finish its background work before the summary).
Snapshots of anomalous frames are in `snapshots.py`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from edge_ad.logs import redact

log = logging.getLogger(__name__)

_NAME_LIMIT = 80
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)     # errno values that mean "no space left"


def safe_name(source: str) -> str:
    """A source name usable as one file name component, distinct for distinct names.

    Characters other than A-Z a-z 0-9 . _ - become `_`; when that changed the name (or it was longer
    than 80 characters), 8 hex digits of the original's hash are appended, so `cam 1` -> `cam_1-1a2b3c4d`
    and `cam_1` -> `cam_1`: two sources whose names sanitise alike never share a file."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("._-") or "source"
    if clean == source and len(clean) <= _NAME_LIMIT:
        return clean
    digest = hashlib.sha1(source.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{clean[:_NAME_LIMIT].rstrip('._-') or 'source'}-{digest}"


def disk_error(err: OSError, path: str | Path) -> str:
    """What a failed write means, for a person: "no space left on DIR" for a full disk or quota."""
    if err.errno in DISK_FULL:
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        quota = " (disk quota exceeded)" if err.errno == errno.EDQUOT else ""
        return f"no space left on {folder}{quota}"
    return f"cannot write {path}: {err.strerror or err}"


def append_whole(fd: int, data: bytes) -> None:
    """Append `data` to the file open on `fd` (O_APPEND) completely or not at all.

    One os.write normally does it; a short write is continued, and when a write fails (a full disk)
    the file is truncated back to where it ended before, so it never keeps a torn line. Raises the OSError."""
    start = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[written:]
    except OSError:
        try:
            os.ftruncate(fd, start)
        except OSError as err:                      # nothing more can be done; say so
            log.error("could not cut an incomplete line off (truncate failed: %s)", err.strerror or err)
        raise


def to_json(value) -> str:
    """Strict JSON (no NaN/Infinity tokens): non-finite floats become null, numpy scalars plain numbers."""
    return json.dumps(_jsonable(value), allow_nan=False)


def _jsonable(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, bool, int, type(None))):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, deque, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray) and value.size <= 64:
        return _jsonable(value.tolist())
    return str(value)


class EventsSink:
    """One JSON object per line: `start`, `anomaly` (or every `frame` with frames="all"), `source`
    state changes and the final `summary`. Each line goes to the file in one write as it happens,
    so a kill at any moment leaves every line written so far complete; `fsync` also survives power loss.

    A line that cannot be written (a full disk) is not left half-written: the file is cut back to its
    last complete line, the error says "no space left on DIR", and once writing works again an
    `events_lost` line says how many lines are missing. Values are strict JSON (NaN/inf -> null).
    An existing file is appended to only if it is an events file (its first line is an event); an
    incomplete last line left by an earlier run that was cut off is removed first."""

    def __init__(self, path: str | Path, *, frames: str = "anomalous", fsync: bool = False) -> None:
        if frames not in ("anomalous", "all"):
            raise ValueError(f"frames must be 'anomalous' or 'all', got {frames!r}")
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"events file {self.path} is a folder; give a file name, e.g. "
                                    f"{self.path}/events.jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frames, self.fsync = frames, fsync
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            self._repair()
        except BaseException:
            os.close(self._fd)
            raise
        self.count = 0
        self.lost = 0                              # lines that could not be written (a full disk)
        self._lost_reason = ""

    def _repair(self) -> None:
        """Refuse a file that is not an events file; cut an incomplete last line off one that is."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            head = f.read(min(size, 64))
            cut = _last_line_end(f, size)
        if not head.startswith(b'{"event":'):
            raise ValueError(f"{self.path} already exists and is not an edge_ad events file (its first line is not "
                             "an event); give another --events file or move this one away")
        if cut < size:
            os.ftruncate(self._fd, cut)
            log.warning("events file %s ended in an incomplete line (%d bytes, left by a run that was cut off); "
                        "removed it, so every line is complete", self.path, size - cut)

    def write(self, item) -> None:
        result, frame = item.result, item.frame
        if not result.is_anomalous and self.frames != "all":
            return
        event = {"event": "anomaly" if result.is_anomalous else "frame", "source": frame.source,
                 "frame": frame.index, "timestamp": frame.timestamp, "anomalous": result.is_anomalous,
                 "score": result.score, "normalized_score": result.normalized_score,
                 "latency_ms": round(item.latency_ms, 3)}
        if frame.name:
            event["file"] = frame.name
        self._line({**event, **item.notes})
        self.count += int(result.is_anomalous)

    def event(self, event: dict) -> None:
        self._line(event)

    def _line(self, event: dict) -> None:
        data = (redact(to_json(event)) + "\n").encode()
        if self.lost:
            gap = {"event": "events_lost", "time": time.time(), "lines": self.lost, "reason": self._lost_reason}
            data = (to_json(gap) + "\n").encode() + data
        try:
            append_whole(self._fd, data)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as err:
            self.lost += 1
            self._lost_reason = disk_error(err, self.path)
            raise OSError(err.errno, f"{self._lost_reason}: event line not written ({self.lost} so far); the file "
                                     "keeps only complete lines") from None
        self.lost = 0

    def close(self) -> None:
        if self._fd < 0:
            return
        if self.lost:
            log.error("events file %s: the last %d line(s) could not be written: %s", self.path, self.lost,
                      self._lost_reason)
        os.close(self._fd)
        self._fd = -1


def _last_line_end(f, size: int) -> int:
    """The offset just after the last newline of the open file `f` (0 when there is none)."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        f.seek(start)
        chunk = f.read(end - start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


class VideoSink:
    """The frames with the heatmap overlaid and the decision written on them. With several sources,
    one file per source: `out.mp4` -> `out.<source>.mp4`. Frames are resized to the first one's size."""

    def __init__(self, path: str | Path, fps: float = 15.0, codec: str = "mp4v") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.codec = fps, codec
        self.writers: dict[str, tuple[cv2.VideoWriter, tuple[int, int]]] = {}
        self.per_source = False
        self._paths: set[Path] = set()

    def event(self, event: dict) -> None:
        if event.get("event") == "start":
            self.per_source = len(event.get("sources", [])) > 1

    def write(self, item) -> None:
        frame = _overlay(item)
        source = item.frame.source
        if source not in self.writers:
            path = self._path_for(source)
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*self.codec), self.fps, (w, h))
            if not writer.isOpened():
                raise IOError(f"cannot write video {path} with codec {self.codec}")
            self.writers[source] = (writer, (w, h))
        writer, size = self.writers[source]
        if (frame.shape[1], frame.shape[0]) != size:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        writer.write(frame)

    def _path_for(self, source: str) -> Path:
        """`out.<source>.mp4` (the source's own extension dropped), distinct for every source of this sink."""
        if not self.per_source:
            return self.path
        tag = re.sub(r"\.(mp4|avi|mkv|mov|webm|mjpe?g|ts)$", "", safe_name(source), flags=re.IGNORECASE)
        path = self.path.with_name(f"{self.path.stem}.{tag}{self.path.suffix}")
        if path in self._paths:                  # line1.mp4 and line1.avi: both would be out.line1.mp4
            digest = hashlib.sha1(source.encode("utf-8", "surrogatepass")).hexdigest()[:8]
            path = self.path.with_name(f"{self.path.stem}.{tag}-{digest}{self.path.suffix}")
        self._paths.add(path)
        return path

    def close(self) -> None:
        for writer, _ in self.writers.values():
            writer.release()


class WindowSink:
    """A live OpenCV window per source; `available()` says whether there is a display to open it on."""

    def __init__(self, title: str = "edge_ad") -> None:
        self.title = title
        self.windows: set[str] = set()

    @staticmethod
    def available() -> bool:
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))

    def write(self, item) -> None:
        name = f"{self.title}: {item.frame.source}"
        self.windows.add(name)
        cv2.imshow(name, _overlay(item))
        cv2.waitKey(1)

    def close(self) -> None:
        for name in self.windows:
            cv2.destroyWindow(name)


def _overlay(item):
    """The item's frame (BGR) with its heatmap and decision drawn on it."""
    image = item.frame.image
    if item.frame.color == "RGB":
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return item.result.overlay(image, color="BGR")
