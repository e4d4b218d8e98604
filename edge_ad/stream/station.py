"""A station: named cameras with their own bundles, run side by side in one process.

    station = Station(load_station_file("station.toml"))
    summary = station.run()            # or: edge-ad stream --config station.toml

Cameras that share a bundle share one Detector (the model is loaded once) and one `GroupStream`,
which batches their frames together as Stream does; groups run side by side, each in its own
thread, so a slow model never holds up another's cameras. Each camera keeps its own operating
point (threshold or sensitivity: the verdict is made per frame from the shared model's score), its
ROI and its tiling (frames with different tilings go to the model in separate calls of the same
loop). The outputs ([outputs]: events file, snapshots, MQTT, webhook, metrics) are one each for the
whole station (shared_sinks.py); a camera's video file is its own. The summary adds up the groups'.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from pathlib import Path

import numpy as np

from edge_ad import __version__
from edge_ad.logs import escape_controls, redact
from edge_ad.stream.pipeline import Stream, stop_on_signals
from edge_ad.stream.shared_sinks import CameraSink, SharedSink
from edge_ad.stream.sources import open_source
from edge_ad.stream.station_file import CameraConfig, StationConfig, StationFileError

__all__ = ["GroupStream", "Station"]

log = logging.getLogger(__name__)


class GroupStream(Stream):
    """A Stream whose sources each have their own operating point and tiling: `judges` maps a source
    name to (threshold, (lo, hi) norm) or is missing it (the detector's own), `views` to (tiles, overlap)."""

    def __init__(self, detector, sources, *, judges: dict, views: dict, **kwargs) -> None:
        super().__init__(detector, sources, **kwargs)
        self.judges, self.views = judges, views

    def _predict(self, frames):
        results: list = [None] * len(frames)
        parts: dict[tuple, list[int]] = {}
        for k, frame in enumerate(frames):
            parts.setdefault(self.views.get(frame.source, (None, None)), []).append(k)
        for (tiles, overlap), rows in parts.items():
            view = {}
            if any(frames[k].roi is not None for k in rows):
                view["roi"] = [frames[k].roi for k in rows]
            if tiles is not None:
                view.update(tiles=tiles, overlap=overlap)
            done = self.detector.predict([frames[k].image for k in rows], color=[frames[k].color for k in rows], **view)
            if len(done) != len(rows):
                raise RuntimeError(f"the detector returned {len(done)} results for {len(rows)} frames")
            for k, result in zip(rows, done):
                results[k] = self._judge(frames[k].source, result)
        return results

    def _judge(self, source: str, result):
        """The verdict at `source`'s own operating point (the score is the shared model's)."""
        judge = self.judges.get(source)
        if judge is None:
            return result
        threshold, (lo, hi) = judge
        return dataclasses.replace(result, normalized_score=float(np.clip((result.score - lo) / (hi - lo), 0.0, 1.0)),
                                   is_anomalous=bool(result.score > threshold))


class _Group:
    """The cameras of one bundle: their detector, stream, thread and outcome."""

    def __init__(self, bundle: Path, cameras: list[CameraConfig], name: str) -> None:
        self.bundle, self.cameras, self.name = bundle, cameras, name
        self.detector = None
        self.stream: GroupStream | None = None
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None


class Station:
    """Build with a `StationConfig`; `run()` streams every camera until the end and returns the summary.
    `stop()` (or SIGINT/SIGTERM during `run`) ends every group after the frames already read."""

    def __init__(self, config: StationConfig, *, on_item=None) -> None:
        self.config, self.on_item = config, on_item
        grouped = _by_bundle(config.cameras)
        labels = _labels(list(grouped))
        self.groups = [_Group(bundle, cams, name) for (bundle, cams), name in zip(grouped.items(), labels)]
        self.shared: list = []                       # the station's outputs, closed after every group
        self.own: list = []                          # the cameras' own sinks
        self.metrics = None
        self._lock_of: dict[int, threading.Lock] = {}
        self._stopping = threading.Event()
        self._t0: float | None = None
        self.seconds = 0.0

    # Building --------------------------------------------------------------------------------------
    def open(self) -> "Station":
        """Load each bundle once, open the sources and the outputs, build one stream per bundle. Errors
        name the station file's line; what was opened is closed again when one fails."""
        try:
            sources = [[self._source(c) for c in g.cameras] for g in self.groups]
            for group in self.groups:
                group.detector = self._load(group)
            self._outputs()
            for group, own in zip(self.groups, sources):
                group.stream = self._stream(group, own)
            out = self.config.outputs
            if out.metrics_port is not None:
                from edge_ad.stream.prometheus import MetricsServer

                self.metrics = self._made(lambda: MetricsServer(self, out.metrics_port, host=out.metrics_host),
                                          out.lines.get("metrics_port"), "[outputs] metrics_port")
        except BaseException:
            self.close()
            raise
        return self

    def _source(self, camera: CameraConfig):
        cfg = self.config
        settings = None if camera.settings.empty else camera.settings
        try:
            source = open_source(camera.spec, reconnect=cfg.retry, realtime=cfg.realtime, loop=cfg.loop,
                                 max_pixels=cfg.max_pixels, settings=settings, transport=camera.transport)
        except (ValueError, OSError) as err:
            raise StationFileError(f"{cfg.where(camera.lines.get('source'))}camera {camera.name!r}: "
                                   f"{redact(escape_controls(str(err)))}", camera.lines.get("source")) from None
        source.name = camera.name
        source.roi = camera.roi
        return source

    def _load(self, group: _Group):
        import edge_ad
        from edge_ad.runtime.engine_builder import stream_profile
        from edge_ad.stream.pipeline import DEFAULT_MAX_BATCH

        first = group.cameras[0]
        batch = self.config.batch or min(len(group.cameras), DEFAULT_MAX_BATCH)
        line = first.lines.get("bundle")
        return self._made(lambda: edge_ad.load(group.bundle, backend=self.config.backend, batch=stream_profile(batch)),
                          line, f"the bundle of camera(s) {', '.join(c.name for c in group.cameras)}")

    def _outputs(self) -> None:
        """The station's outputs, one object each; snapshots first (the messages name the snapshot)."""
        from edge_ad.stream import EventsSink, MqttSink, SnapshotSink, VideoSink, WebhookSink
        from edge_ad.stream.mqtt_sink import DEFAULT_TOPIC

        out = self.config.outputs
        wanted = (("snapshots", lambda: SnapshotSink(out.snapshots, budget_mb=out.snapshot_budget_mb)),
                  ("events", lambda: EventsSink(out.events, frames=out.events_frames, fsync=out.fsync)),
                  ("mqtt", lambda: MqttSink(out.mqtt, topic=out.mqtt_topic or DEFAULT_TOPIC)),
                  ("webhook", lambda: WebhookSink(out.webhook, headers=out.webhook_headers)))
        for key, make in wanted:
            if getattr(out, key) is not None:
                self.shared.append(self._made(make, out.lines.get(key), f"[outputs] {key}"))
        self._lock_of = {id(sink): threading.Lock() for sink in self.shared}
        for sink in self.shared:
            if hasattr(sink, "event"):
                sink.event(self._start_event())
        for camera in self.config.cameras:
            if camera.video is not None:
                video = self._made(lambda: VideoSink(camera.video, fps=out.video_fps), camera.lines.get("video"),
                                   f"camera {camera.name!r}: video")
                self.own.append((camera.name, video))
                video.plan([camera.name])

    def _made(self, make, line: int | None, what: str):
        """make(), its error (a bad URL, a file in use) naming the station file's line."""
        try:
            return make()
        except (ValueError, OSError, RuntimeError, ImportError) as err:
            message = redact(escape_controls(str(err)))
            raise StationFileError(f"{self.config.where(line)}{what}: {message}", line) from err

    def _stream(self, group: _Group, sources: list) -> GroupStream:
        cfg, detector = self.config, group.detector
        sinks = [SharedSink(s, self._lock_of[id(s)], group=group.name, model=detector.model_name) for s in self.shared]
        names = {c.name for c in group.cameras}
        sinks += [CameraSink(video, {name}) for name, video in self.own if name in names]
        judges = {c.name: _operating_point(detector, c) for c in group.cameras
                  if c.threshold is not None or c.sensitivity is not None}
        views = {c.name: (c.tiles, c.overlap if c.tiles is not None else None) for c in group.cameras}
        return GroupStream(detector, sources, judges=judges, views=views, sinks=sinks, batch=cfg.batch,
                           max_frames=cfg.max_frames, duration=cfg.duration, idle_timeout=cfg.idle_timeout,
                           max_pixels=cfg.max_pixels)

    def _start_event(self) -> dict:
        cameras = [{"name": c.name, "source": c.shown, "bundle": str(c.bundle),
                    **{k: v for k, v in (("threshold", c.threshold), ("sensitivity", c.sensitivity),
                                         ("roi", list(c.roi) if c.roi else None),
                                         ("tiles", f"{c.tiles[0]}x{c.tiles[1]}" if c.tiles else None),
                                         ("settings", c.settings.text() or None)) if v is not None}}
                   for c in self.config.cameras]
        return {"event": "station", "time": time.time(), "station": self.config.name, "file": str(self.config.path),
                "edge_ad": __version__, "cameras": cameras}

    # Running ---------------------------------------------------------------------------------------
    @property
    def sources(self) -> list:
        """Every camera's source (for the metrics endpoint)."""
        return [s for g in self.groups if g.stream is not None for s in g.stream.sources]

    @property
    def sinks(self) -> list:
        """The station's outputs and the cameras' own sinks (for the metrics endpoint)."""
        return [*self.shared, *(video for _, video in self.own)]

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """End every group after the frames already read (safe from a signal handler)."""
        self._stopping.set()
        for group in self.groups:
            if group.stream is not None:
                group.stream.stop()

    def run(self) -> dict:
        """Stream every group until it ends (or `stop()`); the station's summary. The outputs are closed
        after the last group, the summary written to them first."""
        if any(g.stream is None for g in self.groups):
            self.open()
        self._t0 = time.monotonic()
        try:
            with stop_on_signals(self):
                for group in self.groups:
                    group.thread = threading.Thread(target=self._run_group, args=(group,), daemon=True,
                                                    name=f"edge_ad-station-{group.name}")
                    group.thread.start()
                while any(g.thread.is_alive() for g in self.groups):
                    for group in self.groups:
                        group.thread.join(0.2)          # short waits: the main thread takes the signals
        finally:
            self.stop()
            for group in self.groups:
                if group.thread is not None:
                    group.thread.join(60)
            self.seconds = time.monotonic() - self._t0
            summary = self.summary()
            self._finish(summary)
        return summary

    def _run_group(self, group: _Group) -> None:
        try:
            for item in group.stream:
                if self.on_item is not None:
                    self.on_item(item)
        except BaseException as err:  # noqa: BLE001 - reported in the summary; the other groups go on
            group.error = err
            expected = isinstance(err, (RuntimeError, ValueError, OSError))     # a bug keeps its traceback
            log.error("cameras %s (bundle %s) stopped: %s", ", ".join(c.name for c in group.cameras), group.name,
                      redact(escape_controls(str(err) or type(err).__name__)), exc_info=not expected)

    def _finish(self, summary: dict) -> None:
        for sink in self.shared:
            if hasattr(sink, "event"):
                try:
                    sink.event({"event": "summary", "time": time.time(), **summary})
                except Exception as err:  # noqa: BLE001 - the other outputs still get it
                    log.error("sink %s: the summary was not written: %s", type(sink).__name__, err)
        self.close()

    def close(self) -> None:
        """Close the outputs, the metrics endpoint and the detectors (each once)."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        for sink in [*self.shared, *(video for _, video in self.own)]:
            try:
                sink.close()
            except Exception as err:  # noqa: BLE001 - one output's close must not keep the others open
                log.error("closing %s failed: %s", type(sink).__name__, err)
        self.shared, self.own = [], []
        for group in self.groups:
            if group.detector is not None:
                group.detector.close()
                group.detector = None

    # The summary -----------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Stream's summary over every camera, plus `groups` (per bundle) and `failed` for the exit code."""
        groups = [self._group_summary(g) for g in self.groups]
        per = {name: {**s, "bundle": g["bundle"]} for g in groups for name, s in g.pop("_sources").items()}
        sources = [s for g in self.groups if g.stream is not None for s in g.stream.sources]
        latencies = np.concatenate([np.asarray(s.stats.latencies_ms, np.float64) for s in sources] or [np.zeros(0)])
        total = sum(p["frames"] for p in per.values())
        seconds = self.seconds or (time.monotonic() - self._t0 if self._t0 is not None else 0.0)
        return {"station": self.config.name, "frames": total, "anomalous": sum(p["anomalous"] for p in per.values()),
                "seconds": round(seconds, 3), "fps": round(total / seconds, 2) if seconds > 0 else 0.0,
                "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2) if latencies.size else 0.0,
                "latency_ms_p99": round(float(np.percentile(latencies, 99)), 2) if latencies.size else 0.0,
                "dropped": sum(p["dropped"] for p in per.values()), "corrupt": sum(p["corrupt"] for p in per.values()),
                "sources": per, "groups": groups,
                "sinks": [s.summary() for s in self.shared if callable(getattr(s, "summary", None))],
                "failed": _failed(groups)}

    def _group_summary(self, group: _Group) -> dict:
        cameras = [c.name for c in group.cameras]
        if group.stream is None:
            return {"bundle": str(group.bundle), "cameras": cameras, "frames": 0, "_sources": {},
                    "failed": {"all_sources_failed": True, "all_inference_failed": False, "reason": "not started"}}
        s = group.stream.summary()
        failed = dict(s["failed"])
        if group.error is not None and not failed["reason"]:
            failed.update(all_sources_failed=s["frames"] == 0,
                          reason=redact(escape_controls(str(group.error) or type(group.error).__name__)))
        return {"bundle": str(group.bundle), "model": group.stream.detector.model_name if group.detector else None,
                "cameras": cameras, "batch": s["batch"], "frames": s["frames"], "fps": s["fps"],
                "anomalous": s["anomalous"], "failed": failed, "_sources": s["sources"]}


def _by_bundle(cameras: list[CameraConfig]) -> dict[Path, list[CameraConfig]]:
    """Cameras grouped by the bundle they use (one folder, however it was written), in file order."""
    groups: dict[Path, list[CameraConfig]] = {}
    for camera in cameras:
        groups.setdefault(camera.bundle.resolve(), []).append(camera)
    return groups


def _labels(bundles: list[Path]) -> list[str]:
    """A short distinct name per bundle for events and logs: its folder's name, or more of its path
    when two bundles share it (runs/a/bundle, runs/b/bundle -> a/bundle, b/bundle)."""
    for depth in range(1, max(len(b.parts) for b in bundles) + 1):
        labels = ["/".join(b.parts[-depth:]) for b in bundles]
        if len(set(labels)) == len(labels):
            return labels
    return [str(b) for b in bundles]


def _operating_point(detector, camera: CameraConfig) -> tuple[float, tuple[float, float]]:
    """(threshold, (lo, hi) score norm) of `camera`'s threshold or sensitivity on `detector`'s calibration,
    computed on a copy (the shared detector keeps its own)."""
    judge = copy.copy(detector)
    threshold = judge.set_threshold(camera.threshold, sensitivity=camera.sensitivity)
    return threshold, tuple(judge.image_norm)


def _failed(groups: list[dict]) -> dict:
    """Whether the station inspected nothing: every group failed (its sources, or its inference)."""
    failing = [g for g in groups if g["failed"]["all_sources_failed"] or g["failed"]["all_inference_failed"]]
    if not groups or len(failing) < len(groups):
        return {"all_sources_failed": False, "all_inference_failed": False, "reason": ""}
    inference = all(g["failed"]["all_inference_failed"] for g in groups)
    reason = "; ".join(f"{', '.join(g['cameras'])}: {g['failed']['reason']}" for g in groups)
    return {"all_sources_failed": not inference, "all_inference_failed": inference, "reason": reason}
