"""Logs for streams that run for weeks: plain text or one JSON object per line, secrets redacted.

Every record passes through `redact`, so a camera URL with `user:password@` (or a `password=`
query parameter) never reaches a log file, whoever logged it. Fields given with `extra=` (source,
state, gap_s, ...) become keys of the JSON object, so a log shipper can filter on them. In text
logs, control characters in a message (a newline in a source or file name) are escaped and tracebacks
are indented, so no input can forge a log line; `Throttle` rate-limits an error that repeats.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from typing import TextIO

# URL userinfo: everything between "scheme://" and the LAST "@" of the whitespace-delimited token, so
# a password holding "@", "/", "?" or ":" is hidden whole (a host after an "@" in a path is hidden too:
# over-redacting a log is safe, under-redacting is not).
_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]{0,30}://)\S*@")
# user:password@host without a scheme (GStreamer/ffmpeg arguments, SDK messages).
_BARE_USERINFO = re.compile(r"(?<![\w/:@.%~*+\-])[\w.%~!$*+\-]+:[^\s/\"']*@(?=[\w\[])")
# name=value, name: value, "name": "value" -- the name is checked by _secret_name, the value parsed by _value_end.
_SECRET_PARAMS = re.compile(r"(?<![\w.\-\[\]])(?<!//)([A-Za-z_][\w.\-\[\]]{0,200})([\"']?[ \t]*(?:=|:(?!//))[ \t]*)")
# --password VALUE on a command line.
_SECRET_FLAGS = re.compile(r"(?<!\S)(--?[A-Za-z][\w\-]{0,80})([ \t]+)(?=[^\s\-])")
_BEARER = re.compile(r"\b(Bearer)(\s+)[A-Za-z0-9._~+/=\-]{6,}")
# A name is secret when it contains one of these (any case, any prefix or suffix: access_token,
# X-Amz-Signature, AWSAccessKeyId, user-pw, PHPSESSID, ...) ...
_SECRET_WORDS = ("token", "secret", "pass", "pwd", "auth", "signature", "credential", "cookie", "session", "sessid",
                 "key", "jwt", "bearer", "private")
# ... or has one of these as a whole part (parts split at non-letters): sig=, user-pw=, sid=, otp=, ...
_SECRET_PARTS = ("sig", "pw", "sid", "otp", "pin")
# ... or is a pipeline property that names the account (GStreamer rtspsrc, souphttpsrc).
_SECRET_PROPERTIES = ("user-id", "proxy-id")
_AUTH_SCHEMES = ("bearer", "basic", "digest", "negotiate", "ntlm", "token", "aws4-hmac-sha256")
_BARE_VALUE = re.compile(r"[^\s&\"'\\]*")
_FIELD_VALUE = re.compile(r"[^\s&\"'\\,}\]]*")                 # after a quoted key: a JSON or dict field
_SCHEME_CREDENTIAL = re.compile(r"[ \t]+[^\s&\"'\\]+")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    """`text` with secrets replaced by `***`, by structure rather than by example: all URL userinfo
    (up to the last '@'), and the value of every parameter, property, header, JSON/dict field or
    command-line flag whose name looks like a credential (token, key, secret, pass, pwd, auth, sig,
    signature, credential, session, cookie, ... in any case, with any prefix or suffix), and the
    account properties of GStreamer sources (user-id, proxy-id)."""
    text = text if isinstance(text, str) else str(text)
    text = _redact_pairs(text, _SECRET_PARAMS)        # first: a value holding '@' must not look like userinfo
    text = _redact_pairs(text, _SECRET_FLAGS)
    text = _CREDENTIALS.sub(r"\1***@", text)
    text = _BARE_USERINFO.sub("***@", text)
    return _BEARER.sub(r"\1\2***", text)


def _secret_name(name: str) -> bool:
    """Whether a parameter name looks like a credential's."""
    lower = name.lower()
    if lower in _SECRET_PROPERTIES or any(word in lower for word in _SECRET_WORDS):
        return True
    parts = re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", name).lower())
    return any(part in _SECRET_PARTS for part in parts)


def _redact_pairs(text: str, pattern: re.Pattern) -> str:
    """Replace the value after each `pattern` match (name, separator) whose name is secret."""
    out, pos = [], 0
    while (match := pattern.search(text, pos)) is not None:
        start = match.end()
        if not _secret_name(match.group(1)):
            out.append(text[pos:start])
            pos = start
            continue
        quoted_key = match.group(2)[:1] in "\"'"
        end, wrap = _value_end(text, start, _FIELD_VALUE if quoted_key else _BARE_VALUE)
        if end == start:
            out.append(text[pos:start])
            pos = start
            continue
        wrap = wrap or (match.group(2)[0] if quoted_key else "")          # "key": 5 stays valid JSON
        out.append(f"{text[pos:start]}{wrap}***{wrap}")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _value_end(text: str, start: int, bare: re.Pattern) -> tuple[int, str]:
    """End of the value at `start` and the quote to keep around `***`: a quoted string (backslash
    escapes honoured), a string quoted with escaped quotes (`\\"x y\\"` inside a JSON string), else
    what `bare` matches (up to whitespace, '&', a quote or a backslash; in a JSON field also ',', '}',
    ']'); an auth scheme word takes the credential after it."""
    head = text[start:start + 2]
    if head[:1] in ("\"", "'"):
        return _string_end(text, start), head[0]
    if head in ("\\\"", "\\'"):
        close = text.find(head, start + 2)
        return (len(text) if close < 0 else close + 2), head
    if bare is _FIELD_VALUE and head[:1] in ("[", "{"):
        return _nested_end(text, start), ""
    end = bare.match(text, start).end()
    if text[start:end].lower() in _AUTH_SCHEMES:
        follow = _SCHEME_CREDENTIAL.match(text, end)
        end = follow.end() if follow else end
    return end, ""


def _string_end(text: str, start: int) -> int:
    """End of the quoted string at `start` (backslash escapes honoured; the text's end if unclosed)."""
    quote, i = text[start], start + 1
    while i < len(text) and text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return min(i + 1, len(text))


def _nested_end(text: str, start: int) -> int:
    """End of the JSON/dict list or object at `start` (strings inside skipped)."""
    depth, i = 0, start
    while i < len(text):
        if text[i] in "\"'":
            i = _string_end(text, i)
            continue
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(text[i], 0)
        i += 1
        if depth == 0:
            break
    return i


class RedactFilter(logging.Filter):
    """Formats the message and redacts it in place, before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


def escape_controls(text: str) -> str:
    """`text` with control and format characters (newline, CR, ESC, NUL, bidi overrides, ...) written as
    escapes (`\\n`, `\\x1b`, `\\u202e`), so a name or message cannot start a forged log or event line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch)
    if named:
        return named
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, one line per record: control characters in the message are escaped
    and a traceback's lines are indented, so no text a user controls can start a line of its own."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # another handler's formatter may have cached the traceback unredacted in exc_text: format our own
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - the logging API
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # noqa: N802 - the logging API
        return "\n".join("  | " + escape_controls(line) for line in redact(super().formatException(ei)).splitlines())

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - the logging API
        return "\n".join("  | " + escape_controls(line) for line in redact(stack_info).splitlines())


class Throttle:
    """Rate-limits one kind of repeated error (a full disk, a failing sink): the first `burst` are logged
    at once, then at most one per `interval` seconds, saying how many were left out in between."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0, burst: int = 1) -> None:
        self.logger, self.interval, self.burst = logger, interval, max(1, burst)
        self.count = 0                 # occurrences in all
        self._suppressed = 0
        self._window: float | None = None
        self._in_window = 0
        self._lock = threading.Lock()

    def __call__(self, level: int, message: str, *args, **kwargs) -> bool:
        """Log `message % args` now if the interval has passed (saying how many were left out); True if logged."""
        with self._lock:
            self.count += 1
            now = time.monotonic()
            if self._window is None or now - self._window >= self.interval:
                if self._suppressed:
                    message += (f" ({self._suppressed} more like it were not logged in the last "
                                f"{now - self._window:.0f} s)")
                self._window, self._in_window, self._suppressed = now, 0, 0
            if self._in_window >= self.burst:
                self._suppressed += 1
                return False
            self._in_window += 1
        self.logger.log(level, message, *args, **kwargs)
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
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
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
