"""Logs for streams that run for weeks: plain text or one JSON object per line, secrets redacted.

Every record passes through `redact`, so a camera URL with `user:password@` (or a `password=`
query parameter) never reaches a log file, whoever logged it. Fields given with `extra=` (source,
state, gap_s, ...) become keys of the JSON object, so a log shipper can filter on them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import TextIO

_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")
_SECRET_PARAMS = re.compile(r"([?&;](?:password|passwd|pass|pwd|token|key|auth|secret|apikey)=)[^&\s;]*", re.IGNORECASE)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    """`text` with URL credentials (`user:pass@`) and secret query values replaced by `***`."""
    return _SECRET_PARAMS.sub(r"\1***", _CREDENTIALS.sub(r"\1***@", text))


class RedactFilter(logging.Filter):
    """Formats the message and redacts it in place, before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message and the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _iso(record.created), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


def configure(fmt: str = "text", level: str | int = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Send edge_ad's logs (and the root logger's) to `stream` (stderr) as `fmt` "text" or "json"."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_edge_ad", False)]:
        root.removeHandler(old)
    handler._edge_ad = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (it may be replaced after set-up)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"
