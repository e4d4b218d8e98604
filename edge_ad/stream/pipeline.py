"""The streaming loop: frames from a source through the detector to the sinks, with timing.

    for item in detector.stream("video.mp4"):
        print(item.frame.index, item.result.score, item.latency_ms)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_ad.runtime.result import Result
from edge_ad.stream.sources import Frame, Source, open_source

log = logging.getLogger(__name__)


@dataclass
class StreamItem:
    frame: Frame
    result: Result
    latency_ms: float          # from the frame being read to its result being ready


@dataclass
class StreamStats:
    frames: int = 0
    anomalous: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0

    def summary(self, source: Source) -> dict:
        s = source.stats
        return {"frames": self.frames, "anomalous": self.anomalous, "seconds": round(self.seconds, 3),
                "fps": round(self.fps, 2), "latency_ms_p50": round(self.percentile(50), 2),
                "latency_ms_p99": round(self.percentile(99), 2), "dropped": s.frames_dropped,
                "corrupt": s.frames_corrupt, "source_state": s.state}


class Stream:
    """Iterate to process a source; `stats` and `summary()` report FPS, latency, drops, corrupt frames."""

    def __init__(self, detector, source: str | int | Path | Source, *, sinks: list | None = None,
                 max_frames: int | None = None, idle_timeout: float = 10.0) -> None:
        self.detector = detector
        self.source = source if isinstance(source, Source) else open_source(source)
        self.sinks = sinks or []
        self.max_frames = max_frames
        self.idle_timeout = idle_timeout
        self.stats = StreamStats()

    def __iter__(self):
        self.source.start()
        start = time.perf_counter()
        idle_since = time.perf_counter()
        try:
            while self.max_frames is None or self.stats.frames < self.max_frames:
                frame = self.source.get(timeout=0.5)
                if frame is None:
                    if self.source.finished:
                        break
                    if time.perf_counter() - idle_since > self.idle_timeout:
                        log.warning("no frame from %s for %.0f s; stopping", self.source.name, self.idle_timeout)
                        break
                    continue
                idle_since = time.perf_counter()
                result = self.detector.predict(frame.image, color=frame.color)
                item = StreamItem(frame, result, (time.time() - frame.timestamp) * 1e3)
                self.stats.frames += 1
                self.stats.anomalous += int(result.is_anomalous)
                self.stats.latencies_ms.append(item.latency_ms)
                for sink in self.sinks:
                    sink.write(item)
                yield item
        finally:
            self.stats.seconds = time.perf_counter() - start
            self.source.close()
            for sink in self.sinks:
                sink.close()

    def run(self) -> dict:
        """Process the whole source; return the summary."""
        for _ in self:
            pass
        return self.summary()

    def summary(self) -> dict:
        return self.stats.summary(self.source)
