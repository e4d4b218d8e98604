"""Per-source counters of a stream: what the reader thread saw and what the pipeline made of it.

Every structure is bounded (latency window, recent frame times, gaps, errors), so a stream that
runs for weeks holds the same memory on its last day as after its first minute.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

# Prometheus histogram buckets of the frame latency, seconds (upper bounds; +Inf is implied).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FPS_WINDOW_S = 10.0


@dataclass
class SourceStats:
    # Reader side
    state: str = "connecting"          # connecting, connected, reconnecting, ended, failed, stopped
    frames_read: int = 0
    frames_dropped: int = 0            # live sources: overwritten before the model took them
    frames_corrupt: int = 0            # skipped: could not be decoded or converted (or over the pixel limit)
    frames_too_large: int = 0          # of those, images over the pixel limit (image bombs); for live sources
                                       # also each connection refused for the frame size it declared
    last_skip: str = ""                # why the last skipped frame was skipped
    failure: str | None = None         # why the source failed (state "failed")
    frames_converted: int = 0          # grayscale / 16-bit / 4-channel frames converted to 8-bit colour
    format_changes: int = 0            # frame size, channels or bit depth differed from the frame before
    reconnects: int = 0
    gap_seconds: float = 0.0           # total time without a connection after the first one
    gaps: deque = field(default_factory=lambda: deque(maxlen=100))
    errors: deque = field(default_factory=lambda: deque(maxlen=20))
    # Pipeline side
    processed: int = 0
    anomalous: int = 0
    duplicates: int = 0                # frames whose index was not above the last processed one (skipped)
    inference_errors: int = 0          # frames whose inference failed (an error, or a non-finite model output)
    last_inference_error: str = ""
    last_index: int = -1
    started: float = field(default_factory=time.monotonic)
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=4096), repr=False)
    recent: deque = field(default_factory=lambda: deque(maxlen=4096), repr=False)
    bucket_counts: list = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1), repr=False)
    latency_sum_s: float = 0.0

    def record(self, index: int, latency_ms: float, anomalous: bool, now: float | None = None) -> None:
        """A processed frame."""
        now = time.monotonic() if now is None else now
        self.processed += 1
        self.anomalous += int(anomalous)
        self.last_index = index
        self.latencies_ms.append(latency_ms)
        self.recent.append(now)
        self.bucket_counts[bisect.bisect_left(LATENCY_BUCKETS, latency_ms / 1e3)] += 1
        self.latency_sum_s += latency_ms / 1e3

    def fps(self, now: float | None = None) -> float:
        """Frames per second over the last FPS_WINDOW_S seconds (or since the start, if shorter)."""
        now = time.monotonic() if now is None else now
        start = max(now - FPS_WINDOW_S, self.started)
        recent = self.recent
        if len(recent) == recent.maxlen and recent[0] > start:   # faster than the window holds
            return (len(recent) - 1) / (now - recent[0]) if now > recent[0] else 0.0
        count = len(recent) - bisect.bisect_left(recent, start)
        return count / (now - start) if now > start else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0

    def failure_reason(self) -> str | None:
        """Why this source produced nothing (None when it did, or is still going): failed, every frame
        unusable, every inference failed, or it ended without a frame."""
        if self.state == "failed":
            return self.failure or (self.errors[-1] if self.errors else "failed")
        if self.processed > 0:
            return None
        if self.inference_errors:
            return f"inference failed on every frame ({self.inference_errors}): {self.last_inference_error}"
        if self.state == "ended":
            if self.frames_corrupt:
                return f"no usable frame: {self.frames_corrupt} skipped (last: {self.last_skip})"
            if self.frames_read == 0:
                return "the source ended without delivering a frame"
        return None

    def summary(self, seconds: float) -> dict:
        """The figures a user reads after a run (FPS over the whole run)."""
        return {"state": self.state, "frames": self.processed, "anomalous": self.anomalous,
                "fps": round(self.processed / seconds, 2) if seconds > 0 else 0.0,
                "latency_ms_p50": round(self.percentile(50), 2), "latency_ms_p99": round(self.percentile(99), 2),
                "read": self.frames_read, "dropped": self.frames_dropped, "corrupt": self.frames_corrupt,
                "too_large": self.frames_too_large,
                "converted": self.frames_converted, "format_changes": self.format_changes,
                "reconnects": self.reconnects, "gap_seconds": round(self.gap_seconds, 3),
                "gaps": list(self.gaps)[-10:], "duplicates": self.duplicates,
                "inference_errors": self.inference_errors, "errors": list(self.errors)[-5:],
                "reason": self.failure_reason()}
