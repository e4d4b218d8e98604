"""The webhook sink: one HTTP POST (a JSON body) per anomalous frame, to the line's endpoint. Standard library only.

The queue, the worker thread, the back-off and the counts are `QueuedSink`'s (outbox.py); the message
format is in docs/outputs.md. Here: the URL, one request, and which answers are worth retrying.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

from edge_ad import __version__
from edge_ad.logs import redact_source_url
from edge_ad.stream.capture import Reconnect
from edge_ad.stream.outbox import QueuedSink, Refused

RETRIED_STATUS = {408, 425, 429}        # and every 5xx: the endpoint may answer otherwise later
MAX_REPLY_BYTES = 65536                 # read (and ignored) of an answer, so the connection ends cleanly


class WebhookSink(QueuedSink):
    """POSTs each anomalous frame's message as `application/json` to `url` (http:// or https://; user and
    password in the URL become a Basic `Authorization` header and leave the URL; `headers` are added to
    every request, e.g. {"Authorization": "Bearer ..."}). A 2xx answer is a delivery. No answer, a 5xx,
    408, 425 or 429 is retried with back-off; any other answer (a 4xx, or a redirect, which a POST does not
    follow) refuses the message for good: counted and logged, not retried."""

    kind = "webhook"

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, queue_size: int = 1000,
                 retry: Reconnect | None = None, flush_timeout: float = 5.0) -> None:
        self.url, auth = parse_webhook_url(url)
        self.headers = {"Content-Type": "application/json", "User-Agent": f"edge_ad/{__version__}"}
        if auth:
            self.headers["Authorization"] = auth
        for key, value in (headers or {}).items():
            if not isinstance(key, str) or not isinstance(value, str) or "\n" in key + value or "\r" in key + value:
                raise ValueError(f"webhook header {key!r}: names and values must be one-line strings")
            self.headers[key] = value
        self._opener = urllib.request.build_opener(_NoRedirect())
        super().__init__(redact_source_url(url), queue_size=queue_size, retry=retry, flush_timeout=flush_timeout)

    def _send(self, message: dict, payload: bytes) -> None:
        request = urllib.request.Request(self.url, data=payload, headers=self.headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.retry.timeout) as reply:
                reply.read(MAX_REPLY_BYTES)
        except urllib.error.HTTPError as err:
            status = f"HTTP {err.code} {err.reason}".strip()
            err.close()
            if err.code in RETRIED_STATUS or err.code >= 500:
                raise ConnectionError(status) from None
            if 300 <= err.code < 400:
                raise Refused(f"{status}: redirected to {err.headers.get('Location', '?')}; give the final URL "
                              "(a POST is not redirected)") from None
            raise Refused(status) from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib would turn the POST into a GET without its body."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib's hook
        return None


def parse_webhook_url(url: str) -> tuple[str, str | None]:
    """(the URL without its userinfo, a Basic Authorization header from it or None); ValueError for a URL
    that is not http(s)://HOST/..."""
    parts = urlsplit(str(url))
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook {redact_source_url(str(url))!r}: give http(s)://HOST[:PORT]/PATH")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"webhook {redact_source_url(str(url))!r}: the port must be 1..65535") from None
    auth = None
    if parts.username is not None:
        user, password = unquote(parts.username), unquote(parts.password or "")
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), auth
