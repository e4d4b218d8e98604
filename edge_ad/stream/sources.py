"""Frame sources, each read by its own thread, and `open_source` that builds one from what a user types.

This module holds the file, folder and iterable sources and `open_source`; the `Source` base and
`Frame` are in source_base.py, cameras and network streams in capture.py.

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
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from edge_ad.imaging import (IMAGE_SUFFIXES, DepthUsed, ImageReadError, ImageTooLargeError, NotAnImageError,
                             read_image_depth)
from edge_ad.logs import escape_controls, redact
from edge_ad.stream.bit_depth import ScalesDepth, shallow_hint
from edge_ad.stream.camera_settings import CameraSettings
from edge_ad.stream.capture import CameraSource, NetworkSource, Reconnect, VideoFileSource
from edge_ad.stream.source_base import ENDED_STATES, Frame, Source

__all__ = ["ENDED_STATES", "FolderSource", "Frame", "ImageFileSource", "IterableSource", "Source", "open_source"]

log = logging.getLogger(__name__)

_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https)://", re.IGNORECASE)
FOLDER_RETRIES = 3              # a file that looks still being written is read again up to this many times
FOLDER_RETRY_DELAY_S = 0.2      # the first wait before reading it again; it doubles each time
FOLDER_FRESH_S = 0.5            # a file modified this recently may still be being written


class FolderSource(ScalesDepth, Source):
    """Every image of a folder, sorted by name; non-images and unreadable files are skipped and counted.

    The folder is read once: the files it holds when the stream starts (hidden files and sub-folders
    left out), in name order; files added later are not read (start another stream for them). A file
    that cannot be decoded while it looks still being written (its size or time changed while it was
    read, or it was modified in the last 0.5 s and is truncated) is read again up to 3 times (after
    0.2, 0.4, 0.8 s) before it is skipped. An image whose header declares more pixels than the limit
    (`max_pixels`, $EDGE_AD_MAX_IMAGE_PIXELS, default 50 MP) is skipped without being decoded. Every
    skip is counted and logged with the file's name, and the folder goes on with the next file.

    16-bit files are scaled by `bit_depth` when set, else by the depth each file declares, else as
    16-bit; a 16-bit file whose values fit in far fewer bits gets a hint, once (see bit_depth.py)."""

    color = "RGB"

    def __init__(self, folder: Path, name: str, *, buffer: int = 4, max_pixels: int | None = None,
                 bit_depth: int | None = None) -> None:
        super().__init__(name, buffer=buffer, max_pixels=max_pixels)
        self.folder = folder
        self.bit_depth = bit_depth
        self._hinted = False

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
                image, used = read_image_depth(path, max_pixels=self._limit, bit_depth=self.bit_depth)
                if _fingerprint(path) == before:
                    self._depth_hint(used, path)
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


    def _depth_hint(self, used: DepthUsed, path: Path) -> None:
        """Once per source: a 16-bit file scaled as 16-bit whose values fit in far fewer bits."""
        if self._hinted or used.how != "word" or used.depth != 16:
            return
        hint = shallow_hint(used.max_value, f"the samples of {escape_controls(path.name)}")
        if hint:
            self._hinted = True
            log.warning("source %s: %s (and the file declares no depth)", self.name, hint, extra={"source": self.name})


class ImageFileSource(FolderSource):
    """One image file, read like a folder's: header checked against the pixel limit, then decoded
    (not handed to FFmpeg as a one-frame video, which would skip those checks)."""

    def __init__(self, path: Path, *, buffer: int = 4, max_pixels: int | None = None,
                 bit_depth: int | None = None) -> None:
        super().__init__(path.parent, path.name, buffer=buffer, max_pixels=max_pixels, bit_depth=bit_depth)
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


class IterableSource(ScalesDepth, Source):
    """Frames from any iterable of numpy arrays: a machine-vision camera SDK, a generator, a list.

    `color` is the order of 3/4-channel frames; any size, 1/3/4 channels, 8/16-bit or float in [0, 1]
    is accepted and converted. With `live=True` only the newest frame is kept, like a camera.
    `bit_depth`: the camera's real depth when it delivers 16-bit words (12 for Mono12; see bit_depth.py)."""

    def __init__(self, frames: Iterable[np.ndarray], name: str = "frames", *, color: str = "BGR",
                 live: bool = False, buffer: int = 4, max_pixels: int | None = None,
                 bit_depth: int | None = None) -> None:
        if color not in ("BGR", "RGB"):
            raise ValueError(f"color must be 'BGR' or 'RGB', got {color!r}")
        self.live, self.color = live, color
        super().__init__(name, buffer=buffer, max_pixels=max_pixels)
        self.frames = frames
        self.bit_depth = bit_depth

    def _open(self) -> None:
        self._set_state("connected")

    def _read_loop(self) -> None:
        for index, image in enumerate(self.frames):
            if self._stop.is_set():
                break
            self._put(image, index)


def open_source(spec, *, reconnect=None, realtime: bool = False, loop: bool = False, buffer: int = 4,
                max_pixels: int | None = None, settings: CameraSettings | None = None,
                transport: str | None = None) -> Source:
    """A source from what a user types: 0 / "0" (camera), a video path, an image folder, an rtsp/http
    URL or a GStreamer pipeline ending in appsink; a Source or an iterable of arrays is used as is.

    `reconnect` (a `Reconnect`) is the retry policy of cameras and network streams; `realtime` paces
    a video file at its frame rate, `loop` replays it (frame indices keep counting); `max_pixels` is
    the largest image or frame accepted (default: $EDGE_AD_MAX_IMAGE_PIXELS or 50 MP). `settings`
    (a `CameraSettings`) is what to ask of a camera, file or stream (folders and images take only
    its bit_depth); `transport` ("tcp"/"udp") that of an RTSP stream."""
    source = _open_source(spec, reconnect=reconnect, realtime=realtime, loop=loop, buffer=buffer, settings=settings,
                          transport=transport)
    if max_pixels is not None:
        source.max_pixels = max_pixels
    return source


def _open_source(spec, *, reconnect, realtime: bool, loop: bool, buffer: int, settings: CameraSettings | None,
                 transport: str | None) -> Source:
    if isinstance(spec, Source):
        if (settings is not None and not settings.empty) or transport is not None:
            raise ValueError(f"source {spec.name} is already built: give its settings and transport to its own "
                             "constructor")
        return spec
    policy = reconnect or Reconnect()
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        _no_transport(transport, f"camera {spec}")
        return CameraSource(int(spec), reconnect=policy, settings=settings)
    if isinstance(spec, (str, Path)):
        text = str(spec)
        if _URL.match(text) or "appsink" in text:
            return NetworkSource(text, reconnect=policy, transport=transport, settings=settings)
        _no_transport(transport, redact(escape_controls(text)))
        path = Path(text)
        if path.is_dir():
            return FolderSource(path, path.name, buffer=buffer, bit_depth=_depth_only(settings, path.name))
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageFileSource(path, buffer=buffer, bit_depth=_depth_only(settings, path.name))
        if path.is_file():
            return VideoFileSource(path, realtime=realtime, loop=loop, buffer=buffer, settings=settings)
        raise FileNotFoundError(f"source not found: {redact(escape_controls(text))} (a camera index, a video file, an image "
                                "folder, or an rtsp:// / http:// URL)")
    if isinstance(spec, Iterable):
        _no_transport(transport, "an iterable of frames")
        return IterableSource(spec, buffer=buffer, bit_depth=_depth_only(settings, "an iterable of frames"))
    raise TypeError(f"cannot stream from {type(spec).__name__}: give a camera index, path, URL, Source or iterable")


def _depth_only(settings: CameraSettings | None, what: str) -> int | None:
    """The bit depth of settings given to images or arrays, which have no capture to ask anything else of."""
    if settings is None:
        return None
    others = [k for k, v in vars(settings).items() if v is not None and k != "bit_depth"]
    if others:
        raise ValueError(f"{escape_controls(what)}: {', '.join(others)} can be asked of a camera, a video file or a "
                         "stream, not of image files or arrays (they take only bit_depth)")
    return settings.bit_depth


def _no_transport(transport: str | None, what: str) -> None:
    if transport is not None:
        raise ValueError(f"{what}: an RTSP transport ({transport}) goes with rtsp:// URLs only")
