"""Streaming: sources read by their own threads, the inference pipeline, and sinks."""

from edge_ad.stream.sources import CaptureSource, FolderSource, Frame, Source, open_source, redact

__all__ = ["CaptureSource", "FolderSource", "Frame", "Source", "open_source", "redact"]
