"""Sources read through cv2.VideoCapture: video files, cameras, and network streams that come back.

A network stream (RTSP/HTTP/RTMP, or a GStreamer pipeline) that stops is reopened with exponential
back-off up to a cap; its state goes connected -> reconnecting -> connected (the gap is logged,
counted and sent to the sinks) or -> failed once the retry budget is spent. A camera that is
unplugged is retried the same way. A camera that stalls with its connection still open is caught by
the read time-out (`Reconnect.timeout`): one read that waited that long is a lost connection (so the
time-out must be longer than the camera's frame interval). A file that ends ends its source (unless `loop`).

RTSP transport, per source: `rtsp://host/path?rtsp_transport=tcp` (or `udp`), or
`NetworkSource(url, transport="tcp")`. Without it FFmpeg tries TCP first and falls back to UDP
(OpenCV's default). See `ffmpeg_options` for how it stays per source.

Every capture takes `settings` (a `CameraSettings`): the resolution, frame rate and exposure asked of
it after each (re)opening and read back (camera_settings.py), the real depth of 16-bit frames
(bit_depth.py), and the decoder of H.264/H.265 streams (hw_decode.py: software by default).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from edge_ad.imaging import MAX_PIXELS_ENV
from edge_ad.logs import escape_controls, redact_source_url
from edge_ad.stream.bit_depth import ScalesDepth
from edge_ad.stream.camera_settings import CameraSettings, apply_settings, log_settings
from edge_ad.stream.hw_decode import (SOFTWARE, DecodePlan, HardwareDecodeUnavailable, acceleration_in_use,
                                      choose_decoder, source_kind)
from edge_ad.stream.source_base import Source

log = logging.getLogger(__name__)

MAX_CORRUPT_RUN = 100
LOST_AFTER = 3                 # failed reads in a row that mean a lost connection, not a broken frame
STALLED_AT = 0.95              # a read that waited this share of the read time-out: the camera stalled
TRANSPORTS = ("tcp", "udp")    # RTSP lower transports a source can ask for
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_TRANSPORT_PARAM = re.compile(r"([?&])rtsp_transport=([^&#]*)", re.IGNORECASE)


@dataclass(frozen=True)
class Reconnect:
    """Retry policy: wait `initial` s, then `factor` times longer each failure, at most `cap` s; give up
    after `budget` failed attempts in a row (None: never, the default for a line that runs 24/7)."""

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    budget: int | None = None
    timeout: float = 5.0          # seconds to open a network stream, and to wait for one frame

    def __post_init__(self) -> None:
        numbers = (self.initial, self.factor, self.cap, self.timeout)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in numbers) \
                or self.timeout <= 0:
            raise ValueError(f"bad retry policy {self}: initial, factor, cap and timeout must be finite numbers "
                             "(timeout > 0)")
        if self.initial <= 0 or self.factor < 1 or self.cap < self.initial:
            raise ValueError(f"bad retry policy {self}: need initial > 0, factor >= 1, cap >= initial")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"retry budget must be >= 0 or None, got {self.budget}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1, 2, ...). The exponent stops growing
        once the cap is reached, so a camera down for days (thousands of attempts) never overflows."""
        if self.factor == 1:
            return min(self.cap, self.initial)
        steps = min(max(attempt - 1, 0), math.ceil(math.log(self.cap / self.initial, self.factor)) + 1)
        return min(self.cap, self.initial * self.factor ** steps)


class CaptureSource(ScalesDepth, Source):
    """Common part: a cv2.VideoCapture on `target`, released when the reader ends; `settings` asked of it
    after each opening (and reported with the `connected` event), its decoder chosen by `decode`."""

    def __init__(self, target: int | str, name: str, *, buffer: int = 4,
                 settings: CameraSettings | None = None) -> None:
        super().__init__(name, buffer=buffer)
        self.target = target
        self.cap: cv2.VideoCapture | None = None
        self.settings = settings or CameraSettings()
        self.bit_depth = self.settings.bit_depth
        self.settings_report: dict = {}          # what the last opening asked and got (camera_settings.py)
        self.decoder = self._plan()              # HardwareDecodeUnavailable now, not once streaming
        self._decode_said = False

    def _plan(self) -> DecodePlan:
        return choose_decoder(str(self.target), self.settings.decode, kind=source_kind(self.target),
                              codec=self.settings.codec)

    def _capture(self) -> cv2.VideoCapture:
        if self.decoder.kind == SOFTWARE:
            return cv2.VideoCapture(self.target)
        with ffmpeg_options(self.decoder.options or None):
            return cv2.VideoCapture(self.decoder.target, self.decoder.api, list(self.decoder.params))

    def _open_capture(self) -> cv2.VideoCapture:
        """`_capture()`, and once it is open: the decoder checked (HardwareDecodeUnavailable when a required
        one is not used: the source fails, it is not retried), the settings asked and read back (logged
        when they differ from the last opening's: a file replayed by `loop` says it once)."""
        cap = self._capture()
        if cap.isOpened():
            try:
                self._check_decoder(cap)
            except BaseException:
                cap.release()
                raise
            if self.settings.asks_capture:
                report = apply_settings(cap, self.settings)
                if report != self.settings_report:
                    log_settings(report, self.name)
                self.settings_report = report
        return cap

    def _check_decoder(self, cap: cv2.VideoCapture) -> None:
        """Say once which decoder reads this source; a required hardware decoder that FFmpeg did not use
        (it fell back to software) is HardwareDecodeUnavailable."""
        plan = self.decoder
        used = acceleration_in_use(cap) if plan.hardware and plan.api == cv2.CAP_FFMPEG else ""
        if used == "none" and plan.required:
            raise HardwareDecodeUnavailable(
                f"{self.name}: hardware decoding was asked (decode=hardware) but OpenCV's FFmpeg decodes this stream "
                "in software: the FFmpeg inside this OpenCV has no NVDEC/CUDA decoder (pip's opencv-python wheels "
                "have none); use decode=auto or decode=software, or an OpenCV built with a CUDA-enabled FFmpeg")
        if self._decode_said or not (plan.note or plan.hardware):
            return
        self._decode_said = True
        if plan.kind == SOFTWARE:
            log.info("source %s: %s", self.name, plan.note, extra={"source": self.name})
        elif used == "none":
            log.info("source %s: decoding in software: OpenCV's FFmpeg did not take the NVIDIA decoder (no "
                     "NVDEC/CUDA in its FFmpeg)", self.name, extra={"source": self.name})
        else:
            log.info("source %s: decoder %s%s%s", self.name, plan.kind, f" ({used})" if used else "",
                     f": {plan.note}" if plan.note else "", extra={"source": self.name})

    def _connected_fields(self) -> dict:
        """The settings report and the decoder, for the `connected` event (only what is set)."""
        fields: dict = {}
        if self.settings_report:
            fields["settings"] = self.settings_report
        if self.decoder.hardware:
            fields["decoder"] = self.decoder.kind
        return fields

    def _oversized(self, cap: cv2.VideoCapture) -> str:
        """Why `cap`'s frames are refused ("has WxH frames, over the limit ..."), from the size it declares
        before a frame is retrieved; "" when within the pixel limit (or when it declares no size)."""
        width = _dimension(cap, cv2.CAP_PROP_FRAME_WIDTH)
        height = _dimension(cap, cv2.CAP_PROP_FRAME_HEIGHT)
        if width * height <= self._limit:
            return ""
        return (f"has {width}x{height} frames, over the limit of {self._limit / 1e6:g} MP; not decoded "
                f"(raise the limit with --max-pixels or {MAX_PIXELS_ENV}=<pixels>)")

    def _release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class VideoFileSource(CaptureSource):
    """Every frame of a video file in order. `realtime` paces it at its own frame rate (a recording
    replayed as if it were a camera, frames still never dropped); `loop` replays it from the start."""

    def __init__(self, path: str | Path, *, realtime: bool = False, loop: bool = False, buffer: int = 4,
                 settings: CameraSettings | None = None) -> None:
        super().__init__(str(path), Path(path).name, buffer=buffer, settings=settings)
        self.realtime, self.loop = realtime, loop

    def _open(self) -> None:
        self.cap = self._open_capture()
        if not self.cap.isOpened():
            self.cap.release()
            raise ConnectionError(f"cannot open {self.name}: check the path and that OpenCV can decode it")
        self._set_state("connected", frames=int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
                        **self._connected_fields())

    def _read_loop(self) -> None:
        self._check_size()
        index = 0
        fps = frame_rate(self.cap)
        while not self._stop.is_set():
            start, read = time.monotonic(), self._read_pass(index, fps)
            index += read
            if not self.loop or self._stop.is_set() or read == 0:
                break
            self.cap.release()
            self.cap = self._open_capture()
            log.info("source %s: looping after %d frames (%.0f s)", self.name, read, time.monotonic() - start,
                     extra={"source": self.name})

    def _check_size(self) -> None:
        """Refuse a video whose frames are over the pixel limit before decoding one (the source fails)."""
        problem = self._oversized(self.cap)
        if problem:
            raise ValueError(f"{self.name} {problem}")

    def _read_pass(self, first: int, fps: float) -> int:
        """One pass over the file; returns the number of frame positions it covered."""
        total = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        start, position, corrupt_run = time.monotonic(), 0, 0
        while not self._stop.is_set():
            if self.realtime:
                self._stop.wait(max(0.0, start + position / fps - time.monotonic()))
            if not self.cap.grab():
                if total <= 0 or position >= total - 1:
                    break                                   # the end of the file
                self._corrupt(first + position, "could not be read")
                corrupt_run += 1
                position += 1
                if corrupt_run > MAX_CORRUPT_RUN:
                    raise IOError(f"{self.name}: {MAX_CORRUPT_RUN} unreadable frames in a row")
                continue
            ok, image = self.cap.retrieve()
            if self._put(image if ok else None, first + position):
                corrupt_run = 0
            position += 1
        return position


class _LiveCapture(CaptureSource):
    """Newest frame only; a lost device or stream is reopened by the `Reconnect` policy."""

    live = True

    def __init__(self, target: int | str, name: str, *, reconnect: Reconnect | None = None,
                 settings: CameraSettings | None = None) -> None:
        self.policy = reconnect or Reconnect()
        super().__init__(target, name, buffer=1, settings=settings)
        self._lost_at: float | None = None

    def _read_loop(self) -> None:
        index, failed, oversized = 0, 0, 0
        while not self._stop.is_set():
            if self.cap is None and not self._reconnect():
                return
            started = time.monotonic()
            grabbed = self.cap.grab()
            waited = time.monotonic() - started
            if waited >= STALLED_AT * self.policy.timeout:
                # the read time-out fired: the camera sends nothing, its connection still open (a frame
                # grabbed now is one the decoder still held, from before the stall: not delivered)
                self._lose(f"no new frame for {waited:.1f} s (read time-out {self.policy.timeout:g} s): the camera "
                           "stalled with its connection open")
                failed = 0
                continue
            if not grabbed:
                failed += 1                     # a broken frame, or the end of the connection
                if failed >= LOST_AFTER:
                    self._lose("no frame: the stream stopped or the connection was lost")
                    failed = 0
                continue
            for k in range(failed):             # the stream went on: those were broken frames
                self._corrupt(index + k, "could not be decoded")
            index, failed = index + failed, 0
            problem = self._oversized(self.cap)
            if problem:                         # the stream changed size after connecting: not converted
                self.stats.frames_too_large += 1
                self._corrupt(index, f"the frame {problem}")
                index += 1
                oversized += 1
                if oversized >= LOST_AFTER:     # it stays so: reconnect, where the size is checked again
                    self._lose(f"the stream {problem}")
                    oversized = 0
                continue
            oversized = 0
            ok, image = self.cap.retrieve()
            self._put(image if ok else None, index)
            index += 1

    def _lose(self, why: str) -> None:
        self._release()
        self._lost_at = time.time()
        self.stats.errors.append(why)
        self._set_state("reconnecting", reason=why, level=logging.WARNING)

    def _reconnect(self) -> bool:
        """Open again, backing off between attempts; False when stopped or the budget is spent."""
        attempt = 0
        while not self._stop.is_set():
            cap = self._open_capture()
            why = "cannot connect"
            if cap.isOpened():
                problem = self._oversized(cap)      # a hostile server's 268 MP frames: refused before decoding
                if not problem:
                    self.cap = cap
                    self._connected(attempt + 1)
                    return True
                why = f"connected, but the stream {problem}"
                self.stats.frames_too_large += 1
                self.stats.errors.append(why)
            cap.release()
            attempt += 1
            if self.policy.budget is not None and attempt > self.policy.budget:
                self._set_state("failed", attempts=attempt, level=logging.ERROR,
                                error=f"no usable connection after {attempt} attempts (retry budget "
                                      f"{self.policy.budget}); last: {why}")
                return False
            delay = self.policy.delay(attempt)
            if self.stats.state != "reconnecting":
                self._set_state("reconnecting", reason=why, level=logging.WARNING)
            log.warning("source %s: %s (attempt %d); next try in %.1f s", self.name, why, attempt, delay,
                        extra={"source": self.name, "attempt": attempt})
            self._stop.wait(delay)
        return False

    def _connected(self, attempts: int) -> None:
        if self._lost_at is None:
            self._set_state("connected", attempts=attempts, **self._connected_fields())
            return
        gap = time.time() - self._lost_at
        self.stats.reconnects += 1
        self.stats.gap_seconds += gap
        self.stats.gaps.append({"from": round(self._lost_at, 3), "seconds": round(gap, 3), "attempts": attempts})
        self._lost_at = None
        self._set_state("connected", gap_s=round(gap, 3), attempts=attempts, reconnects=self.stats.reconnects,
                        level=logging.WARNING, **self._connected_fields())


class CameraSource(_LiveCapture):
    """A local camera by index (V4L2 on Linux). It must open at start; later losses are retried."""

    def __init__(self, index: int, *, reconnect: Reconnect | None = None,
                 settings: CameraSettings | None = None) -> None:
        super().__init__(index, f"camera{index}", reconnect=reconnect, settings=settings)

    def _open(self) -> None:
        self.cap = self._open_capture()
        if not self.cap.isOpened():
            self.cap.release()
            self.cap = None
            raise ConnectionError(f"cannot open camera {self.target}: check that it is connected and not used "
                                  "by another program (ls /dev/video*)")
        problem = self._oversized(self.cap)
        if problem:
            self.cap.release()
            self.cap = None
            raise ConnectionError(f"camera {self.target} {problem}")
        self._set_state("connected", **self._connected_fields())


class NetworkSource(_LiveCapture):
    """An RTSP/HTTP(S)/RTMP URL through FFmpeg, or a GStreamer pipeline (`... ! appsink`), with open
    and read time-outs so a silent server is noticed. It connects on its reader thread, so a camera
    that is down at start is retried instead of stopping the other sources. Credentials in the URL
    appear nowhere: the source's name is the URL with its userinfo and every query value hidden
    (`edge_ad.logs.redact_source_url`). On each (re)connection the frame size the stream declares is
    checked against the pixel limit before a frame is decoded; an oversized stream is a failed attempt.

    `transport` ("tcp" or "udp"; or `?rtsp_transport=tcp|udp` in the URL, removed before the URL is
    opened) fixes an RTSP stream's transport: TCP for a lossy network or a firewall, UDP for the
    lowest latency. None: FFmpeg tries TCP first, then UDP."""

    def __init__(self, url: str, *, reconnect: Reconnect | None = None, transport: str | None = None,
                 settings: CameraSettings | None = None) -> None:
        self.url, self.transport = rtsp_transport(url, transport)
        super().__init__(url, redact_source_url(escape_controls(url)), reconnect=reconnect, settings=settings)
        self._open_msec = int(self.policy.timeout * 1000)

    def _plan(self) -> DecodePlan:
        return choose_decoder(self.url, self.settings.decode, kind=source_kind(self.url), codec=self.settings.codec,
                              transport=self.transport)

    def _capture(self) -> cv2.VideoCapture:
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self._open_msec, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self._open_msec]
        if "appsink" in str(self.target):
            return cv2.VideoCapture(self.target, cv2.CAP_GSTREAMER)
        if self.decoder.api == cv2.CAP_GSTREAMER:                 # the Jetson's NVDEC pipeline (unverified)
            return cv2.VideoCapture(self.decoder.target, cv2.CAP_GSTREAMER, timeouts)
        options = {"rtsp_transport": self.transport} if self.transport else {}
        options.update(self.decoder.options)
        with ffmpeg_options(options or None):
            return cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, timeouts + list(self.decoder.params))


def rtsp_transport(url: str, transport: str | None = None) -> tuple[str, str | None]:
    """(the URL to open, the RTSP transport or None): `?rtsp_transport=tcp|udp` is taken out of the URL
    (FFmpeg has no such URL option; OpenCV takes it only as a capture option) and checked against
    `transport`. ValueError for an unknown transport, two that disagree, or one on a URL that is not RTSP."""
    if transport is not None and not isinstance(transport, str):
        raise ValueError(f"transport must be 'tcp', 'udp' or None, got {transport!r}")
    asked = {transport.lower()} if transport is not None else set()
    while (match := _TRANSPORT_PARAM.search(url)) is not None:
        asked.add(match.group(2).lower())
        rest = url[match.end():]
        if match.group(1) == "?":
            rest = "?" + rest[1:] if rest.startswith("&") else rest
        url = url[:match.start()] + rest
    if not asked:
        return url, None
    shown = redact_source_url(escape_controls(url))
    if len(asked) > 1 or not asked <= set(TRANSPORTS):
        raise ValueError(f"{shown}: rtsp_transport must be one of {', '.join(TRANSPORTS)} (once), got "
                         f"{', '.join(sorted(asked))}")
    if not url.lower().startswith(("rtsp://", "rtsps://")):
        raise ValueError(f"{shown}: rtsp_transport applies to rtsp:// URLs only")
    return url, asked.pop()


class _EnvSetting:
    """OPENCV_FFMPEG_CAPTURE_OPTIONS for the captures being opened: those that need the same value open
    together; one that needs another value waits until they are open. OpenCV reads the variable only
    while a capture opens (there is no per-capture way to give FFmpeg options), so setting it around
    each open, under this gate, keeps an option to its own source. The user's own value is extended,
    never lost, and restored when no open is in progress."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._base: str | None = None             # the user's value (None: unset) while opens are in progress
        self._value: str | None = None            # the value set for them
        self._users = 0

    @contextmanager
    def holding(self, options: dict[str, str] | None) -> Iterator[None]:
        with self._cond:
            while True:
                base = self._base if self._users else os.environ.get(FFMPEG_OPTIONS_ENV)
                value = _merged_options(base, options) if options else base
                if self._users == 0 or self._value == value:
                    break
                self._cond.wait()
            if self._users == 0:
                self._base, self._value = base, value
                _set_env(value)
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                if self._users == 0:
                    _set_env(self._base)
                    self._cond.notify_all()


_ENV_SETTING = _EnvSetting()


def ffmpeg_options(options: dict[str, str] | None):
    """A context in which a capture opened by FFmpeg gets `options` (None: the user's own, or OpenCV's
    defaults); see `_EnvSetting`."""
    return _ENV_SETTING.holding(options)


def _merged_options(base: str | None, options: dict[str, str]) -> str:
    """The `key;value|key;value` text OpenCV reads: `base` (the user's setting) with `options` added or
    replacing the same keys. Without a base, OpenCV's own default (`rtsp_flags;prefer_tcp`) is kept."""
    pairs: dict[str, str] = {}
    for item in (base if base is not None else "rtsp_flags;prefer_tcp").split("|"):
        key, sep, value = item.partition(";")
        if key and sep:
            pairs[key] = value
    pairs.update(options)
    return "|".join(f"{k};{v}" for k, v in pairs.items())


def _set_env(value: str | None) -> None:
    if value is None:
        os.environ.pop(FFMPEG_OPTIONS_ENV, None)
    else:
        os.environ[FFMPEG_OPTIONS_ENV] = value


def frame_rate(cap: cv2.VideoCapture, default: float = 25.0) -> float:
    """The capture's frame rate, or `default` when it does not say."""
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if np.isfinite(fps) and 0 < fps < 1000 else default


def _dimension(cap: cv2.VideoCapture, prop: int) -> int:
    """A frame dimension the capture declares (0 when it does not say, or says nonsense)."""
    value = float(cap.get(prop) or 0.0)
    return int(value) if math.isfinite(value) and value > 0 else 0
