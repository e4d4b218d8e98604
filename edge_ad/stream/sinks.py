"""Where stream results go: a JSON Lines file of events, an annotated video, an OpenCV window."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2


class EventsSink:
    """One JSON line per frame judged anomalous, flushed at once so a kill loses nothing written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", buffering=1)
        self.count = 0

    def write(self, item) -> None:
        if not item.result.is_anomalous:
            return
        event = {"source": item.frame.source, "frame": item.frame.index, "timestamp": item.frame.timestamp,
                 "score": item.result.score, "normalized_score": item.result.normalized_score,
                 "latency_ms": item.latency_ms}
        if item.frame.name:
            event["file"] = item.frame.name
        self.file.write(json.dumps(event) + "\n")
        self.file.flush()
        self.count += 1

    def close(self) -> None:
        self.file.close()


class VideoSink:
    """The frames with the heatmap overlaid and the decision written on them."""

    def __init__(self, path: str | Path, fps: float = 15.0, codec: str = "mp4v") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.codec = fps, codec
        self.writer: cv2.VideoWriter | None = None

    def write(self, item) -> None:
        image = item.frame.image
        if item.frame.color == "RGB":
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        frame = item.result.overlay(image, color="BGR")
        if self.writer is None:
            h, w = frame.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.codec), self.fps, (w, h))
            if not self.writer.isOpened():
                raise IOError(f"cannot write video {self.path} with codec {self.codec}")
        self.writer.write(frame)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


class WindowSink:
    """A live OpenCV window; `available()` says whether there is a display to open it on."""

    def __init__(self, title: str = "edge_ad") -> None:
        self.title = title

    @staticmethod
    def available() -> bool:
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))

    def write(self, item) -> None:
        image = item.frame.image
        if item.frame.color == "RGB":
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        cv2.imshow(self.title, item.result.overlay(image, color="BGR"))
        cv2.waitKey(1)

    def close(self) -> None:
        cv2.destroyWindow(self.title)
