"""A Prometheus endpoint for a running stream: FPS, latency, drops, reconnects and anomalies per source, and
per network sink (MQTT, webhook) the messages delivered, dropped, refused and retried.

The figures are read from the stream's own counters at scrape time (a custom collector on a
private registry), so the hot loop does no extra bookkeeping for them, and two streams in one
process never collide. Needs prometheus-client (a dependency of edge_ad; pure Python).
"""

from __future__ import annotations

import logging
from typing import Iterator

from edge_ad.stream.stats import LATENCY_BUCKETS

log = logging.getLogger(__name__)

STATES = ("connecting", "connected", "reconnecting", "ended", "failed", "stopped")
_COUNTERS = (  # (metric name without _total, help, SourceStats attribute)
    ("edge_ad_frames_processed", "Frames run through the model", "processed"),
    ("edge_ad_frames_read", "Frames read from the source", "frames_read"),
    ("edge_ad_frames_dropped", "Frames a live source replaced before the model took them", "frames_dropped"),
    ("edge_ad_frames_corrupt", "Frames skipped because they could not be decoded or converted", "frames_corrupt"),
    ("edge_ad_frames_too_large", "Images or frames skipped for being over the pixel limit (also in corrupt)",
     "frames_too_large"),
    ("edge_ad_anomalies", "Frames judged anomalous", "anomalous"),
    ("edge_ad_reconnects", "Successful reconnections after a lost connection", "reconnects"),
    ("edge_ad_inference_errors", "Frames whose inference failed", "inference_errors"),
)


class StreamCollector:
    """prometheus_client collector over a Stream's per-source stats."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        sources = self.stream.sources
        for name, help_text, attr in _COUNTERS:
            family = CounterMetricFamily(name, help_text, labels=["source"])
            for s in sources:
                family.add_metric([s.name], getattr(s.stats, attr))
            yield family
        fps = GaugeMetricFamily("edge_ad_fps", "Frames processed per second over the last 10 s", labels=["source"])
        gap = CounterMetricFamily("edge_ad_disconnected_seconds", "Time without a connection after a loss",
                                  labels=["source"])
        state = GaugeMetricFamily("edge_ad_source_state", "1 for the source's current state", labels=["source", "state"])
        latency = HistogramMetricFamily("edge_ad_latency_seconds", "From frame read to result ready", labels=["source"])
        for s in sources:
            fps.add_metric([s.name], s.stats.fps())
            gap.add_metric([s.name], s.stats.gap_seconds)
            for st in STATES:
                state.add_metric([s.name, st], float(s.stats.state == st))
            latency.add_metric([s.name], _buckets(s.stats.bucket_counts), s.stats.latency_sum_s)
        yield from (fps, gap, state, latency)
        yield from _sink_families(self.stream.sinks)


_SINK_COUNTERS = (  # (metric name without _total, help, key of a network sink's summary())
    ("edge_ad_sink_delivered", "Messages a network sink (MQTT, webhook) delivered", "delivered"),
    ("edge_ad_sink_dropped", "Messages dropped because the sink's queue was full (the endpoint down or slow)",
     "dropped"),
    ("edge_ad_sink_refused", "Messages the endpoint refused for good (not retried)", "refused"),
    ("edge_ad_sink_retries", "Failed send attempts, each retried with back-off", "retries"),
)


def _sink_families(sinks: list) -> Iterator:
    """Counters and gauges of the sinks that report delivery (those with summary(): MQTT, webhook)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    reports = [report for report in (_sink_report(sink) for sink in sinks) if report is not None]
    labels = ["sink", "kind"]
    for name, help_text, key in _SINK_COUNTERS:
        family = CounterMetricFamily(name, help_text, labels=labels)
        for r in reports:
            family.add_metric([r["sink"], r["kind"]], r[key])
        yield family
    queued = GaugeMetricFamily("edge_ad_sink_queued", "Messages waiting in the sink's queue", labels=labels)
    connected = GaugeMetricFamily("edge_ad_sink_connected", "1 while the sink's last send succeeded", labels=labels)
    for r in reports:
        queued.add_metric([r["sink"], r["kind"]], r["queued"])
        connected.add_metric([r["sink"], r["kind"]], float(bool(r["connected"])))
    yield from (queued, connected)


def _sink_report(sink) -> dict | None:
    summary = getattr(sink, "summary", None)
    if not callable(summary):
        return None
    report = summary()
    needed = {"sink", "kind", "queued", "connected", *(key for _, _, key in _SINK_COUNTERS)}
    return report if isinstance(report, dict) and needed <= report.keys() else None


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Cumulative (upper bound, count) pairs ending with +Inf, as Prometheus histograms want."""
    out, total = [], 0
    for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], counts):
        total += count
        out.append((bound, total))
    return out


class MetricsServer:
    """Serve `/metrics` for `stream` on host:port until `close()`. port=0 picks a free port (see `.port`).
    The default host is the loopback; give 0.0.0.0 for a Prometheus server on another machine."""

    def __init__(self, stream, port: int, host: str = "127.0.0.1") -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise RuntimeError("the metrics endpoint needs prometheus-client: pip install prometheus-client") from None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StreamCollector(stream))
        try:
            self.server, self.thread = start_http_server(port, addr=host, registry=registry)
        except OSError as err:
            raise OSError(f"cannot serve metrics on {host}:{port} ({err}); choose another --metrics-port") from err
        self.port = self.server.server_port
        log.info("Prometheus metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
