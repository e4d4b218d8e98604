"""What the network sinks share: one message per anomalous frame, sent by a worker thread so the stream never waits.

`write(item)` turns an anomalous frame into a message (`anomaly_message`) and appends it to a bounded
queue: constant time, never blocking, whatever the broker or endpoint does. When the queue is full the
oldest waiting message is dropped and counted (the newest are the ones the line still needs). The
worker sends the messages in order; a send that fails (the broker or endpoint down, a time-out) is
retried with back-off (the `Reconnect` policy of the sources), the message kept, until it is delivered
or the sink closes. A message the endpoint refuses for good (an HTTP 4xx) is counted and dropped, not
retried. `summary()` has the counts (for the stream summary and Prometheus); what is still queued
when the sink closes is counted as unsent and logged. The message format is in docs/outputs.md.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from datetime import datetime, timezone

from edge_ad import __version__
from edge_ad.logs import Throttle, escape_controls, redact
from edge_ad.stream.capture import Reconnect
from edge_ad.stream.sinks import redacted_json

log = logging.getLogger(__name__)

MESSAGE_VERSION = 1
DEFAULT_RETRY = Reconnect(initial=0.5, factor=2.0, cap=30.0, timeout=5.0)
IDLE_TICK_S = 1.0               # the worker wakes at least this often (keep-alives, the close)


class Refused(Exception):
    """The endpoint refused this message for good (retrying would get the same answer): counted, dropped."""


def anomaly_message(item, *, seq: int, model: str | None) -> dict:
    """The message of one anomalous frame (docs/outputs.md): the notes other sinks added (the snapshot's
    path) first, the frame's own fields over them."""
    frame, result = item.frame, item.result
    fields = {"event": "anomaly", "version": MESSAGE_VERSION, "seq": seq, "source": frame.source,
              "frame": frame.index, "time": round(frame.timestamp, 3), "time_iso": _iso(frame.timestamp),
              "verdict": "anomalous", "score": result.score,
              "normalized_score": result.normalized_score, "latency_ms": round(item.latency_ms, 3),
              "snapshot": item.notes.get("snapshot"), "model": model, "edge_ad": __version__}
    if frame.name:
        fields["file"] = frame.name
    return {**item.notes, **fields}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class QueuedSink(ABC):
    """The bounded queue, the worker thread, back-off and the counts; subclasses say how one message is
    sent (`_send`), how a connection is dropped (`_disconnect`) and what to do while idle (`_idle`)."""

    kind = "sink"

    def __init__(self, name: str, *, queue_size: int = 1000, retry: Reconnect | None = None,
                 flush_timeout: float = 5.0) -> None:
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or not 1 <= queue_size <= 1_000_000:
            raise ValueError(f"{self.kind} queue_size must be 1..1000000 messages, got {queue_size!r}")
        if retry is not None and not isinstance(retry, Reconnect):
            raise TypeError(f"{self.kind} retry must be a Reconnect policy, got {type(retry).__name__}")
        self.name = redact(escape_controls(name))
        self.queue_size, self.retry, self.flush_timeout = queue_size, retry or DEFAULT_RETRY, flush_timeout
        self.model: str | None = None
        self.accepted = self.delivered = self.dropped = self.refused = self.failed = self.retries = self.unsent = 0
        self.connected = False
        self.last_error = ""
        self._queue: deque[dict] = deque()
        self._busy = False                      # the worker holds a message
        self._failing = False                   # the last attempt failed: the worker is backing off
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._drops = Throttle(log, 60.0)
        self._errors = Throttle(log, 60.0)
        self._thread = threading.Thread(target=self._run, name=f"edge_ad-{self.kind}", daemon=True)
        self._thread.start()

    # The stream's side: never blocks ----------------------------------------------------------
    def write(self, item) -> None:
        if not item.result.is_anomalous:
            return
        with self._cond:
            self.accepted += 1
            message = anomaly_message(item, seq=self.accepted, model=self.model)
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self.dropped += 1
                self._drops(logging.WARNING, "%s %s: queue full (%d messages), the oldest dropped (%d so far); %s",
                            self.kind, self.name, self.queue_size, self.dropped, self.last_error or "sending is slow")
            self._queue.append(message)
            self._cond.notify_all()

    def event(self, event: dict) -> None:
        if event.get("event") == "start":
            self.model = event.get("model")

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued message is sent or dropped, at most min(timeout, flush_timeout) seconds:
        the end of a stream gives a broker that is back a moment to take the last messages, and never
        waits longer on one that is down. False when messages are still waiting."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._queue or self._busy), min(timeout, self.flush_timeout))

    def close(self) -> None:
        """Stop the worker (after the message in flight, at most the send time-out); what is still queued
        is counted as unsent and logged."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(self.retry.timeout + 2 * IDLE_TICK_S)
        with self._cond:
            self.unsent += len(self._queue)
            self._queue.clear()
        if self.unsent or self.dropped or self.refused or self.failed:
            log.warning("%s %s: %d of %d messages delivered; %d dropped (queue full), %d refused, %d given up, %d "
                        "unsent at the end%s", self.kind, self.name, self.delivered, self.accepted, self.dropped,
                        self.refused, self.failed, self.unsent, f"; last error: {self.last_error}" if self.last_error
                        else "")

    def summary(self) -> dict:
        """The counts, for the stream summary and Prometheus: `accepted` anomalous frames = `delivered` +
        `dropped` + `refused` + `failed` + `unsent` + `queued` (+ the one in flight)."""
        with self._cond:
            queued = len(self._queue)
        return {"sink": self.name, "kind": self.kind, "accepted": self.accepted, "delivered": self.delivered,
                "dropped": self.dropped, "refused": self.refused, "failed": self.failed, "unsent": self.unsent,
                "queued": queued, "retries": self.retries, "connected": self.connected,
                "last_error": self.last_error}

    # The worker ----------------------------------------------------------------------------------
    def _run(self) -> None:
        message, attempt = None, 0
        try:
            while not self._stop.is_set():
                if message is None:
                    message = self._next()
                    if message is None:
                        self._idle()
                        continue
                if self._attempt(message):
                    message, attempt = None, 0
                    self._settle()
                    continue
                attempt += 1
                if self.retry.budget is not None and attempt > self.retry.budget:
                    self.failed += 1
                    message, attempt = None, 0
                    self._settle()
                self._stop.wait(self.retry.delay(max(attempt, 1)))
        finally:
            with self._cond:
                self.unsent += int(message is not None)
                self._busy = False
                self._cond.notify_all()
            self._disconnect()
            self.connected = False

    def _next(self) -> dict | None:
        """The oldest queued message (now held by the worker), or None after IDLE_TICK_S without one."""
        with self._cond:
            if not self._queue:
                self._cond.wait(IDLE_TICK_S)
            if not self._queue or self._stop.is_set():
                return None
            self._busy = True
            return self._queue.popleft()

    def _attempt(self, message: dict) -> bool:
        """Send `message` once: True when delivered or refused for good, False when it is to be retried."""
        try:
            self._send(message, redacted_json(message).encode())
        except Refused as err:
            self.refused += 1
            self.last_error = redact(escape_controls(str(err)))
            self._errors(logging.ERROR, "%s %s refused message %d: %s (not retried)", self.kind, self.name,
                         message["seq"], self.last_error)
            return True
        except Exception as err:  # noqa: BLE001 - any failure to send is retried; the stream goes on
            self.retries += 1
            self.last_error = redact(escape_controls(f"{type(err).__name__}: {err}"))
            self.connected = False
            self._disconnect()
            with self._cond:
                self._failing = True
                self._cond.notify_all()
            self._errors(logging.WARNING, "%s %s: cannot send (%s); retrying with back-off, the stream goes on",
                         self.kind, self.name, self.last_error)
            return False
        if self._failing:
            log.info("%s %s: sending again after %d failed attempt(s)", self.kind, self.name, self.retries)
        self.delivered += 1
        self.connected = True
        return True

    def _settle(self) -> None:
        with self._cond:
            self._busy = False
            self._failing = False
            self._cond.notify_all()

    # For subclasses ---------------------------------------------------------------------------------
    @abstractmethod
    def _send(self, message: dict, payload: bytes) -> None:
        """Deliver one message (its JSON `payload`) within `self.retry.timeout` seconds; raise Refused when
        the endpoint refuses it for good, any other exception to have it retried."""

    def _disconnect(self) -> None:
        """Drop the connection (after a failure, and at the end)."""

    def _idle(self) -> None:
        """Called at least every IDLE_TICK_S while no message waits (e.g. MQTT keep-alives)."""
