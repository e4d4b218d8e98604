"""What a source asks of its camera: resolution, frame rate, exposure, bit depth, how to decode.

Written on the command line as one `--camera` value per `--source` (or one for all of them):

    --source 0 --camera width=1920,height=1080,fps=30,exposure=-6
    --source rtsp://cam/stream --camera decode=auto,codec=h265

and in a station file as the same keys on a camera's table. Resolution, frame rate and exposure are
asked of the capture after it opens (`cv2.VideoCapture.set`), then read back: a camera may refuse
or round what it was asked, so what it actually gives is logged (a warning per refused setting),
sent to the sinks with the source's `connected` event, and asked again after each reconnection (a
camera that was unplugged comes back with its defaults). A video file or an RTSP stream refuses all
three (an IP camera's resolution is set in its own web page): asking anyway checks that it sends what
the line expects. `bit_depth` is the real depth of 16-bit frames (see edge_ad/stream/bit_depth.py);
`decode` and `codec` choose the decoder of H.264/H.265 streams (see edge_ad/stream/hw_decode.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields

import cv2

from edge_ad.imaging import check_bit_depth

__all__ = ["AUTO_EXPOSURE_AUTO", "AUTO_EXPOSURE_MANUAL", "CODECS", "DECODE_MODES", "CameraSettings",
           "apply_settings", "log_settings", "per_source_settings"]

log = logging.getLogger("edge_ad.stream.sources")

DECODE_MODES = ("software", "auto", "hardware")
CODECS = ("h264", "h265")
AUTO_EXPOSURE_MANUAL = 1.0         # V4L2's V4L2_EXPOSURE_MANUAL, which OpenCV's V4L2 backend passes through
AUTO_EXPOSURE_AUTO = 3.0           # V4L2's V4L2_EXPOSURE_APERTURE_PRIORITY (the usual "auto" of UVC cameras)
_AUTO_READBACK = (3.0, 0.75)       # what "auto" reads back as (0.75: the older libv4l/DirectShow convention)
_PROPERTIES = (("width", cv2.CAP_PROP_FRAME_WIDTH), ("height", cv2.CAP_PROP_FRAME_HEIGHT),
               ("fps", cv2.CAP_PROP_FPS), ("exposure", cv2.CAP_PROP_EXPOSURE))
MAX_SIDE = 65535
MAX_FPS = 1000.0


@dataclass(frozen=True)
class CameraSettings:
    """Settings of one source; None: leave the camera's own. `exposure` is a number in the backend's
    units (V4L2: exposure_time_absolute, 100 µs steps; DirectShow: log2 of seconds, e.g. -6 = 1/64 s)
    or "auto". `decode`: software (default), auto or hardware; `codec`: h264 (default) or h265."""

    width: int | None = None
    height: int | None = None
    fps: float | None = None
    exposure: float | str | None = None
    bit_depth: int | None = None
    decode: str | None = None
    codec: str | None = None

    def __post_init__(self) -> None:
        for key in ("width", "height"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_SIDE):
                raise ValueError(f"camera {key} must be a whole number of pixels from 1 to {MAX_SIDE}, got {value!r}")
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, (int, float))
                                     or not math.isfinite(self.fps) or not 0 < self.fps <= MAX_FPS):
            raise ValueError(f"camera fps must be a number above 0 and at most {MAX_FPS:g}, got {self.fps!r}")
        if self.exposure is not None and self.exposure != "auto" and (
                isinstance(self.exposure, bool) or not isinstance(self.exposure, (int, float))
                or not math.isfinite(self.exposure)):
            raise ValueError(f"camera exposure must be a number (in the camera backend's units) or 'auto', got "
                             f"{self.exposure!r}")
        check_bit_depth(self.bit_depth)
        if self.decode is not None and self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        if self.codec is not None and self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {self.codec!r}")

    @classmethod
    def parse(cls, text: str) -> "CameraSettings":
        """`width=1920,height=1080,fps=30,exposure=-6,bit_depth=12,decode=auto,codec=h264` (any subset;
        "" or "-": none). ValueError naming the key and what to give."""
        text = text.strip()
        if text in ("", "-", "none"):
            return cls()
        values: dict[str, object] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            key, value = key.strip().lower().replace("-", "_"), value.strip()
            if not sep or not value:
                raise ValueError(f"camera setting {item.strip()!r} is not KEY=VALUE; give e.g. width=1920,fps=30")
            if key in values:
                raise ValueError(f"camera setting {key} is given twice")
            values[key] = _typed(key, value)
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: dict) -> "CameraSettings":
        """From a dict of setting names to values (a station file's camera table); unknown keys refused."""
        known = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in known]
        if unknown:
            raise ValueError(f"unknown camera setting {unknown[0]!r}; the settings are {', '.join(known)}")
        values = dict(values)
        if isinstance(values.get("exposure"), str):
            values["exposure"] = values["exposure"].strip().lower()
        for key in ("decode", "codec"):
            if isinstance(values.get(key), str):
                values[key] = values[key].strip().lower()
        return cls(**values)

    def merged(self, *, bit_depth: int | None = None, decode: str | None = None) -> "CameraSettings":
        """These settings, with `bit_depth` and `decode` (a whole command's --bit-depth/--decode) filled in
        where they are not set."""
        values = asdict(self)
        values["bit_depth"] = self.bit_depth if self.bit_depth is not None else bit_depth
        values["decode"] = self.decode if self.decode is not None else decode
        return CameraSettings(**values)

    @property
    def empty(self) -> bool:
        return all(v is None for v in asdict(self).values())

    @property
    def asks_capture(self) -> bool:
        """Whether a capture property (size, frame rate, exposure) is asked for."""
        return any(getattr(self, key) is not None for key, _ in _PROPERTIES)

    def text(self) -> str:
        """The settings as `key=value,...` (what `parse` reads)."""
        return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in asdict(self).items()
                        if v is not None)


def _typed(key: str, value: str):
    """A setting's text as the type the setting takes (the dataclass checks ranges)."""
    try:
        if key in ("width", "height", "bit_depth"):
            return int(value, 10)
        if key == "fps":
            return float(value)
        if key == "exposure":
            return value.lower() if value.lower() == "auto" else float(value)
    except ValueError:
        raise ValueError(f"camera setting {key}={value!r} is not a number") from None
    return value


def apply_settings(cap: cv2.VideoCapture, settings: CameraSettings) -> dict:
    """Ask `cap` for the size, frame rate and exposure in `settings` and read them back: {"asked": {...},
    "got": {...}, "refused": [keys], "backend": OpenCV's backend} (empty when nothing is asked)."""
    if not settings.asks_capture:
        return {}
    asked = {key: getattr(settings, key) for key, _ in _PROPERTIES if getattr(settings, key) is not None}
    for key, prop in _PROPERTIES:
        if key in asked:
            _set(cap, key, prop, asked[key])
    got = {key: _get(cap, key) for key in asked}
    refused = [key for key in asked if not _matches(key, asked[key], got[key])]
    return {"asked": asked, "got": got, "refused": refused, "backend": _backend(cap)}


def log_settings(report: dict, source: str) -> None:
    """Log an `apply_settings` report: a warning per refused setting (what the capture gives instead),
    one line for those it took."""
    asked, got, backend = report.get("asked", {}), report.get("got", {}), report.get("backend", "")
    for key in report.get("refused", []):
        unsupported = " (the backend may not support it)" if got[key] in (0.0, -1.0) else ""
        log.warning("source %s refused %s=%s: it gives %s%s [%s]", source, key, _shown(asked[key]),
                    _shown(got[key]), unsupported, backend, extra={"source": source})
    kept = [key for key in asked if key not in report.get("refused", [])]
    if kept:
        log.info("source %s: camera settings as asked: %s [%s]", source,
                 ", ".join(f"{k}={_shown(got[k])}" for k in kept), backend, extra={"source": source})


def _set(cap: cv2.VideoCapture, key: str, prop: int, value) -> bool:
    """One property asked of the capture; False when it said no (or raised: some backends do)."""
    try:
        if key == "exposure":
            if value == "auto":
                return bool(cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, AUTO_EXPOSURE_AUTO))
            cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, AUTO_EXPOSURE_MANUAL)    # a manual exposure needs manual mode
        return bool(cap.set(prop, float(value)))
    except cv2.error:
        return False


def _get(cap: cv2.VideoCapture, key: str):
    """What the capture reports for a setting: a number, or for exposure "auto" the mode it is in."""
    try:
        if key == "exposure" and _asks_auto(cap):
            return "auto"
        value = float(cap.get(dict(_PROPERTIES)[key]))
    except cv2.error:
        return None
    if not math.isfinite(value):
        return None
    return int(round(value)) if key in ("width", "height") else value


def _asks_auto(cap: cv2.VideoCapture) -> bool:
    mode = float(cap.get(cv2.CAP_PROP_AUTO_EXPOSURE))
    return any(abs(mode - auto) < 1e-6 for auto in _AUTO_READBACK)


def _matches(key: str, asked, got) -> bool:
    if got is None:
        return False
    if key == "exposure" and (asked == "auto" or got == "auto"):
        return asked == got
    if key in ("width", "height"):
        return int(asked) == got
    return abs(float(asked) - float(got)) <= max(0.01 * abs(float(asked)), 0.01)


def _shown(value) -> str:
    if value is None:
        return "nothing (it does not report it)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _backend(cap: cv2.VideoCapture) -> str:
    try:
        return cap.getBackendName()
    except cv2.error:
        return "unknown backend"


def per_source_settings(texts: list[str] | None, sources: int, *, bit_depth: int | None = None,
                        decode: str | None = None) -> list[CameraSettings | None]:
    """The `--camera` values (none, one for every source, or one per --source in order) with the whole
    command's --bit-depth and --decode filled in: one CameraSettings per source, None where nothing is
    set (that source is opened exactly as before)."""
    texts = texts or []
    if len(texts) > 1 and len(texts) != sources:
        raise ValueError(f"--camera was given {len(texts)} times for {sources} --source(s): give one for every "
                         "source, or one per --source in the same order ('-' for a source left as it is)")
    parsed = [CameraSettings.parse(t) for t in texts] or [CameraSettings()]
    each = parsed * sources if len(parsed) == 1 else parsed
    merged = [s.merged(bit_depth=bit_depth, decode=decode) for s in each]
    return [None if s.empty else s for s in merged]
