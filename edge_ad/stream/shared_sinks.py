"""Sinks seen by several streams of one process (a station), and sinks that see one camera only.

A station runs one Stream per bundle, side by side in threads. Its events file, snapshot folder,
MQTT and webhook sinks are one object each (an events file has one writer: it is locked), so each
stream gets a `SharedSink` in front of it: calls are serialised by one lock; each stream's summary
becomes a `group_summary` event (the station writes the one `summary`); the sink is closed by the
station, after every stream, not by the first stream that ends. A camera's own sink (its video
file) sits behind a `CameraSink`, which passes it that camera's frames and events only.
"""

from __future__ import annotations

import threading

__all__ = ["CameraSink", "SharedSink"]


class SharedSink:
    """`sink` as one stream (`group`, whose detector runs `model`) sees it; `lock` is shared by every
    SharedSink of the same sink. `close()` does nothing: the owner closes `sink` once all are done."""

    def __init__(self, sink, lock: threading.Lock, *, group: str, model: str | None) -> None:
        self.sink, self.lock, self.group, self.model = sink, lock, group, model

    def write(self, item) -> None:
        with self.lock:
            if hasattr(self.sink, "model"):       # a network sink names the model of the frame's own stream
                self.sink.model = self.model
            self.sink.write(item)

    def event(self, event: dict) -> None:
        handler = getattr(self.sink, "event", None)
        if handler is None:
            return
        if event.get("event") == "summary":
            event = {**event, "event": "group_summary", "group": self.group}
        elif event.get("event") == "start":
            event = {**event, "group": self.group}
        with self.lock:
            handler(event)

    def take_events(self) -> list[dict]:
        take = getattr(self.sink, "take_events", None)
        if take is None:
            return []
        with self.lock:
            return take()

    def flush(self, timeout: float = 30.0):
        flush = getattr(self.sink, "flush", None)
        return flush(timeout) if flush is not None else True

    def close(self) -> None:
        """Nothing: the station closes the shared sink after the last stream."""

    def __getattr__(self, name: str):
        return getattr(self.sink, name)           # summary(), counts: the shared sink's own


class CameraSink:
    """`sink` fed with the frames and events of the sources named in `sources` only. `close()` does
    nothing: the owner (the station) closes `sink`."""

    def __init__(self, sink, sources: set[str]) -> None:
        self.sink, self.sources = sink, set(sources)

    def write(self, item) -> None:
        if item.frame.source in self.sources:
            self.sink.write(item)

    def event(self, event: dict) -> None:
        handler = getattr(self.sink, "event", None)
        if handler is None or ("source" in event and event["source"] not in self.sources):
            return
        if event.get("event") == "start":
            event = {**event, "sources": [s for s in event.get("sources", []) if s in self.sources]}
        handler(event)

    def take_events(self) -> list[dict]:
        take = getattr(self.sink, "take_events", None)
        return take() if take is not None else []

    def flush(self, timeout: float = 30.0):
        flush = getattr(self.sink, "flush", None)
        return flush(timeout) if flush is not None else True

    def close(self) -> None:
        """Nothing: the station closes the camera's sink."""

    def __getattr__(self, name: str):
        return getattr(self.sink, name)
