"""Snapshots of anomalous frames (the original and the heatmap overlay) within a disk budget.

JPEG encoding and the disk writes happen on a background thread, so a slow disk never slows the
inspection: when its queue is full a snapshot is skipped and counted. Each pair is written under
temporary names (`.NAME.partial`) and renamed, so a kill never leaves half a JPEG.

The sink only ever counts and deletes files it wrote itself. Each file it writes is recorded, with
its size and modification time, in a manifest (`.edge_ad-snapshots` in the folder); a later run
adopts an entry only if the file is still the one written (same name pattern, size and time) and
counts it against the budget. Nothing else in the folder is listed, counted or deleted, and no
folder is searched: the only directories it looks into are the per-source folders it wrote to, and
there only for its own `.partial` files left by a run that was killed.

One stream per folder: the sink holds an flock on the folder for its life, and a second SnapshotSink on
it (this process or another) gets InUseError -- its clean-up of partial files and its manifest rewrite
would otherwise undo the first one's work in flight. The budget is at most MAX_BUDGET_MB (1e9 MB).

A full disk: the pair's partial files are removed, the error says "no space left on DIR" (logged
once, then at most once a minute with a count), new snapshots are paused for a few seconds (the
events of those frames say `"snapshot": null` with `snapshot_error`), and a snapshot already named
in the events file that could not be written gets a `snapshot_failed` event.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import stat
import threading
import time
from collections import deque
from pathlib import Path

import cv2

from edge_ad.logs import Throttle
from edge_ad.stream.sinks import DISK_FULL, _overlay, append_whole, disk_error, lock_exclusive, safe_name, to_json

log = logging.getLogger(__name__)

MANIFEST = ".edge_ad-snapshots"
PAUSE_S = (2.0, 60.0)                   # after a failed write: the first pause, and the cap as failures go on
MAX_BUDGET_MB = 1e9                     # a petabyte: a larger budget is a typo (or 1e308), refused
_NAME = r"\d{8}-\d{6}_f\d{9}(?:-\d{1,3})?(?:_heatmap)?\.jpg"
_FILE = re.compile(rf"^{_NAME}$")
_PARTIAL = re.compile(rf"^\.{_NAME}\.partial$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class SnapshotSink:
    """Writes `<folder>/<source>/<time>_f<index>.jpg` and `..._heatmap.jpg` for each anomalous frame,
    keeps its own files under `budget_mb`, and adds the original's path to the item's notes (so the
    events file names it when this sink comes before the EventsSink; `"snapshot": null` with a
    `snapshot_error` when it will not be written)."""

    def __init__(self, folder: str | Path, *, budget_mb: float = 500.0, quality: int = 90, queue_size: int = 16) -> None:
        if isinstance(budget_mb, bool) or not isinstance(budget_mb, (int, float)) or not math.isfinite(budget_mb) \
                or not 0 < budget_mb <= MAX_BUDGET_MB:
            raise ValueError(f"snapshot budget must be a number of MB > 0 and <= {MAX_BUDGET_MB:g}, got {budget_mb!r}")
        if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 100:
            raise ValueError(f"snapshot JPEG quality must be 0..100, got {quality!r}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or not 1 <= queue_size <= 10_000:
            raise ValueError(f"snapshot queue_size must be 1..10000 (0 would be unbounded), got {queue_size!r}")
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"snapshot folder {self.folder} is a file; give a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = self._lock_folder()
        try:
            self._setup(budget_mb, quality, queue_size)
        except BaseException:
            os.close(self._lock)
            raise

    def _lock_folder(self) -> int:
        """An fd on the folder holding an exclusive flock for the sink's life: a second stream on the same
        folder is refused (its clean-up of partial files and its manifest rewrites would undo this one's)."""
        fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
        try:
            lock_exclusive(fd, f"snapshot folder {self.folder}")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _setup(self, budget_mb: float, quality: int, queue_size: int) -> None:
        self.budget = int(budget_mb * 1e6)
        self.quality = quality
        self.written = self.skipped = self.deleted = self.failed = 0
        self._throttle = Throttle(log, 60.0)
        self._manifest_path = self.folder / MANIFEST
        self._manifest_lines = 0
        self._dirs: set[str] = set()
        self._files: deque[tuple[Path, int, int]] = deque(self._adopt())   # (path, size, mtime_ns), oldest first
        self._bytes = sum(size for _, size, _ in self._files)
        try:
            self._manifest = os.open(self._manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                                     | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as err:
            why = disk_error(err, self._manifest_path)
            raise OSError(err.errno, f"cannot keep snapshots in {self.folder}: {why}") from None
        self._tags: dict[str, str] = {}
        self._reserved: set[Path] = set()
        self._events: deque[dict] = deque(maxlen=10_000)
        self._error = ""
        self._paused_until = 0.0
        self._pause = PAUSE_S[0]
        self._warned_small = False
        self._cond = threading.Condition()
        self._pending = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="edge_ad-snapshots", daemon=True)
        self._thread.start()

    # Files of earlier runs ----------------------------------------------------------------------
    def _adopt(self) -> list[tuple[Path, int, int]]:
        """Snapshots that earlier runs wrote here and that are still theirs, oldest first: they count
        against the budget. Also removes those runs' partial files and compacts the manifest."""
        entries, dirs, dropped = self._read_manifest(), set(), 0
        kept = []
        for rel, (size, mtime_ns) in entries.items():
            path = self._own_path(rel)
            if path is None:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size != size or st.st_mtime_ns != mtime_ns:
                dropped += 1                          # replaced or edited since: no longer this sink's file
                continue
            kept.append((path, size, mtime_ns))
            dirs.add(rel.split("/")[0])
        self._dirs = dirs | self._manifest_dirs
        self._remove_partials()
        kept.sort(key=lambda f: f[2])
        if kept or dropped:
            log.info("snapshots: %d file(s) written here by earlier runs count against the budget%s", len(kept),
                     f"; {dropped} listed file(s) changed since and are left alone" if dropped else "")
        self._rewrite_manifest(kept)
        return kept

    def _read_manifest(self) -> dict[str, tuple[int, int]]:
        """{relative path: (size, mtime_ns)} from the manifest; lines that do not parse are ignored."""
        self._manifest_dirs: set[str] = set()
        entries: dict[str, tuple[int, int]] = {}
        try:
            if self._manifest_path.is_symlink() or not self._manifest_path.is_file():
                return entries
            text = self._manifest_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return entries
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                if "dir" in entry and isinstance(entry["dir"], str) and _TAG.match(entry["dir"]):
                    self._manifest_dirs.add(entry["dir"])
                elif isinstance(entry.get("file"), str):
                    entries[entry["file"]] = (int(entry["size"]), int(entry["mtime_ns"]))
            except (ValueError, TypeError, KeyError, AttributeError):
                continue                              # a torn or foreign line: nothing to adopt from it
        return entries

    def _own_path(self, rel: str) -> Path | None:
        """The path of a manifest entry when it has this sink's shape (`<tag>/<snapshot name>`), else None."""
        parts = rel.split("/")
        if len(parts) != 2 or not _TAG.match(parts[0]) or not _FILE.match(parts[1]):
            return None
        return self.folder / parts[0] / parts[1]

    def _remove_partials(self) -> None:
        """Delete `.NAME.partial` files (this sink's own naming only) in the folders it wrote to."""
        for tag in sorted(self._dirs):
            folder = self.folder / tag
            try:
                if folder.is_symlink() or not folder.is_dir():
                    continue
                names = [n for n in os.listdir(folder) if _PARTIAL.match(n)]
            except OSError:
                continue
            for name in names:
                path = folder / name
                try:
                    if stat.S_ISREG(os.lstat(path).st_mode):
                        path.unlink()
                        log.info("snapshots: removed %s, left by a run that was cut off", path)
                except OSError:
                    pass

    def _rewrite_manifest(self, files: list | deque) -> None:
        """Replace the manifest by one that lists `files` and the folders (atomically: temporary + rename)."""
        lines = [to_json({"dir": tag}) for tag in sorted(self._dirs)]
        lines += [to_json({"file": f"{p.parent.name}/{p.name}", "size": size, "mtime_ns": mtime})
                  for p, size, mtime in files]
        tmp = self.folder / f"{MANIFEST}.partial"
        try:
            fd = os.open(tmp, _OPEN_NEW, 0o666)
            try:
                append_whole(fd, "".join(line + "\n" for line in lines).encode())
            finally:
                os.close(fd)
            os.replace(tmp, self._manifest_path)
            self._manifest_lines = len(lines)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            self._throttle(logging.ERROR, "snapshots: cannot rewrite the manifest %s: %s (the old one is kept)",
                           self._manifest_path, disk_error(err, self.folder))

    # The stream's side ----------------------------------------------------------------------------
    def write(self, item) -> None:
        if not item.result.is_anomalous:
            return
        if time.monotonic() < self._paused_until:
            with self._cond:
                self.failed += 1
            self._not_written(item, self._error)
            return
        path = self._name(item)
        with self._cond:
            self._pending += 1
        try:
            self._queue.put_nowait((item, path))
        except queue.Full:
            with self._cond:
                self._pending -= 1
            self.skipped += 1
            self._throttle(logging.WARNING, "snapshot of %s frame %d skipped: the disk writer is behind (%d skipped "
                           "so far)", item.frame.source, item.frame.index, self.skipped)
            self._not_written(item, "skipped: the disk writer is behind")
            return
        self._reserved.add(path)
        item.notes["snapshot"] = str(path)

    @staticmethod
    def _not_written(item, why: str) -> None:
        item.notes["snapshot"] = None
        item.notes["snapshot_error"] = why

    def _name(self, item) -> Path:
        """`<folder>/<tag>/<time>_f<index>.jpg`, with `-1`, `-2`, ... when that name is taken already."""
        source = item.frame.source
        if source not in self._tags:
            self._tags[source] = safe_name(source)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(item.frame.timestamp))
        folder = self.folder / self._tags[source]
        stem = f"{stamp}_f{item.frame.index % 10**9:09d}"
        for k in range(1000):
            name = stem if k == 0 else f"{stem}-{k}"
            path = folder / f"{name}.jpg"
            if path not in self._reserved and not os.path.lexists(path) \
                    and not os.path.lexists(folder / f"{name}_heatmap.jpg"):
                return path
        return path                                    # 1000 taken: _save refuses to replace it

    def take_events(self) -> list[dict]:
        """`snapshot_failed` events since the last call (for the events file)."""
        events = []
        while self._events:
            events.append(self._events.popleft())
        return events

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued snapshot is written or has failed; False on time-out."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    # The writer thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            item, path = job
            try:
                if time.monotonic() < self._paused_until:
                    self._failed(item, path, self._error)
                else:
                    self._save(item, path)
                    self._pause = PAUSE_S[0]
            except OSError as err:
                self._error = disk_error(err, self.folder if err.errno in DISK_FULL else path)
                self._failed(item, path, self._error)
                self._paused_until = time.monotonic() + self._pause
                self._throttle(logging.ERROR, "cannot write snapshot %s: %s; snapshots pause for %.0f s (%d not "
                               "written so far)", path.name, self._error, self._pause, self.failed)
                self._pause = min(PAUSE_S[1], self._pause * 2)
            except Exception as err:  # noqa: BLE001 - one bad frame must not end the stream
                self._failed(item, path, f"cannot encode the snapshot: {err}")
                self._throttle(logging.ERROR, "cannot write snapshot %s: %s", path.name, err)
            finally:
                self._reserved.discard(path)
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def _failed(self, item, path: Path, why: str) -> None:
        with self._cond:
            self.failed += 1
        self._events.append({"event": "snapshot_failed", "source": item.frame.source, "frame": item.frame.index,
                             "snapshot": str(path), "time": time.time(), "reason": why})

    def _save(self, item, path: Path) -> None:
        """Both JPEGs under partial names, the manifest line, then the renames: all or nothing on disk."""
        self._folder(path.parent)
        image = item.frame.image
        if item.frame.color == "RGB":
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        pair = [(path, image), (path.with_name(path.stem + "_heatmap.jpg"), _overlay(item))]
        if any(os.path.lexists(p) for p, _ in pair):
            raise ValueError(f"{path} exists already (written by someone else meanwhile); not replacing it")
        done: list[tuple[Path, Path, int, int]] = []
        try:
            for target, picture in pair:
                ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                if not ok:
                    raise ValueError("JPEG encoding failed")
                tmp = target.with_name(f".{target.name}.partial")
                done.append((tmp, target, *self._write_file(tmp, data.tobytes())))
            self._record([(target, size, mtime) for _, target, size, mtime in done])
        except BaseException:
            for tmp, *_ in done:
                tmp.unlink(missing_ok=True)
            raise
        for tmp, target, size, mtime in done:
            os.replace(tmp, target)
            self._files.append((target, size, mtime))
            self._bytes += size
        self.written += 1
        self._enforce_budget(keep=len(done))

    def _folder(self, folder: Path) -> None:
        """The source's folder, made when missing; refused when it is a symlink (writes stay inside)."""
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise ValueError(f"snapshot folder {folder} is a symlink or not a folder; not writing through it")
        folder.mkdir(exist_ok=True)
        tag = folder.name
        if tag not in self._dirs:
            append_whole(self._manifest, (to_json({"dir": tag}) + "\n").encode())
            self._manifest_lines += 1
            self._dirs.add(tag)

    @staticmethod
    def _write_file(path: Path, data: bytes) -> tuple[int, int]:
        """Write `data` to a new file `path` (never through a symlink); (size, mtime_ns). Removed on failure."""
        fd = os.open(path, _OPEN_NEW, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return st.st_size, st.st_mtime_ns

    def _record(self, files: list[tuple[Path, int, int]]) -> None:
        lines = "".join(to_json({"file": f"{p.parent.name}/{p.name}", "size": size, "mtime_ns": mtime}) + "\n"
                        for p, size, mtime in files)
        append_whole(self._manifest, lines.encode())
        self._manifest_lines += len(files)

    def _enforce_budget(self, keep: int) -> None:
        """Delete this sink's oldest files beyond the budget (never the `keep` newest: the pair just written)."""
        changed = False
        while self._bytes > self.budget and len(self._files) > keep:
            path, size, mtime = self._files.popleft()
            self._bytes -= size
            changed = True
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_mtime_ns == mtime:
                    path.unlink()
                    self.deleted += 1
            except OSError:
                pass                                 # gone already, or not ours any more: leave it
        if self._bytes > self.budget and not self._warned_small:
            self._warned_small = True
            log.warning("snapshots: one snapshot (%d bytes) is larger than the budget of %d bytes; only the newest "
                        "is kept", self._bytes, self.budget)
        if changed and self._manifest_lines > 2 * len(self._files) + 1000:
            self._rewrite_manifest(self._files)

    @property
    def bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        self._queue.put(None)
        self._thread.join(timeout=30)
        if self.failed or self.skipped:
            log.warning("snapshots: %d written, %d not written (%s), %d skipped (writer behind), %d deleted for the "
                        "budget", self.written, self.failed, self._error or "errors above", self.skipped, self.deleted)
        if self._manifest >= 0:
            os.close(self._manifest)
            self._manifest = -1
        if self._lock >= 0:
            os.close(self._lock)                       # releases the folder for another stream
            self._lock = -1
