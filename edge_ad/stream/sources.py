"""Frame sources, each read by its own thread: camera index, video file, RTSP/HTTP URL, image folder.

Live sources (camera, network stream) keep only the newest frame and count what they drop, so a
slow model never builds up latency. Files and folders deliver every frame in order. A frame that
cannot be decoded is skipped and counted, never replaced by a made-up one.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_ad.data.images import IMAGE_SUFFIXES, ImageReadError, read_image

log = logging.getLogger(__name__)

_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https)://", re.IGNORECASE)
_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


def redact(url: str) -> str:
    """The URL with any user:password@ removed, for logs and events."""
    return _CREDENTIALS.sub(r"\1***@", url)


@dataclass
class Frame:
    index: int                 # position in the source (frames dropped by a live source leave gaps)
    image: np.ndarray          # as decoded: BGR uint8 for cameras/videos, RGB for folders (see color)
    timestamp: float           # time.time() when read
    source: str
    color: str = "BGR"
    name: str | None = None    # file name, for folder sources


@dataclass
class SourceStats:
    frames_read: int = 0
    frames_dropped: int = 0    # live sources: overwritten before the model took them
    frames_corrupt: int = 0    # skipped: could not be decoded
    state: str = "connecting"
    errors: list[str] = field(default_factory=list)


class Source(ABC):
    """Base: a reader thread fills a buffer; `get()` hands frames to the pipeline."""

    live = False

    def __init__(self, name: str, *, buffer: int = 4) -> None:
        self.name = name
        self.stats = SourceStats()
        self._frames: deque[Frame] = deque(maxlen=1 if self.live else buffer)
        self._cond = threading.Condition()
        self._done = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # The reader thread --------------------------------------------------------------------
    def start(self) -> "Source":
        self._open()
        self._thread = threading.Thread(target=self._run, name=f"edge_ad-source-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._read_loop()
        except Exception as err:  # noqa: BLE001 - reported through stats and the log, never silent
            self.stats.errors.append(str(err))
            self.stats.state = "failed"
            log.error("source %s failed: %s", self.name, err)
        finally:
            self._release()
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _put(self, frame: Frame) -> None:
        with self._cond:
            if self.live:
                if self._frames:
                    self.stats.frames_dropped += 1
                self._frames.append(frame)
            else:
                while len(self._frames) == self._frames.maxlen and not self._stop.is_set():
                    self._cond.wait(0.1)   # files: wait for the model, lose nothing
                self._frames.append(frame)
            self.stats.frames_read += 1
            self._cond.notify_all()

    # The consumer side ----------------------------------------------------------------------
    def get(self, timeout: float = 1.0) -> Frame | None:
        """The next frame; None when none arrived within `timeout` (check `finished`)."""
        with self._cond:
            if not self._frames and not self._done:
                self._cond.wait(timeout)
            if self._frames:
                frame = self._frames.popleft()
                self._cond.notify_all()
                return frame
            return None

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._done and not self._frames

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    # For subclasses ---------------------------------------------------------------------------
    def _open(self) -> None:
        """Open the device/file; raise ConnectionError/FileNotFoundError with a clear message."""

    @abstractmethod
    def _read_loop(self) -> None:
        """Read frames until the end or until stopped, handing each to _put()."""

    def _release(self) -> None:
        pass


class CaptureSource(Source):
    """cv2.VideoCapture: camera index, video file or network URL."""

    def __init__(self, target: int | str, name: str, *, live: bool, buffer: int = 4) -> None:
        self.live = live
        super().__init__(name, buffer=buffer)
        self.target = target
        self.cap: cv2.VideoCapture | None = None

    def _open(self) -> None:
        self.cap = cv2.VideoCapture(self.target)
        if not self.cap.isOpened():
            self.cap.release()
            what = f"camera {self.target}" if isinstance(self.target, int) else self.name
            hint = ("check that it is connected and not used by another program (ls /dev/video*)"
                    if isinstance(self.target, int) else "check the path/URL and that OpenCV can decode it")
            raise ConnectionError(f"cannot open {what}: {hint}")
        self.stats.state = "connected"

    def _read_loop(self) -> None:
        index = 0
        corrupt_run = 0
        while not self._stop.is_set():
            grabbed = self.cap.grab()
            if not grabbed:
                if self._at_end(index):
                    break
                corrupt_run += 1
                self.stats.frames_corrupt += 1
                log.warning("%s: frame %d could not be read; skipped", self.name, index)
                index += 1
                if corrupt_run > 100:
                    raise IOError(f"{self.name}: 100 unreadable frames in a row")
                continue
            ok, image = self.cap.retrieve()
            if not ok or image is None or image.size == 0:
                self.stats.frames_corrupt += 1
                log.warning("%s: frame %d could not be decoded; skipped", self.name, index)
            else:
                corrupt_run = 0
                self._put(Frame(index, image, time.time(), self.name))
            index += 1
        self.stats.state = "ended"

    def _at_end(self, index: int) -> bool:
        """A file ends when its position reaches its frame count (or the count is unknown)."""
        if self.live:
            return True
        total = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        return total <= 0 or index >= total - 1

    def _release(self) -> None:
        if self.cap is not None:
            self.cap.release()


class FolderSource(Source):
    """Every image of a folder, sorted by name; unreadable files are skipped and counted."""

    def __init__(self, folder: Path, name: str, *, buffer: int = 4) -> None:
        super().__init__(name, buffer=buffer)
        self.folder = folder

    def _open(self) -> None:
        if not self.folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.folder}")
        self.files = sorted(p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))
        self.stats.state = "connected"

    def _read_loop(self) -> None:
        for index, path in enumerate(self.files):
            if self._stop.is_set():
                break
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                log.warning("%s: skipping %s (not an image file)", self.name, path.name)
                self.stats.frames_corrupt += 1
                continue
            try:
                image = read_image(path)
            except ImageReadError as err:
                self.stats.frames_corrupt += 1
                log.warning("%s: %s; skipped", self.name, err)
                continue
            self._put(Frame(index, image, time.time(), self.name, color="RGB", name=path.name))
        self.stats.state = "ended"


def open_source(spec: str | int | Path) -> Source:
    """Build a source from what a user types: 0, "0", a video path, a folder, or an rtsp/http URL."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return CaptureSource(int(spec), f"camera{int(spec)}", live=True)
    text = str(spec)
    if _URL.match(text):
        return CaptureSource(text, redact(text), live=True)
    path = Path(text)
    if path.is_dir():
        return FolderSource(path, path.name)
    if path.is_file():
        return CaptureSource(str(path), path.name, live=False)
    raise FileNotFoundError(f"source not found: {text} (a camera index, a video file, an image folder, "
                            "or an rtsp:// / http:// URL)")
