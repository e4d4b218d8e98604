"""Where stream results go: a JSON Lines events file, annotated videos, OpenCV windows.

A sink has `write(item)` for each processed frame and `close()`; `event(dict)` (optional) receives
the stream's other events: start, source state changes (with reconnection gaps) and the summary.
Snapshots of anomalous frames are in `snapshots.py`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import cv2

from edge_ad.logs import redact


def safe_name(source: str) -> str:
    """A source name usable as a file name component."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("._") or "source"


class EventsSink:
    """One JSON object per line: `start`, `anomaly` (or every `frame` with frames="all"), `source`
    state changes and the final `summary`. Each line goes to the file in one write as it happens,
    so a kill at any moment leaves every line written so far complete; `fsync` also survives power loss."""

    def __init__(self, path: str | Path, *, frames: str = "anomalous", fsync: bool = False) -> None:
        if frames not in ("anomalous", "all"):
            raise ValueError(f"frames must be 'anomalous' or 'all', got {frames!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frames, self.fsync = frames, fsync
        self.file = open(self.path, "ab", buffering=0)
        self.count = 0

    def write(self, item) -> None:
        result, frame = item.result, item.frame
        if not result.is_anomalous and self.frames != "all":
            return
        event = {"event": "anomaly" if result.is_anomalous else "frame", "source": frame.source,
                 "frame": frame.index, "timestamp": frame.timestamp, "anomalous": result.is_anomalous,
                 "score": result.score, "normalized_score": result.normalized_score,
                 "latency_ms": round(item.latency_ms, 3)}
        if frame.name:
            event["file"] = frame.name
        self._line({**event, **item.notes})
        self.count += int(result.is_anomalous)

    def event(self, event: dict) -> None:
        self._line(event)

    def _line(self, event: dict) -> None:
        data = (redact(json.dumps(event, default=str)) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[self.file.write(view):]
        if self.fsync:
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


class VideoSink:
    """The frames with the heatmap overlaid and the decision written on them. With several sources,
    one file per source: `out.mp4` -> `out.<source>.mp4`. Frames are resized to the first one's size."""

    def __init__(self, path: str | Path, fps: float = 15.0, codec: str = "mp4v") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.codec = fps, codec
        self.writers: dict[str, tuple[cv2.VideoWriter, tuple[int, int]]] = {}
        self.per_source = False

    def event(self, event: dict) -> None:
        if event.get("event") == "start":
            self.per_source = len(event.get("sources", [])) > 1

    def write(self, item) -> None:
        frame = _overlay(item)
        source = item.frame.source
        if source not in self.writers:
            tag = re.sub(r"\.(mp4|avi|mkv|mov|webm|mjpe?g|ts)$", "", safe_name(source), flags=re.IGNORECASE)
            path = self.path.with_name(f"{self.path.stem}.{tag}{self.path.suffix}") if self.per_source else self.path
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*self.codec), self.fps, (w, h))
            if not writer.isOpened():
                raise IOError(f"cannot write video {path} with codec {self.codec}")
            self.writers[source] = (writer, (w, h))
        writer, size = self.writers[source]
        if (frame.shape[1], frame.shape[0]) != size:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        writer.write(frame)

    def close(self) -> None:
        for writer, _ in self.writers.values():
            writer.release()


class WindowSink:
    """A live OpenCV window per source; `available()` says whether there is a display to open it on."""

    def __init__(self, title: str = "edge_ad") -> None:
        self.title = title
        self.windows: set[str] = set()

    @staticmethod
    def available() -> bool:
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))

    def write(self, item) -> None:
        name = f"{self.title}: {item.frame.source}"
        self.windows.add(name)
        cv2.imshow(name, _overlay(item))
        cv2.waitKey(1)

    def close(self) -> None:
        for name in self.windows:
            cv2.destroyWindow(name)


def _overlay(item):
    """The item's frame (BGR) with its heatmap and decision drawn on it."""
    image = item.frame.image
    if item.frame.color == "RGB":
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return item.result.overlay(image, color="BGR")
