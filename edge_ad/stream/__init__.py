"""Streaming: sources read by their own threads, the inference pipeline, and sinks."""

from edge_ad.stream.pipeline import Stream, StreamItem
from edge_ad.stream.sinks import EventsSink, VideoSink, WindowSink
from edge_ad.stream.sources import CaptureSource, FolderSource, Frame, Source, open_source, redact

__all__ = ["CaptureSource", "EventsSink", "FolderSource", "Frame", "Source", "Stream", "StreamItem", "VideoSink",
           "WindowSink", "open_source", "redact"]
