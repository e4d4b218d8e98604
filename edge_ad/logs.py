"""Logs for streams that run for weeks: plain text or one JSON object per line, secrets redacted.

Every record passes through `redact`, so a camera URL with `user:password@` (or a `password=`
query parameter) never reaches a log file, whoever logged it. Fields given with `extra=` (source,
state, gap_s, ...) become keys of the JSON object, so a log shipper can filter on them. In text
logs, control characters in a message (a newline in a source or file name) are escaped and tracebacks
are indented, so no input can forge a log line; `Throttle` rate-limits an error that repeats.

Structured data (an event, a summary) is redacted with `redact_value`, string by string BEFORE it is
serialised: redacting serialised JSON text could cut a line open (a file named `token=".png`) or
replace a whole object whose key only looked like a credential's. A network source's name is
`redact_source_url(url)`: every query value is hidden, whatever its name (see there).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
from typing import TextIO
from urllib.parse import unquote

# URL userinfo: everything between "scheme://" and the LAST "@" of the whitespace-delimited token, so
# a password holding "@", "/", "?" or ":" is hidden whole (a host after an "@" in a path is hidden too:
# over-redacting a log is safe, under-redacting is not).
_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]{0,30}://)\S*@")
# user:password@host without a scheme (GStreamer/ffmpeg arguments, SDK messages).
_BARE_USERINFO = re.compile(r"(?<![\w/:@.%~*+\-])[\w.%~!$*+\-]+:[^\s/\"']*@(?=[\w\[])")
# name=value, name: value, "name": "value" -- the name is checked by secret_name (and _secret_at), the value
# parsed by _value_end.
_SECRET_PARAMS = re.compile(r"(?<![\w.\-\[\]])(?<!//)([A-Za-z_][\w.\-\[\]]{0,200})([\"']?[ \t]*(?:=|:(?!//))[ \t]*)")
# --password VALUE on a command line.
_SECRET_FLAGS = re.compile(r"(?<!\S)(--?[A-Za-z][\w\-]{0,80})([ \t]+)(?=[^\s\-])")
_BEARER = re.compile(r"\b(Bearer)(\s+)[A-Za-z0-9._~+/=\-]{6,}")
# A whitespace-delimited token holding percent-escapes (`access%5Ftoken%3D...`, a URL inside a URL):
# redacted in its decoded form too, so an encoded name or separator hides nothing.
_ENCODED_RUN = re.compile(r"\S*%[0-9A-Fa-f]{2}\S*")

# Credential names, matched on the name's WORDS (split at '_', '-', '.', digits and camelCase, any case),
# never on substrings: `keystone_line`, `passage_cam`, `monkey`, `secretary` are not credentials.
# A strong word makes a name secret wherever it stands (password_new, token_v2) ...
_STRONG = {"password", "passwords", "passwd", "passphrase", "passcode", "pwd", "pswd", "psw", "pword", "token",
           "tokens", "secret", "secrets", "credential", "credentials", "jwt", "apikey", "signature", "authorization",
           "sessionid", "sessid"}
# ... a weak one only as the name's last word (api_key, user-pw, pin; not key_station, pin_line, session_hall) ...
_WEAK = {"key", "keys", "pass", "pas", "pw", "sig", "auth", "oauth", "session", "cookie", "cookies", "cred",
         "creds", "sid", "otp", "pin", "private", "bearer"}
# ... ignoring trailing qualifiers (session_id, password_hash, AWSAccessKeyId, pin_code, pass_confirm).
_QUALIFIERS = {"id", "ids", "value", "val", "hash", "hashed", "b64", "base64", "enc", "encoded", "encrypted", "hex",
               "md5", "sha", "digest", "str", "string", "raw", "data", "code", "text", "param", "header", "field",
               "confirm", "confirmation", "again", "repeat", "plain", "plaintext", "new", "old", "current"}
# One word made of prefixes and a credential word: apikey, accesstoken, loginpas, userpw, phpsessid, jsessionid.
_COMPOUND = re.compile(
    r"(?:api|access|auth|secret|private|priv|client|refresh|id|session|user|usr|u|login|admin|app|sas|security|"
    r"master|x|php|j|asp|aspnet|csrf|xsrf|account|acct|root|proxy|oauth|sso|aws|amz|goog|azure|bearer|device|web|"
    r"http|db|ftp|smtp)+"
    r"(?:key|keys|token|tokens|secret|pass|passwd|password|pwd|pswd|psw|pas|pw|pword|sig|signature|auth|session|"
    r"sessionid|sessid|sid|cookie|credential|credentials|cred|creds|jwt|passphrase|passcode)(?:id|ids)?")
# Pipeline properties that name the account (GStreamer rtspsrc, souphttpsrc).
_SECRET_PROPERTIES = ("user-id", "proxy-id")
# Query parameters named exactly so are secret only in a URL query (`?p=`, `&p=`): IP cameras' password.
_QUERY_ONLY = {"p"}
_AUTH_SCHEMES = ("bearer", "basic", "digest", "negotiate", "ntlm", "token", "aws4-hmac-sha256")
_BARE_VALUE = re.compile(r"[^\s&\"'\\]*")
_FIELD_VALUE = re.compile(r"[^\s&\"'\\,}\]]*")                 # after a quoted key: a JSON or dict field
_SCHEME_CREDENTIAL = re.compile(r"[ \t]+[^\s&\"'\\]+")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
MASK = "***"


def redact(text: str) -> str:
    """`text` with secrets replaced by `***`, by structure rather than by example: all URL userinfo
    (up to the last '@'), and the value of every parameter, property, header, JSON/dict field or
    command-line flag whose name is a credential's (see `secret_name`), percent-encoded or not, and
    the account properties of GStreamer sources (user-id, proxy-id). For a string inside a structure
    (an event, a summary) use `redact_value`, never this on the serialised text."""
    text = text if isinstance(text, str) else str(text)
    if "%" in text:
        text = _ENCODED_RUN.sub(_redact_encoded, text)
    return _redact_plain(text)


def redact_lines(text: str) -> str:
    """`redact` for a text that may hold line breaks or other control characters (a log message, an
    error): the same text, redacted, unless a control character inside a secret (`pa\\nss` in a URL's
    password) would leave a part of it visible -- then the text with its control characters escaped,
    redacted, which hides the secret whole."""
    text = text if isinstance(text, str) else str(text)
    plain = redact(text)
    if text.isprintable():
        return plain
    escaped = escape_controls(text)
    safe = redact(escaped)
    hidden = set(_RUNS.findall(escaped)) - set(_RUNS.findall(safe))
    shown = escape_controls(plain)
    return safe if any(piece in shown for piece in hidden) else plain


_RUNS = re.compile(r"[A-Za-z0-9]{3,}")


def _redact_plain(text: str) -> str:
    text = _redact_pairs(text, _SECRET_PARAMS)        # first: a value holding '@' must not look like userinfo
    text = _redact_pairs(text, _SECRET_FLAGS)
    text = _CREDENTIALS.sub(r"\1***@", text)
    text = _BARE_USERINFO.sub("***@", text)
    return _BEARER.sub(r"\1\2***", text)


def _redact_encoded(match: re.Match) -> str:
    """A token with percent-escapes: kept as it is when its decoded form (decoded up to three times, for
    double encoding) holds no secret; else that decoded form, redacted. Escapes of whitespace, quotes,
    backslashes, control and non-ASCII bytes stay encoded, so decoding never splits a value in two."""
    token = decoded = match.group(0)
    for _ in range(3):
        step = _PERCENT.sub(_decode_one, decoded)
        if step == decoded:
            break
        decoded = step
    if decoded == token:
        return token
    redacted = _redact_plain(decoded)
    return token if redacted == decoded else redacted


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def _decode_one(match: re.Match) -> str:
    code = int(match.group(1), 16)
    return chr(code) if 0x21 <= code < 0x7F and chr(code) not in "\"'\\" else match.group(0)


def secret_name(name: str) -> bool:
    """Whether a parameter, property, header, field or flag name is a credential's: decoded (`%5F` -> `_`),
    split into words at separators, digits and camelCase; a strong word anywhere (password, token,
    secret, credential, signature, pwd, psw, jwt, ...), a compound word (apikey, accessToken, loginpas,
    PHPSESSID, ...), or a weak word as the last one (key, pass, pas, pw, sig, auth, session, cookie,
    sid, otp, pin, ...; trailing qualifiers such as `id` or `hash` ignored). Words that merely contain
    one (keystone, passage, monkey, secretary) are not credentials."""
    if "%" in name:
        name = unquote(unquote(name))
    if name.lower().strip("-") in _SECRET_PROPERTIES:
        return True
    words = _words(name)
    if not words:
        return False
    if any(_strong(w) for w in words) or any(_strong(a + b) for a, b in zip(words, words[1:])):
        return True
    while len(words) > 1 and words[-1] in _QUALIFIERS:
        words.pop()
    return words[-1] in _WEAK


def _words(name: str) -> list[str]:
    """`AWSAccessKeyId` -> aws access key id; `x-api_KEY2` -> x api key."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", name))
    return re.findall(r"[a-z]+", spaced.lower())


def _strong(word: str) -> bool:
    return word in _STRONG or _COMPOUND.fullmatch(word) is not None


def redact_value(value):
    """A copy of a JSON-like structure (dicts, lists, strings, numbers) with every string redacted --
    keys too, by `redact`, which never replaces a whole key or name -- and the scalar value of a key
    that is a credential's name replaced by `***`. Structure is kept (a dict stays a dict, whatever
    its key), so the result serialises to valid JSON; redact before serialising, never after."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            shown = redact(key) if isinstance(key, str) else key
            while shown in out:                           # two keys that redact alike both stay
                shown = f"{shown}#"
            if isinstance(key, str) and secret_name(key) and isinstance(item, (str, int, float)) \
                    and not isinstance(item, bool):
                out[shown] = MASK
            else:
                out[shown] = redact_value(item)
        return out
    if isinstance(value, (list, tuple)):
        return [redact_value(item) for item in value]
    return value


def redact_source_url(url: str) -> str:
    """The name shown for a network source (URL or pipeline): `redact`, and in every URL in it every
    query and fragment value replaced by `***` whatever its name, except short plain values of known
    stream-selection parameters (channel=1, subtype=0, profile=main, ...). The choice: IP cameras put
    passwords under names no list can know (`loginpas=`, `p=`, `pw1=`), and a name is for telling
    sources apart, which the host and path do; two URLs that differ only in a hidden value get `#2`."""
    return redact(_URL_IN_TEXT.sub(lambda m: _mask_query(m.group(0)), url))


_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]{0,30}://[^\s\"']+")
_KEEP_QUERY = {"channel", "chn", "ch", "subtype", "stream", "streamtype", "profile", "resolution", "res", "width",
               "height", "fps", "framerate", "bitrate", "quality", "compression", "codec", "videocodec", "video",
               "audio", "transport", "rtsp_transport", "unicast", "multicast", "mode", "format", "camera", "cam",
               "source", "track", "trackid", "media", "type"}
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9._-]{1,16}")


def _mask_query(url: str) -> str:
    """`url` with its query and fragment values masked (see redact_source_url)."""
    cut = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=-1)
    if cut < 0:
        return url
    head, tail = url[:cut + 1], url[cut + 1:]
    parts = re.split(r"([&;#?])", tail)
    for k in range(0, len(parts), 2):
        name, eq, value = parts[k].partition("=")
        if not eq:
            parts[k] = MASK if name else name
        elif not (unquote(name).lower() in _KEEP_QUERY and _PLAIN_VALUE.fullmatch(value)):
            parts[k] = f"{name}={MASK}"
    return head + "".join(parts)


def _redact_pairs(text: str, pattern: re.Pattern) -> str:
    """Replace the value after each `pattern` match (name, separator) whose name is secret."""
    out, pos = [], 0
    while (match := pattern.search(text, pos)) is not None:
        start = match.end()
        if not _secret_at(text, match):
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


def _secret_at(text: str, match: re.Match) -> bool:
    """Whether the name of `match` is secret here: a credential's name, or `p` as a URL query parameter."""
    name = match.group(1)
    if name.lower() in _QUERY_ONLY:
        return match.start(1) > 0 and text[match.start(1) - 1] in "?&;" and match.group(2).startswith("=")
    return secret_name(name)


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
    """End of the quoted string at `start` (backslash escapes honoured). Unclosed, it ends with its line:
    the rest of the line is hidden (over-redacting is safe), the lines after it are not touched."""
    quote, i = text[start], start + 1
    while i < len(text) and text[i] != quote:
        if text[i] in "\n\r":
            return i
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
        record.msg, record.args = redact_lines(message), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact_lines(value))
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
                entry[key] = _plain(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(redact_value(entry), allow_nan=False)


def _plain(value):
    """An extra field as strict JSON data: non-finite floats -> null, containers kept (their strings are
    redacted with the rest), anything else as its text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (int, str, bool, type(None))):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)) or type(value).__name__ == "deque":
        return [_plain(v) for v in value]
    return str(value)


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
