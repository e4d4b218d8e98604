"""Where stream results go: a JSON Lines events file, annotated videos, OpenCV windows.

A sink has `write(item)` for each processed frame and `close()`; `event(dict)` (optional) receives
the stream's other events: start, source state changes (with reconnection gaps) and the summary.
A sink may also have `take_events()` (events of its own for the other sinks, e.g. a snapshot that
could not be written) and `flush(timeout)` (finish its background work before the summary).
Snapshots of anomalous frames are in `snapshots.py`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from edge_ad.logs import redact_value

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


def redacted_json(value) -> str:
    """`to_json` of `value` with every string in it redacted first (`redact_value`): the text is never
    redacted after serialising, so no string a user controls (a file named `token=".png`) can cut the
    line open, and no object is replaced because its key looked like a credential's."""
    return json.dumps(redact_value(_jsonable(value)), allow_nan=False)


class InUseError(BlockingIOError):
    """An output (events file, snapshot folder) that another writer holds: refused, never shared."""


def lock_exclusive(fd: int, what: str) -> None:
    """Hold an exclusive flock on `fd` for as long as it stays open; InUseError when another writer
    (another stream, in this process or another) holds it. Released by the kernel when the fd closes,
    so a killed stream never leaves a stale lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InUseError(errno.EWOULDBLOCK, f"{what} is in use by another edge-ad stream (it holds its lock); give "
                                            "each stream its own, or stop the other one first") from None
    except OSError as err:                   # a file system without flock (some network mounts): say so, go on
        log.warning("cannot lock %s (%s); make sure no other stream writes it", what, err.strerror or err)


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
    incomplete last line left by an earlier run that was cut off is removed first. One writer only: the
    file is flock'ed for the sink's life, and a second EventsSink on it (this process or another) gets
    InUseError, so two streams can never cut each other's lines. Every string of an event is redacted
    before the line is serialised (`redacted_json`), so the line stays one valid JSON object."""

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
            if stat.S_ISREG(os.fstat(self._fd).st_mode):    # (a pipe or /dev/stdout is not a shared file)
                lock_exclusive(self._fd, f"events file {self.path}")   # before the repair: it may cut the file
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
        data = (redacted_json(event) + "\n").encode()
        if self.lost:
            gap = {"event": "events_lost", "time": time.time(), "lines": self.lost, "reason": self._lost_reason}
            data = (redacted_json(gap) + "\n").encode() + data
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
    one file per source: `out.mp4` -> `out.<source>.mp4`. Frames are resized to the first one's size.

    `overwrite=False` refuses a video file that exists already (FileExistsError from `plan`, which the
    CLI calls before streaming, and again, atomically, when the file is created). OpenCV's writer fails
    silently on a full disk, so the free space of the folder is checked (at most every `space_check_s`
    seconds) against a reserve -- `reserve_mb`, two raw frames, and room for the file's index -- and when
    it runs out the videos are finished and this sink stops, saying "no space left on DIR" (the stream
    goes on). On close, each file is checked to exist and to open with the frames it should have."""

    def __init__(self, path: str | Path, fps: float = 15.0, codec: str = "mp4v", *, overwrite: bool = True,
                 reserve_mb: float = 4.0, space_check_s: float = 1.0) -> None:
        for what, value in (("fps", fps), ("reserve_mb", reserve_mb), ("space_check_s", space_check_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (what == "fps" and not 0 < value <= 1000):
                raise ValueError(f"video {what} must be a finite number >= 0 (fps: 0 < fps <= 1000), got {value!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.codec, self.overwrite = fps, codec, overwrite
        self.reserve = int(reserve_mb * 1e6)
        self.space_check_s = space_check_s
        self.writers: dict[str, tuple[cv2.VideoWriter, tuple[int, int]]] = {}
        self.per_source = False
        self.paths: dict[str, Path] = {}            # source -> its video file
        self._locks: dict[str, int] = {}            # source -> an fd holding the flock on its file
        self.frames: dict[str, int] = {}            # source -> frames written
        self.stopped = ""                           # why writing stopped ("" while it writes)
        self.problems: list[str] = []               # files found missing or unreadable on close
        self._paths: set[Path] = set()
        self._next_check = 0.0
        self._events: list[dict] = []

    def plan(self, sources: list[str]) -> dict[str, Path]:
        """The file of each source (`out.mp4`, or `out.<source>.mp4` with several); FileExistsError when
        one exists and `overwrite` is False."""
        if not self.paths:
            self.per_source = len(sources) > 1
            for source in sources:
                self.paths[source] = self._path_for(source)
        if not self.overwrite:
            taken = [str(p) for p in self.paths.values() if os.path.lexists(p)]
            if taken:
                raise FileExistsError(errno.EEXIST, f"video {', '.join(taken)} exists already; give another --video "
                                                    "file, or --overwrite-video to replace it")
        return dict(self.paths)

    def event(self, event: dict) -> None:
        if event.get("event") == "start":
            try:
                self.plan([str(s) for s in event.get("sources", [])])
            except FileExistsError as err:
                self.stopped = str(err.strerror or err)     # said once; the frames are not written
                raise

    def take_events(self) -> list[dict]:
        """A `video_stopped` event when the disk filled (for the events file)."""
        events, self._events = self._events, []
        return events

    def write(self, item) -> None:
        if self.stopped:
            return
        frame = _overlay(item)
        if not self._room(frame):
            return
        source = item.frame.source
        if source not in self.writers:
            try:
                self.writers[source] = self._open(source, frame)
            except (FileExistsError, InUseError) as err:    # said once; this sink writes nothing more
                self.stopped = str(err.strerror or err)
                self._release()
                raise
        writer, size = self.writers[source]
        if (frame.shape[1], frame.shape[0]) != size:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        writer.write(frame)
        self.frames[source] = self.frames.get(source, 0) + 1

    def _open(self, source: str, frame: np.ndarray) -> tuple[cv2.VideoWriter, tuple[int, int]]:
        """A writer for `source`'s file; an existing file is refused (atomically) unless `overwrite`."""
        path = self.paths.get(source) or self.paths.setdefault(source, self._path_for(source))
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | (0 if self.overwrite else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o666)
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, f"video {path} exists already (written by someone else "
                                                "meanwhile?); not replacing it") from None
        try:
            lock_exclusive(fd, f"video {path}")             # two streams never write one video file
        except BaseException:
            os.close(fd)
            raise
        self._locks[source] = fd
        h, w = frame.shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*self.codec), self.fps, (w, h))
        if not writer.isOpened():
            raise IOError(f"cannot write video {path} with codec {self.codec}")
        self.frames.setdefault(source, 0)
        return writer, (w, h)

    def _room(self, frame: np.ndarray) -> bool:
        """Whether the folder still has room for more video; on running out, finish the files and stop."""
        now = time.monotonic()
        if now < self._next_check:
            return True
        self._next_check = now + self.space_check_s
        folder = self.path.parent
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return True                               # cannot tell: go on (the check on close still runs)
        need = max(self.reserve, 2 * frame.nbytes, 64 * sum(self.frames.values()))
        if free >= need:
            return True
        self.stopped = (f"no space left on {folder} ({free / 1e6:.1f} MB free, {need / 1e6:.1f} MB kept in "
                        "reserve): the annotated video stops here; the stream goes on")
        log.error("video %s: %s", self.path, self.stopped)
        self._events.append({"event": "video_stopped", "time": time.time(), "video": str(self.path),
                             "reason": self.stopped,      # per source as a list: a name is never a key of a number
                             "frames": [{"source": name, "frames": n} for name, n in self.frames.items()]})
        self._release()
        return False

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

    def _release(self) -> None:
        """Finish every file, then check each one is there and opens with frames (a full disk or a write
        error that OpenCV kept to itself shows here); problems are logged and kept in `problems`."""
        writers, self.writers = self.writers, {}
        for writer, _ in writers.values():
            writer.release()
        locks, self._locks = self._locks, {}
        for fd in locks.values():
            os.close(fd)
        for source in writers:
            problem = _video_problem(self.paths[source], self.frames.get(source, 0))
            if problem:
                self.problems.append(problem)
                log.error("video %s", problem)

    def close(self) -> None:
        self._release()


def _video_problem(path: Path, frames: int) -> str:
    """Why the video at `path` is not a readable file with frames ("" when it is)."""
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"{path} was not written ({err.strerror or err})"
    if frames and size < 64:
        return f"{path} is incomplete ({size} bytes for {frames} frames): was the disk full?"
    if frames:
        cap = cv2.VideoCapture(str(path))
        try:
            ok = cap.isOpened() and cap.grab()
        finally:
            cap.release()
        if not ok:
            return f"{path} cannot be read back ({size} bytes for {frames} frames): was the disk full?"
    return ""


class WindowSink:
    """A live OpenCV window per source; `available()` says whether there is a display to open it on."""

    def __init__(self, title: str = "edge_ad") -> None:
        self.title = title
        self.windows: set[str] = set()

    @staticmethod
    def available() -> bool:
        return WindowSink.unavailable() is None

    @staticmethod
    def unavailable() -> str | None:
        """Why no window can open here (no display, or an OpenCV built without a GUI), or None."""
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            return "no display (DISPLAY / WAYLAND_DISPLAY is not set)"
        if opencv_gui() == "NONE":
            return ("this OpenCV has no GUI (the headless wheel edge_ad installs on x86); for windows: "
                    "pip uninstall opencv-python-headless && pip install opencv-python")
        return None

    def write(self, item) -> None:
        name = f"{self.title}: {item.frame.source}"
        self.windows.add(name)
        cv2.imshow(name, _overlay(item))
        cv2.waitKey(1)

    def close(self) -> None:
        for name in self.windows:
            cv2.destroyWindow(name)


def opencv_gui() -> str:
    """The GUI backend OpenCV was built with ("NONE" for the headless wheels), from its build information."""
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return match.group(1) if match else "unknown"


def _overlay(item):
    """The item's frame (BGR) with its heatmap and decision drawn on it."""
    image = item.frame.image
    if item.frame.color == "RGB":
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return item.result.overlay(image, color="BGR")
