"""Streaming: sources read by their own threads, the batched multi-source pipeline, sinks, metrics."""

from edge_ad.logs import redact
from edge_ad.stream.capture import CameraSource, CaptureSource, NetworkSource, Reconnect, VideoFileSource
from edge_ad.stream.mqtt_sink import MqttSink
from edge_ad.stream.pipeline import Stream, StreamItem, stop_on_signals
from edge_ad.stream.sinks import EventsSink, VideoSink, WindowSink
from edge_ad.stream.snapshots import SnapshotSink
from edge_ad.stream.sources import FolderSource, Frame, ImageFileSource, IterableSource, Source, open_source
from edge_ad.stream.webhook_sink import WebhookSink

__all__ = ["CameraSource", "CaptureSource", "EventsSink", "FolderSource", "Frame", "ImageFileSource",
           "IterableSource", "MqttSink", "NetworkSource", "Reconnect", "SnapshotSink", "Source", "Stream", "StreamItem",
           "VideoFileSource", "VideoSink", "WebhookSink", "WindowSink", "open_source", "redact", "stop_on_signals"]
