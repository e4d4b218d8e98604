"""The Triton backend's link to its server, kept like a camera's connection.

A request that finds the server gone (gRPC UNAVAILABLE or DEADLINE_EXCEEDED: refused, reset, timed
out; NOT_FOUND: the server is up but the model is not loaded, e.g. while it restarts) is not an error
for the frames: the link goes connected -> reconnecting, opens a new gRPC channel and probes the
server (live, model ready, config still the bundle's) with the camera's back-off policy
(`edge_ad.stream.capture.Reconnect`: initial, doubling, cap, budget), then sends the request again.
The request waits meanwhile, so a stream's live sources keep only their newest frame (drops counted)
and files wait; nothing is lost and nothing stops. When the server is back the gap is counted and
logged (state connected, gap_s, attempts); when the budget is spent the state is "failed" and the
request raises `ServerGone`, a ConnectionError (the stream counts it against the frames, and gives up
after several such batches in a row, with the reason); from then on each request tries once, without
waiting, until one gets through (a new policy, `set_policy`, waits again). `interrupt()` ends the
waiting at once, for good (a stream that is stopping). Other errors (a request the server refuses)
are raised at once, never retried.

State changes go to the log, to `stats` and to `take_events()` ({"event": "backend", ...}).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from edge_ad.logs import escape_controls, redact
from edge_ad.stream.capture import Reconnect

__all__ = ["LinkStats", "ServerGone", "ServerLink", "is_outage"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# gRPC status codes (as tritonclient's InferenceServerException.status() gives them) that mean "the server
# or the model is not there now", not "this request is wrong".
OUTAGE_CODES = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.NOT_FOUND")


class ServerGone(ConnectionError):
    """No Triton server came back within the retry budget (or the wait was interrupted)."""


def is_outage(err: BaseException) -> bool:
    """Whether `err` (from tritonclient) says the server or the model is unreachable now."""
    status = getattr(err, "status", None)
    return callable(status) and str(status()) in OUTAGE_CODES


def _text(err: BaseException) -> str:
    message = getattr(err, "message", None)
    text = message() if callable(message) else str(err)
    return redact(escape_controls(str(text or type(err).__name__)))[:300]


@dataclass
class LinkStats:
    """The link's state and its history: bounded, like a source's."""

    state: str = "connecting"          # connecting, connected, reconnecting, failed
    reconnects: int = 0
    gap_seconds: float = 0.0           # total time without a usable server after the first connection
    gaps: deque = field(default_factory=lambda: deque(maxlen=100))
    errors: deque = field(default_factory=lambda: deque(maxlen=20))
    retried_requests: int = 0          # requests that met an outage and were sent again

    def summary(self) -> dict:
        return {"state": self.state, "reconnects": self.reconnects, "gap_seconds": round(self.gap_seconds, 3),
                "gaps": list(self.gaps)[-10:], "retried_requests": self.retried_requests,
                "errors": list(self.errors)[-5:]}


class ServerLink:
    """One gRPC client to `url` for `model`, replaced when the server comes back.

    `connect()` makes a new client; `probe(client)` returns "" when the server is live and the model
    ready, else why not (it may raise for a model whose config no longer matches: raised as it is)."""

    def __init__(self, url: str, model: str, connect: Callable[[], Any], probe: Callable[[Any], str],
                 policy: Reconnect | None = None) -> None:
        self.name = f"triton {url}/{model}"
        self.connect, self.probe = connect, probe
        self.policy = policy or Reconnect()
        self.stats = LinkStats()
        self.client: Any = None
        self._generation = 0
        self._lost_at: float | None = None
        self._unproven = 0                     # failed tries since the last request that got through
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._events: deque[dict] = deque(maxlen=1000)

    def attach(self, client: Any) -> None:
        """The client that connected at load time."""
        self.client = client
        self._set_state("connected")

    def call(self, request: Callable[[Any], T]) -> T:
        """`request(client)`, sent again after each outage once the server is back (module doc)."""
        while True:
            generation, client = self._generation, self.client
            try:
                result = request(client)
            except Exception as err:  # noqa: BLE001 - sorted: outages are retried, the rest raised as they are
                if not is_outage(err):
                    raise
                self.stats.retried_requests += 1
                self._recover(generation, _text(err))
                continue
            self._unproven = 0
            return result

    def set_policy(self, policy: Reconnect) -> None:
        """A new retry policy; a link that spent its budget ("failed") waits for the server again."""
        with self._lock:
            self.policy = policy
            if self.stats.state == "failed":
                self._set_state("reconnecting", reason="a new retry policy")

    def interrupt(self) -> None:
        """Stop waiting for the server: a wait in progress ends now, later outages raise at once."""
        self._stop.set()

    def take_events(self) -> list[dict]:
        events = list(self._events)
        self._events.clear()
        return events

    def close(self) -> None:
        self._stop.set()
        if self.client is not None:
            _close_quietly(self.client)

    # Reconnecting ---------------------------------------------------------------------------------
    def _recover(self, generation: int, why: str) -> None:
        """After an outage seen on client `generation`: reconnect, unless another thread already did."""
        with self._lock:
            if generation != self._generation:
                return                              # another request brought the link back meanwhile
            if self._lost_at is None:
                self._lost_at = time.time()
                self.stats.errors.append(why)
            if self.stats.state == "failed":        # the budget is spent: one try per request, no waiting
                problem = self._try(self._unproven)
                if problem:
                    raise ServerGone(f"{self.name}: still no usable server (retry budget {self.policy.budget} "
                                     f"spent); last: {problem}")
                return
            self._set_state("reconnecting", reason=why, level=logging.WARNING)
            self._reconnect(why)

    def _reconnect(self, why: str) -> None:
        """Probe with back-off until the server is usable. Tries are counted from the last request that got
        through, so a server that answers the probe but fails every request (too slow for the request
        time-out) is backed off from too, and meets the budget."""
        attempt = self._unproven
        while True:
            if attempt:
                if self.policy.budget is not None and attempt > self.policy.budget:
                    self._unproven = 0                  # later requests: one try each (state "failed")
                    self.stats.errors.append(why)
                    self._set_state("failed", attempts=attempt, error=why, level=logging.ERROR)
                    raise ServerGone(f"{self.name}: no usable server after {attempt} attempts (retry budget "
                                     f"{self.policy.budget}); last: {why}")
                delay = self.policy.delay(attempt)
                log.warning("%s: %s (attempt %d); next try in %.1f s", self.name, why, attempt, delay)
                if self._stop.wait(delay):
                    raise ServerGone(f"{self.name}: stopped while waiting for the server ({why})")
            problem = self._try(attempt)
            if not problem:
                return
            why, attempt = problem, attempt + 1
            if self._stop.is_set():                 # stopping: one try, no waiting
                raise ServerGone(f"{self.name}: stopped while the server is unreachable ({why})")

    def _try(self, attempt: int) -> str:
        """One try on a new channel: "" when the server is usable again (then connected), else why not."""
        _close_quietly(self.client)
        self.client = self.connect()
        problem = self._probe()
        if not problem:
            self._unproven = attempt + 1
            self._connected(attempt + 1)
        return problem

    def _probe(self) -> str:
        try:
            return self.probe(self.client)
        except Exception as err:  # noqa: BLE001 - an outage is a reason to wait; anything else is raised
            if is_outage(err):
                return _text(err)
            self._set_state("failed", error=_text(err), level=logging.ERROR)
            raise

    def _connected(self, attempts: int) -> None:
        self._generation += 1
        gap = time.time() - (self._lost_at or time.time())
        self.stats.reconnects += 1
        self.stats.gap_seconds += gap
        self.stats.gaps.append({"from": round(self._lost_at or time.time(), 3), "seconds": round(gap, 3),
                                "attempts": attempts})
        self._lost_at = None
        self._set_state("connected", gap_s=round(gap, 3), attempts=attempts, reconnects=self.stats.reconnects,
                        level=logging.WARNING)

    def _set_state(self, state: str, *, level: int = logging.INFO, **fields) -> None:
        self.stats.state = state
        detail = ", ".join(f"{k}={v}" for k, v in fields.items())
        log.log(level, "%s: %s%s", self.name, state, f" ({detail})" if detail else "")
        self._events.append({"event": "backend", "backend": self.name, "state": state, "time": time.time(), **fields})


def _close_quietly(client: Any) -> None:
    if client is None:
        return
    try:
        client.close()
    except Exception:  # noqa: BLE001 - a channel to a dead server may fail to close; it is dropped anyway
        pass
