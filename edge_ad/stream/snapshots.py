"""Snapshots of anomalous frames (the original and the heatmap overlay) within a disk budget.

JPEG encoding and the disk writes happen on a background thread, so a slow disk never slows the
inspection: when its queue is full a snapshot is skipped and counted. Each file is written under a
temporary name and renamed, so a kill never leaves half a JPEG. When the folder exceeds the budget,
the oldest snapshots are deleted: a line that runs for months keeps the most recent ones.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from pathlib import Path

import cv2

from edge_ad.stream.sinks import _overlay, safe_name

log = logging.getLogger(__name__)


class SnapshotSink:
    """Writes `<folder>/<source>/<time>_f<index>.jpg` and `..._heatmap.jpg` for each anomalous frame,
    keeps the folder under `budget_mb`, and adds the original's path to the item's notes (so the
    events file names it when this sink comes before the EventsSink)."""

    def __init__(self, folder: str | Path, *, budget_mb: float = 500.0, quality: int = 90, queue_size: int = 16) -> None:
        if budget_mb <= 0:
            raise ValueError(f"snapshot budget must be > 0 MB, got {budget_mb}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.budget = int(budget_mb * 1e6)
        self.quality = quality
        self.written = self.skipped = self.deleted = 0
        self._files: deque[tuple[Path, int]] = deque(self._existing())
        self._bytes = sum(size for _, size in self._files)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="edge_ad-snapshots", daemon=True)
        self._thread.start()

    def _existing(self) -> list[tuple[Path, int]]:
        """Snapshots from earlier runs, oldest first: they count against the budget too."""
        files = [(p, p.stat()) for p in self.folder.rglob("*.jpg") if p.is_file()]
        return [(p, st.st_size) for p, st in sorted(files, key=lambda f: f[1].st_mtime)]

    def write(self, item) -> None:
        if not item.result.is_anomalous:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(item.frame.timestamp))
        base = self.folder / safe_name(item.frame.source) / f"{stamp}_f{item.frame.index:09d}"
        try:
            self._queue.put_nowait((item, base))
        except queue.Full:
            self.skipped += 1
            log.warning("snapshot of %s frame %d skipped: the disk writer is behind (%d skipped so far)",
                        item.frame.source, item.frame.index, self.skipped)
            return
        item.notes["snapshot"] = str(base) + ".jpg"

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            item, base = job
            try:
                self._save(item, base)
            except Exception as err:  # noqa: BLE001 - a full disk must not end the stream
                log.error("cannot write snapshot %s: %s", base, err)

    def _save(self, item, base: Path) -> None:
        base.parent.mkdir(parents=True, exist_ok=True)
        image = item.frame.image
        if item.frame.color == "RGB":
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        for path, picture in ((base.with_suffix(".jpg"), image),
                              (base.with_name(base.name + "_heatmap.jpg"), _overlay(item))):
            ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:
                raise IOError("JPEG encoding failed")
            tmp = path.with_name(f".{path.name}.partial")
            tmp.write_bytes(data.tobytes())
            os.replace(tmp, path)
            self._files.append((path, len(data)))
            self._bytes += len(data)
        self.written += 1
        self._enforce_budget()

    def _enforce_budget(self) -> None:
        while self._bytes > self.budget and self._files:
            path, size = self._files.popleft()
            path.unlink(missing_ok=True)
            self._bytes -= size
            self.deleted += 1

    @property
    def bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        self._queue.put(None)
        self._thread.join(timeout=30)
