"""Frame sources, each read by its own thread, and `open_source` that builds one from what a user types.

Live sources (camera, network stream) keep only the newest frame and count what they drop, so a
slow model never builds up latency. Files, folders and iterables deliver every frame in order.
Every frame is checked on the reader thread: one that cannot be decoded is skipped and counted,
grayscale, 16-bit and 4-channel frames are converted to 8-bit colour, a change of size or format
is logged; nothing is ever replaced by a made-up frame. State changes (connected, reconnecting,
ended, failed) are logged and queued for the pipeline, which hands them to the sinks.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from edge_ad.imaging import (IMAGE_SUFFIXES, MAX_PIXELS_ENV, ImageReadError, ImageTooLargeError, NotAnImageError,
                                  max_image_pixels, read_image, to_rgb_uint8)
from edge_ad.logs import Throttle, escape_controls, redact
from edge_ad.stream.stats import SourceStats

log = logging.getLogger(__name__)

_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https)://", re.IGNORECASE)
ENDED_STATES = ("ended", "failed", "stopped")
FOLDER_RETRIES = 3              # a file that looks still being written is read again up to this many times
FOLDER_RETRY_DELAY_S = 0.2      # the first wait before reading it again; it doubles each time
FOLDER_FRESH_S = 0.5            # a file modified this recently may still be being written


@dataclass
class Frame:
    index: int                 # position in the source (frames dropped by a live source leave gaps)
    image: np.ndarray          # 8-bit, 3 channels, in the order `color` says
    timestamp: float           # time.time() when read
    source: str
    color: str = "BGR"         # BGR for cameras, videos, streams; RGB for folders
    name: str | None = None    # file name, for folder sources


class Source(ABC):
    """Base: a reader thread fills a bounded buffer; `get()` hands frames to the pipeline."""

    live = False
    color = "BGR"

    def __init__(self, name: str, *, buffer: int = 4, max_pixels: int | None = None) -> None:
        # no newline to forge a log or event line, and no secret (escaped first: a control character inside
        # a password must not end the URL token that redaction hides)
        self.name = redact(escape_controls(str(name)))
        self.max_pixels = max_pixels                   # None: $EDGE_AD_MAX_IMAGE_PIXELS or the default
        self._limit = max_image_pixels(max_pixels)
        self.stats = SourceStats()
        self._skips = Throttle(log, interval=10.0, burst=20)
        self._frames: deque[Frame] = deque(maxlen=1 if self.live else max(1, buffer))
        self._events: deque[dict] = deque(maxlen=1000)
        self._cond = threading.Condition()
        self._done = False
        self._stop = threading.Event()
        self._listener: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._format: tuple | None = None

    # The reader thread --------------------------------------------------------------------
    def start(self) -> "Source":
        """Open (raising a clear error for a missing file or camera) and start reading."""
        self._limit = max_image_pixels(self.max_pixels)
        self._open()
        self._thread = threading.Thread(target=self._run, name=f"edge_ad-source-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._read_loop()
            if self.stats.state not in ENDED_STATES:
                self._set_state("stopped" if self._stop.is_set() else "ended")
        except Exception as err:  # noqa: BLE001 - reported through stats, events and the log, never silent
            message = redact(escape_controls(str(err) or type(err).__name__))
            self.stats.errors.append(message)
            self._set_state("failed", error=message, level=logging.ERROR)
        finally:
            self._release()
            with self._cond:
                self._done = True
                self._cond.notify_all()
            self._wake()

    def _set_state(self, state: str, *, level: int = logging.INFO, **fields) -> None:
        """Record a state change: stats, the log, and an event for the sinks."""
        self.stats.state = state
        if state == "failed":
            self.stats.failure = str(fields.get("error") or fields.get("reason") or "failed")
        detail = ", ".join(f"{k}={v}" for k, v in fields.items())
        log.log(level, "source %s: %s%s", self.name, state, f" ({detail})" if detail else "",
                extra={"source": self.name, "state": state})
        self._events.append({"event": "source", "source": self.name, "state": state, "time": time.time(), **fields})
        self._wake()

    def _put(self, image: np.ndarray | None, index: int, name: str | None = None) -> bool:
        """Check/convert a decoded frame and buffer it; False when it was skipped as corrupt."""
        image = self._accept(image, index)
        if image is None:
            return False
        frame = Frame(index, image, time.time(), self.name, color=self.color, name=name)
        with self._cond:
            if self._stop.is_set():
                return True                # stopping: read after the drain began, not handed over, not counted
            if self.live:
                if self._frames:
                    self.stats.frames_dropped += 1
                self._frames.append(frame)
            else:
                while len(self._frames) == self._frames.maxlen and not self._stop.is_set():
                    self._cond.wait(0.1)   # files: wait for the model, lose nothing
                if self._stop.is_set():
                    return True
                self._frames.append(frame)
            self.stats.frames_read += 1
            self._cond.notify_all()
        self._wake()
        return True

    def _accept(self, image: np.ndarray | None, index: int) -> np.ndarray | None:
        """The frame as 8-bit 3-channel `self.color`; None (counted, logged) when it is unusable."""
        if not isinstance(image, np.ndarray) or image.size == 0:
            self._corrupt(index, "empty or undecodable frame")
            return None
        if image.ndim >= 2 and image.shape[0] * image.shape[1] > self._limit:
            self.stats.frames_too_large += 1
            self._corrupt(index, f"{image.shape[1]}x{image.shape[0]} pixels is over the limit of "
                                 f"{self._limit / 1e6:g} MP (raise it with {MAX_PIXELS_ENV}=<pixels>)")
            return None
        fmt = (image.shape, image.dtype.str)
        if fmt != self._format:
            if self._format is not None:
                self.stats.format_changes += 1
                log.warning("source %s: frame %d is %s, the frames before were %s; it is resized and converted "
                            "for the model", self.name, index, _describe(fmt), _describe(self._format),
                            extra={"source": self.name})
            self._format = fmt
            if not (image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
                log.info("source %s: frames are %s; converting them to 8-bit colour", self.name, _describe(fmt),
                         extra={"source": self.name})
        if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            return image
        try:
            rgb = to_rgb_uint8(image, bgr=self.color == "BGR")
        except ValueError as err:
            self._corrupt(index, str(err))
            return None
        self.stats.frames_converted += 1
        return rgb if self.color == "RGB" else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)

    def _corrupt(self, index: int, why: str) -> None:
        """Count and log a skipped frame (at most 20 lines per 10 s per source; the count is exact)."""
        why = redact(escape_controls(why))
        self.stats.frames_corrupt += 1
        self.stats.last_skip = why
        self._skips(logging.WARNING, "source %s: frame %d skipped: %s", self.name, index, why,
                    extra={"source": self.name})

    def _wake(self) -> None:
        if self._listener is not None:
            self._listener.set()

    # The consumer side ----------------------------------------------------------------------
    def attach(self, listener: threading.Event) -> None:
        """`listener` is set whenever a frame or an event arrives, or the source ends."""
        self._listener = listener

    def get(self, timeout: float = 1.0) -> Frame | None:
        """The next frame; None when none arrived within `timeout` (check `finished`)."""
        with self._cond:
            if not self._frames and not self._done and timeout > 0:
                self._cond.wait(timeout)
            if self._frames:
                frame = self._frames.popleft()
                self._cond.notify_all()
                return frame
            return None

    def take_events(self) -> list[dict]:
        """State-change events since the last call."""
        events = []
        while self._events:
            events.append(self._events.popleft())
        return events

    @property
    def buffered(self) -> int:
        """Frames read and not yet taken."""
        with self._cond:
            return len(self._frames)

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._done and not self._frames

    def stop_reading(self) -> None:
        """Read no more frames; those already buffered stay for `get()` (the drain on shutdown)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        self.stop_reading()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            if self._thread.is_alive():
                log.warning("source %s: reader thread still blocked after 10 s; leaving it", self.name)

    # For subclasses ---------------------------------------------------------------------------
    def _open(self) -> None:
        """Open what must exist before streaming; raise ConnectionError/FileNotFoundError clearly."""

    @abstractmethod
    def _read_loop(self) -> None:
        """Read frames until the end or until stopped, handing each to _put()."""

    def _release(self) -> None:
        pass


class FolderSource(Source):
    """Every image of a folder, sorted by name; non-images and unreadable files are skipped and counted.

    The folder is read once: the files it holds when the stream starts (hidden files and sub-folders
    left out), in name order; files added later are not read (start another stream for them). A file
    that cannot be decoded while it looks still being written (its size or time changed while it was
    read, or it was modified in the last 0.5 s and is truncated) is read again up to 3 times (after
    0.2, 0.4, 0.8 s) before it is skipped. An image whose header declares more pixels than the limit
    (`max_pixels`, $EDGE_AD_MAX_IMAGE_PIXELS, default 50 MP) is skipped without being decoded. Every
    skip is counted and logged with the file's name, and the folder goes on with the next file."""

    color = "RGB"

    def __init__(self, folder: Path, name: str, *, buffer: int = 4, max_pixels: int | None = None) -> None:
        super().__init__(name, buffer=buffer, max_pixels=max_pixels)
        self.folder = folder

    def _open(self) -> None:
        if not self.folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.folder}")
        self.files = sorted(p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))
        self._set_state("connected", files=len(self.files))

    def _read_loop(self) -> None:
        for index, path in enumerate(self.files):
            if self._stop.is_set():
                break
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                self._corrupt(index, f"{path.name} is not an image file")
                continue
            image = self._read_file(path, index)
            if image is not None:
                self._put(image, index, name=path.name)

    def _read_file(self, path: Path, index: int) -> np.ndarray | None:
        """The decoded file, or None (counted, logged) when it is unusable after the retries it deserves."""
        delay = FOLDER_RETRY_DELAY_S
        for attempt in range(FOLDER_RETRIES + 1):
            before = _fingerprint(path)
            try:
                image = read_image(path, max_pixels=self._limit)
                if _fingerprint(path) == before:
                    return image
                why, final = f"{path.name} changed while it was read", False
            except ImageTooLargeError as err:
                self.stats.frames_too_large += 1
                self._corrupt(index, str(err))
                return None
            except ImageReadError as err:
                why, final = str(err), isinstance(err, NotAnImageError)
            except MemoryError:
                why, final = f"not enough memory to decode {path.name}", True
            except Exception as err:  # noqa: BLE001 - one bad file must not end the folder
                why, final = f"cannot read {path.name}: {err}", True
            if final or attempt == FOLDER_RETRIES or self._stop.is_set() or not _in_flux(path, before):
                break
            log.info("source %s: %s looks still being written; reading it again in %.1f s", self.name,
                     escape_controls(path.name), delay, extra={"source": self.name})
            self._stop.wait(delay)
            delay *= 2
        self._corrupt(index, why)
        return None


class ImageFileSource(FolderSource):
    """One image file, read like a folder's: header checked against the pixel limit, then decoded
    (not handed to FFmpeg as a one-frame video, which would skip those checks)."""

    def __init__(self, path: Path, *, buffer: int = 4, max_pixels: int | None = None) -> None:
        super().__init__(path.parent, path.name, buffer=buffer, max_pixels=max_pixels)
        self.path = path

    def _open(self) -> None:
        if not self.path.is_file():
            raise FileNotFoundError(f"image not found: {self.path}")
        self.files = [self.path]
        self._set_state("connected", files=1)


def _fingerprint(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, None when it is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _in_flux(path: Path, before: tuple[int, int] | None) -> bool:
    """Whether a file that failed to decode may still be being written: changed, or modified just now."""
    now = _fingerprint(path)
    if now is None:
        return False
    return now != before or time.time() - now[1] / 1e9 < FOLDER_FRESH_S


class IterableSource(Source):
    """Frames from any iterable of numpy arrays: a machine-vision camera SDK, a generator, a list.

    `color` is the order of 3/4-channel frames; any size, 1/3/4 channels, 8/16-bit or float in [0, 1]
    is accepted and converted. With `live=True` only the newest frame is kept, like a camera."""

    def __init__(self, frames: Iterable[np.ndarray], name: str = "frames", *, color: str = "BGR",
                 live: bool = False, buffer: int = 4, max_pixels: int | None = None) -> None:
        if color not in ("BGR", "RGB"):
            raise ValueError(f"color must be 'BGR' or 'RGB', got {color!r}")
        self.live, self.color = live, color
        super().__init__(name, buffer=buffer, max_pixels=max_pixels)
        self.frames = frames

    def _open(self) -> None:
        self._set_state("connected")

    def _read_loop(self) -> None:
        for index, image in enumerate(self.frames):
            if self._stop.is_set():
                break
            self._put(image, index)


def open_source(spec, *, reconnect=None, realtime: bool = False, loop: bool = False, buffer: int = 4,
                max_pixels: int | None = None) -> Source:
    """A source from what a user types: 0 / "0" (camera), a video path, an image folder, an rtsp/http
    URL or a GStreamer pipeline ending in appsink; a Source or an iterable of arrays is used as is.

    `reconnect` (a `Reconnect`) is the retry policy of cameras and network streams; `realtime` paces
    a video file at its frame rate, `loop` replays it (frame indices keep counting); `max_pixels` is
    the largest image or frame accepted (default: $EDGE_AD_MAX_IMAGE_PIXELS or 50 MP)."""
    source = _open_source(spec, reconnect=reconnect, realtime=realtime, loop=loop, buffer=buffer)
    if max_pixels is not None:
        source.max_pixels = max_pixels
    return source


def _open_source(spec, *, reconnect, realtime: bool, loop: bool, buffer: int) -> Source:
    from edge_ad.stream.capture import CameraSource, NetworkSource, Reconnect, VideoFileSource

    if isinstance(spec, Source):
        return spec
    policy = reconnect or Reconnect()
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return CameraSource(int(spec), reconnect=policy)
    if isinstance(spec, (str, Path)):
        text = str(spec)
        if _URL.match(text) or "appsink" in text:
            return NetworkSource(text, reconnect=policy)
        path = Path(text)
        if path.is_dir():
            return FolderSource(path, path.name, buffer=buffer)
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageFileSource(path, buffer=buffer)
        if path.is_file():
            return VideoFileSource(path, realtime=realtime, loop=loop, buffer=buffer)
        raise FileNotFoundError(f"source not found: {redact(escape_controls(text))} (a camera index, a video file, an image "
                                "folder, or an rtsp:// / http:// URL)")
    if isinstance(spec, Iterable):
        return IterableSource(spec, buffer=buffer)
    raise TypeError(f"cannot stream from {type(spec).__name__}: give a camera index, path, URL, Source or iterable")


def _describe(fmt: tuple) -> str:
    shape, dtype = fmt
    channels = 1 if len(shape) == 2 else shape[2]
    return f"{shape[1]}x{shape[0]}, {channels} channel{'s' if channels != 1 else ''}, {np.dtype(dtype).name}"
