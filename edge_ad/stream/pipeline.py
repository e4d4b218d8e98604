"""The streaming loop: frames from one or many sources, batched through the detector, out to the sinks.

    for item in detector.stream(["line1.mp4", "rtsp://cam2/stream"]):
        print(item.frame.source, item.frame.index, item.result.score, item.latency_ms)

Each source has its own reader thread. The loop takes what is ready, one frame per source per
round, up to the batch size, and runs them as one inference; it never waits on a particular
source, so one slow, dead or reconnecting camera never stalls the others. `stop()` (or SIGINT /
SIGTERM under `stop_on_signals`) ends the stream after processing the frames already read.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np

from edge_ad import __version__
from edge_ad.imaging import max_image_pixels
from edge_ad.logs import Throttle, escape_controls, redact
from edge_ad.regions import DEFAULT_OVERLAP, check_overlap, parse_tiles, rois_for
from edge_ad.stream.source_base import Frame, Source
from edge_ad.stream.sources import open_source

if TYPE_CHECKING:                  # the stream runs any detector; it never imports the runtime
    from edge_ad.runtime.result import Result

log = logging.getLogger(__name__)

MAX_INFERENCE_FAILURES = 5         # batches in a row failing with no result: the backend is broken, not one frame
DEFAULT_MAX_BATCH = 8


@dataclass
class StreamItem:
    frame: Frame
    result: Result
    latency_ms: float                                   # from the frame being read to its result being ready
    notes: dict = field(default_factory=dict)           # what sinks added (e.g. the snapshot's path)


class Stream:
    """Iterate to process the sources; `summary()` reports FPS, latency, drops, corrupt frames per source.

    `sources`: one spec or a list (camera index, file, folder, URL, Source, iterable of arrays).
    `batch`: frames per inference (default: one per source, at most the engine's max or 8).
    Ends when every source has ended or failed, after `max_frames` frames or `duration` seconds,
    when no frame came for `idle_timeout` seconds (None: wait for ever), or on `stop()`.
    `max_pixels`: the largest image or frame accepted (default $EDGE_AD_MAX_IMAGE_PIXELS or 50 MP).
    `roi`: the region of interest, x,y,w,h ("x,y,w,h" or four numbers) for every source, or a list with
    one (or None: the whole frame) per source; None keeps each Source's own `roi`. A frame that does not
    contain its source's ROI fails that source (the others go on). `tiles` ("RxC" or (rows, cols)) and
    `overlap`: each frame (or ROI) is cut into tiles run in one batch (see Detector.predict).

    A frame whose inference fails (an error, or a NaN/inf model output) is counted as an inference
    error of its source and logged; the other frames of its batch are run again one by one, so they
    are not lost. `summary()["failed"]` says whether every source failed or every inference failed."""

    def __init__(self, detector, sources, *, sinks: list | None = None, batch: int | None = None,
                 max_frames: int | None = None, duration: float | None = None, idle_timeout: float | None = None,
                 reconnect=None, realtime: bool = False, loop: bool = False, max_pixels: int | None = None,
                 roi=None, tiles=None, overlap: float = DEFAULT_OVERLAP) -> None:
        specs = list(sources) if isinstance(sources, (list, tuple)) else [sources]
        if not specs:
            raise ValueError("stream needs at least one source")
        if any(isinstance(s, np.ndarray) for s in specs):
            raise TypeError("a list of arrays is read as a list of sources: wrap the frames in IterableSource(frames)")
        max_image_pixels(max_pixels)                   # a bad limit (argument or environment) is refused here
        self.detector = detector
        self.batch = _batch_size(batch, len(specs), detector.max_batch)
        self.sources: list[Source] = _unique([open_source(s, reconnect=reconnect, realtime=realtime, loop=loop,
                                                          buffer=max(4, self.batch), max_pixels=max_pixels)
                                              for s in specs])
        self.tiles = None if parse_tiles(tiles) == (1, 1) else parse_tiles(tiles)
        self.overlap = check_overlap(overlap)
        if roi is not None:
            for source, one in zip(self.sources, rois_for(roi, len(self.sources))):
                source.roi = one
        self.sinks = list(sinks or [])
        self.max_frames, self.duration, self.idle_timeout = max_frames, duration, idle_timeout
        self.frames = 0
        self.seconds = 0.0
        self._t0: float | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._turn = 0
        self._failures = 0
        self._fatal = ""                                # why the stream stopped on an error, if it did
        self._sink_errors: dict[int, Throttle] = {}
        self._inference_logs = {s.name: Throttle(log, interval=10.0, burst=5) for s in self.sources}

    @property
    def source(self) -> Source:
        """The first source (the only one of a single-source stream)."""
        return self.sources[0]

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """End after the frames already read (safe from a signal handler or another thread); a remote
        backend (Triton) stops waiting for its server."""
        self._stopping.set()
        self._ready.set()
        interrupt = getattr(getattr(self.detector, "backend", None), "interrupt", None)
        if callable(interrupt):
            interrupt()

    # The loop --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[StreamItem]:
        self._t0 = start = time.monotonic()
        try:                                     # a start that fails still closes the sources and sinks
            self._start()
            idle_since = time.monotonic()
            while not self._stopping.is_set() and not self._limit_reached(start, idle_since):
                frames = self._collect(wait=0.5)
                self._forward_events()
                if frames:
                    idle_since = time.monotonic()
                    yield from self._process(frames)
                elif all(s.finished for s in self.sources):
                    break
            if self._stopping.is_set():
                yield from self._drain()
        finally:
            self.seconds = time.monotonic() - start
            self._finish()

    def _start(self) -> None:
        for source in self.sources:
            source.attach(self._ready)
        started = []
        try:
            for source in self.sources:
                started.append(source.start())
        except BaseException:
            for source in started:
                source.close()
            raise
        self._event({"event": "start", "time": time.time(), "edge_ad": __version__,
                     "model": self.detector.model_name, "backend": self.detector.backend.name,
                     "batch": self.batch, "sources": [s.name for s in self.sources], **self._view_fields()})
        log.info("streaming %d source(s) in batches of up to %d: %s", len(self.sources), self.batch,
                 ", ".join(s.name for s in self.sources))

    def _limit_reached(self, start: float, idle_since: float) -> bool:
        now = time.monotonic()
        if self.max_frames is not None and self.frames >= self.max_frames:
            return True
        if self.duration is not None and now - start >= self.duration:
            log.info("duration of %.0f s reached; stopping", self.duration)
            return True
        if self.idle_timeout is not None and now - idle_since > self.idle_timeout:
            log.warning("no frame from any source for %.0f s; stopping", self.idle_timeout)
            return True
        return False

    def _collect(self, wait: float) -> list[Frame]:
        """Frames that are ready, one per source per round, up to the batch size; waits at most `wait`."""
        self._ready.clear()
        frames = self._take()
        if not frames and not self._stopping.is_set():
            self._ready.wait(wait)
            frames = self._take()
        return frames

    def _take(self) -> list[Frame]:
        limit = self.batch if self.max_frames is None else min(self.batch, self.max_frames - self.frames)
        n, taken, progress = len(self.sources), [], True
        while progress and len(taken) < limit:
            progress = False
            for k in range(n):
                if len(taken) >= limit:
                    break
                frame = self.sources[(self._turn + k) % n].get(timeout=0)
                if frame is not None:
                    taken.append(frame)
                    progress = True
        self._turn = (self._turn + 1) % n
        return taken

    def _drain(self) -> Iterator[StreamItem]:
        """After stop(): read nothing more, process what the sources already hold."""
        for source in self.sources:
            source.stop_reading()
        held = sum(s.buffered for s in self.sources)
        log.info("stopping: processing the %d frame(s) already read", held)
        while frames := self._take():
            yield from self._process(frames)

    def _process(self, frames: list[Frame]) -> Iterator[StreamItem]:
        stats = {s.name: s.stats for s in self.sources}
        fresh = []
        for frame in frames:
            if frame.index <= stats[frame.source].last_index:
                stats[frame.source].duplicates += 1
                log.error("source %s: frame %d came again after frame %d; skipped", frame.source, frame.index,
                          stats[frame.source].last_index)
            else:
                fresh.append(frame)
        results = self._infer(fresh)
        done = time.time()
        now = time.monotonic()
        for frame, result in zip(fresh, results):
            if result is None:
                continue
            item = StreamItem(frame, result, (done - frame.timestamp) * 1e3)
            stats[frame.source].record(frame.index, item.latency_ms, result.is_anomalous, now)
            self.frames += 1
            self._write(item)
            yield item

    def _infer(self, frames: list[Frame]) -> list[Result | None]:
        """One Result per frame; None for a frame whose inference failed or gave a non-finite output
        (counted against its source, logged). A non-finite output fails only its own frames; when a
        batch fails otherwise, its frames are run one by one so the good ones are kept. Raises when
        the backend itself failed MAX_INFERENCE_FAILURES batches in a row with no result at all."""
        if not frames:
            return []
        try:
            results: list[Result | None] = list(self._predict(frames))
            errors: list[BaseException | None] = [None] * len(frames)
        except Exception as err:  # noqa: BLE001 - counted and logged per frame below
            results, errors = self._retry(frames, err)
        for k, result in enumerate(results):
            if result is not None and not _finite(result):
                results[k], errors[k] = None, _NonFinite()
        backend_errors = [e for e in errors if e is not None and not _non_finite(e)]
        for frame, error in zip(frames, errors):
            if error is not None:
                self._frame_failed(frame, error)
        if any(r is not None for r in results):
            self._failures = 0
        elif backend_errors:
            self._failures += 1
            if self._failures >= MAX_INFERENCE_FAILURES:
                last = _text(backend_errors[-1])
                self._fatal = f"inference failed {self._failures} times in a row; last error: {last}"
                raise RuntimeError(self._fatal) from backend_errors[-1]
        return results

    def _retry(self, frames: list[Frame], err: Exception) -> tuple[list, list]:
        """After a failed batch: the Detector's partial results when it says which frames were not finite,
        else each frame run on its own (so one bad frame does not cost the others theirs)."""
        partial = getattr(err, "results", None)
        if _non_finite(err) and isinstance(partial, list) and len(partial) == len(frames):
            return list(partial), [None if r is not None else err for r in partial]
        if len(frames) == 1:
            return [None], [err]
        log.warning("inference failed on a batch of %d frames (%s); running them one by one", len(frames), _text(err))
        results, errors = [], []
        for frame in frames:
            try:
                results.append(self._predict([frame])[0])
                errors.append(None)
            except Exception as one:  # noqa: BLE001 - this frame's error
                results.append(None)
                errors.append(one)
        return results, errors

    def _view_fields(self) -> dict:
        """The ROIs and tiling of the start event, only when set."""
        fields = {}
        if any(s.roi is not None for s in self.sources):
            fields["rois"] = {s.name: list(s.roi) if s.roi is not None else None for s in self.sources}
        if self.tiles is not None:
            fields["tiles"], fields["overlap"] = f"{self.tiles[0]}x{self.tiles[1]}", self.overlap
        return fields

    def _predict(self, frames: list[Frame]) -> list[Result]:
        view = {}                          # only when asked: a detector without these arguments still streams
        if any(f.roi is not None for f in frames):
            view["roi"] = [f.roi for f in frames]
        if self.tiles is not None:
            view.update(tiles=self.tiles, overlap=self.overlap)
        results = self.detector.predict([f.image for f in frames], color=[f.color for f in frames], **view)
        if len(results) != len(frames):
            raise RuntimeError(f"the detector returned {len(results)} results for {len(frames)} frames")
        return results

    def _frame_failed(self, frame: Frame, error: BaseException) -> None:
        """Count a frame whose inference failed against its source, and log it (rate-limited per source)."""
        stats = next(s for s in self.sources if s.name == frame.source).stats
        stats.inference_errors += 1
        stats.last_inference_error = _NonFinite.MESSAGE if _non_finite(error) else _text(error)
        self._inference_logs[frame.source](logging.ERROR, "source %s: frame %d: inference failed: %s (%d so far)",
                                           frame.source, frame.index, stats.last_inference_error,
                                           stats.inference_errors, extra={"source": frame.source})

    # Sinks and events ------------------------------------------------------------------------------
    def _write(self, item: StreamItem) -> None:
        for sink in self.sinks:
            self._guard(sink, sink.write, item)

    def _event(self, event: dict) -> None:
        for sink in self.sinks:
            handler = getattr(sink, "event", None)
            if handler is not None:
                self._guard(sink, handler, event)

    def _forward_events(self) -> None:
        """State changes of the sources, and the sinks' own events (e.g. a snapshot not written), to the sinks."""
        for source in self.sources:
            for event in source.take_events():
                self._event(event)
        for sink in self.sinks:
            take = getattr(sink, "take_events", None)
            if take is not None:
                for event in take():
                    self._event(event)
        take = getattr(getattr(self.detector, "backend", None), "take_events", None)   # a remote backend's connection states
        if callable(take):
            for event in take():
                self._event(event)

    def _guard(self, sink, method, arg) -> None:
        """A failing sink (full disk, closed window) is logged at most once a minute; the stream goes on."""
        try:
            method(arg)
        except Exception as err:  # noqa: BLE001 - inspection continues; the log says what broke
            throttle = self._sink_errors.setdefault(id(sink), Throttle(log, 60.0))
            throttle(logging.ERROR, "sink %s failed: %s (the stream continues; repeated errors are logged once a "
                     "minute)", type(sink).__name__, _text(err))

    def _finish(self) -> None:
        for source in self.sources:
            source.close()
        for sink in self.sinks:                  # background writers finish, so the summary comes last
            flush = getattr(sink, "flush", None)
            if flush is not None:
                try:
                    flush(30.0)
                except Exception as err:  # noqa: BLE001 - the summary must still be written
                    log.error("flushing sink %s failed: %s", type(sink).__name__, _text(err))
        self._forward_events()
        self._event({"event": "summary", "time": time.time(), **self.summary()})
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as err:  # noqa: BLE001 - one sink's close must not keep the others open
                log.error("closing sink %s failed: %s", type(sink).__name__, _text(err))

    # Results -------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Process the sources until the stream ends; return the summary."""
        for _ in self:
            pass
        return self.summary()

    def summary(self) -> dict:
        """Totals (frames, fps, latency percentiles over all sources, drops, corrupt), `sources`: per source
        (with `reason`: why it produced nothing, or None), and `failed`: {"all_sources_failed": bool,
        "all_inference_failed": bool, "reason": str ("" when neither)} for an exit code; `sinks`: the
        delivery counts of the sinks that report them (MQTT, webhook)."""
        seconds = self.seconds or (time.monotonic() - self._t0 if self._t0 is not None else 0.0)
        per = {s.name: s.stats.summary(seconds) for s in self.sources}
        latencies = np.concatenate([np.asarray(s.stats.latencies_ms, np.float64) for s in self.sources])
        total = sum(p["frames"] for p in per.values())
        return {"frames": total, "anomalous": sum(p["anomalous"] for p in per.values()),
                "seconds": round(seconds, 3), "fps": round(total / seconds, 2) if seconds > 0 else 0.0,
                "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2) if latencies.size else 0.0,
                "latency_ms_p99": round(float(np.percentile(latencies, 99)), 2) if latencies.size else 0.0,
                "dropped": sum(p["dropped"] for p in per.values()), "corrupt": sum(p["corrupt"] for p in per.values()),
                "source_state": self.sources[0].stats.state, "batch": self.batch, "sources": per,
                "sinks": [sink.summary() for sink in self.sinks if callable(getattr(sink, "summary", None))],
                "failed": self._failed(per)}

    def _failed(self, per: dict) -> dict:
        """Whether the run as a whole failed: every source failed (or delivered no usable frame), or
        every inference failed (frames came, none got a result); `reason` says why."""
        stats = [s.stats for s in self.sources]
        all_sources = all(p["reason"] for p in per.values())
        all_inference = sum(s.inference_errors for s in stats) > 0 and sum(s.processed for s in stats) == 0
        reason = ""
        if all_inference:
            last = next((s.last_inference_error for s in reversed(stats) if s.last_inference_error), "")
            reason = self._fatal or f"every inference failed ({sum(s.inference_errors for s in stats)} frames): {last}"
        elif all_sources:
            reason = "every source failed: " + "; ".join(f"{name}: {p['reason']}" for name, p in per.items())
        elif self._fatal:
            reason = self._fatal
        return {"all_sources_failed": all_sources, "all_inference_failed": all_inference, "reason": reason}


@contextmanager
def stop_on_signals(stream: Stream, signals: tuple = (signal.SIGINT, signal.SIGTERM)) -> Iterator[Stream]:
    """While inside, SIGINT/SIGTERM stop `stream` gracefully (the frames in flight are processed and
    the sinks closed); a second signal interrupts at once. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield stream
        return

    def handler(signum, _frame) -> None:
        if stream.stopping:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now")
        log.warning("%s received: finishing the frames in flight, then stopping", signal.Signals(signum).name)
        stream.stop()

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield stream
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _batch_size(batch: int | None, sources: int, limit: int | None) -> int:
    if batch is not None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if limit is not None and batch > limit:
            raise ValueError(f"batch {batch} is above what the engine takes ({limit}); rebuild it with "
                             f"`edge-ad export BUNDLE --engine --batch 1,{batch},{batch}` or lower --batch")
        return batch
    return max(1, min(sources, limit or DEFAULT_MAX_BATCH))


def _finite(result: Result) -> bool:
    """Whether a result's scores and map are finite numbers (a NaN output must never read as "normal")."""
    if not (math.isfinite(result.score) and math.isfinite(result.normalized_score)):
        return False
    crop = getattr(result, "crop_map", None)
    return not isinstance(crop, np.ndarray) or bool(np.isfinite(crop).all())


class _NonFinite(ValueError):
    """A result whose score or map is NaN/inf (caught here too, whatever the detector checked)."""

    MESSAGE = "the model's output is not finite (NaN or inf); no result for this frame (never 'normal')"
    indices: list[int] = []

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


def _non_finite(err: BaseException) -> bool:
    """Whether `err` is a non-finite model output for some frames (the Detector's InferenceError carries
    `indices`): those frames fail, the backend works."""
    return isinstance(err, ValueError) and hasattr(err, "indices")


def _text(err: BaseException | None) -> str:
    """An error as one line of text for logs, events and the summary: redacted, control characters escaped."""
    if err is None:
        return ""
    return redact(escape_controls(str(err) or type(err).__name__))


def _unique(sources: list[Source]) -> list[Source]:
    """Give sources with the same name (two cameras on one URL, two folders called `images`) #2, #3, ...:
    every name is distinct afterwards, whatever the inputs. A name as given is kept by its first holder;
    a repeat gets the lowest `name#k` that no source has or was given (so `cam`, `cam`, `cam#2` become
    `cam`, `cam#3`, `cam#2`, not two `cam#2`)."""
    given = {source.name for source in sources}
    taken: set[str] = set()
    for source in sources:
        if source.name in taken:
            k = 2
            while f"{source.name}#{k}" in taken or f"{source.name}#{k}" in given:
                k += 1
            source.name = f"{source.name}#{k}"
        taken.add(source.name)
    return sources
