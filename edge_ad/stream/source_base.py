"""The frame source base: a reader thread fills a bounded buffer, the pipeline takes frames from it.

`Source` checks and converts every frame on the reader thread, counts what it skips or drops, and
queues its state changes; `Frame` is what it hands over. The concrete sources build on it: files,
folders and iterables in edge_ad/stream/sources.py, cameras and network streams in capture.py
(both import this module, neither the other's base).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from edge_ad.imaging import MAX_PIXELS_ENV, max_image_pixels, to_rgb_uint8
from edge_ad.logs import Throttle, escape_controls, redact
from edge_ad.regions import Roi, check_roi, parse_roi
from edge_ad.stream.stats import SourceStats

__all__ = ["ENDED_STATES", "Frame", "Source"]

log = logging.getLogger("edge_ad.stream.sources")       # the sources' one logger, as before the split

ENDED_STATES = ("ended", "failed", "stopped")


@dataclass
class Frame:
    index: int                 # position in the source (frames dropped by a live source leave gaps)
    image: np.ndarray          # 8-bit, 3 channels, in the order `color` says
    timestamp: float           # time.time() when read
    source: str
    color: str = "BGR"         # BGR for cameras, videos, streams; RGB for folders
    name: str | None = None    # file name, for folder sources
    roi: Roi | None = None     # the source's region of interest (x, y, w, h) when it entered; None: all of it


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
        self._roi: Roi | None = None

    @property
    def roi(self) -> Roi | None:
        """The region of interest (x, y, w, h) of this source's frames; None: the whole frame. Set it as
        "x,y,w,h" or four numbers (checked at once); each frame is checked to contain it as it enters,
        and a frame it does not fit fails the source, naming both sizes."""
        return self._roi

    @roi.setter
    def roi(self, value) -> None:
        self._roi = None if value is None else parse_roi(value)

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
        roi = self._roi
        if roi is not None:                # a ROI outside the frame is a setting to fix: the source fails
            check_roi(roi, image.shape[0], image.shape[1], where=f"frame {index}: ")
        frame = Frame(index, image, time.time(), self.name, color=self.color, name=name, roi=roi)
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


def _describe(fmt: tuple) -> str:
    shape, dtype = fmt
    channels = 1 if len(shape) == 2 else shape[2]
    return f"{shape[1]}x{shape[0]}, {channels} channel{'s' if channels != 1 else ''}, {np.dtype(dtype).name}"
