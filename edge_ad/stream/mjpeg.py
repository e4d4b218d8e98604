"""A small HTTP MJPEG server: a stand-in IP camera for tests, soak runs and commissioning.

    python -m edge_ad.stream.mjpeg line.mp4 --port 8080      # then: edge-ad stream B --source http://127.0.0.1:8080/

Like a camera, it has one clock: frame k is due at k / fps seconds, and every client receives the
frame that is current (a slow client misses frames, it is never sent old ones). `stop()` closes the
listening socket and every open connection, as a camera that reboots does; `start()` again serves on
the same port. Frames come from a function of the frame number (an array, or raw bytes to send as
the part, e.g. a broken JPEG) or from a video file, looped.
"""

from __future__ import annotations

import argparse
import http.server
import logging
import socketserver
import threading
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

log = logging.getLogger(__name__)

FrameFn = Callable[[int], "np.ndarray | bytes"]
BOUNDARY = b"edgeadframe"


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class MjpegServer:
    """Serve `frames` (a function of the frame number, or a video path) at `fps` on http://host:port/."""

    def __init__(self, frames: FrameFn | str | Path, *, port: int = 0, host: str = "127.0.0.1",
                 fps: float = 15.0, quality: int = 85) -> None:
        self.frames = frames if callable(frames) else _video_frames(Path(frames))
        self.host, self.port, self.fps, self.quality = host, port, fps, quality
        self.sent = 0                     # parts sent over all connections
        self._server: _Server | None = None
        self._running = threading.Event()
        self._clock = time.monotonic()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/stream.mjpg"

    def start(self) -> "MjpegServer":
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = _Server((self.host, self.port), handler)
        self.port = self._server.server_address[1]
        self._running.set()
        threading.Thread(target=self._server.serve_forever, name="edge_ad-mjpeg", daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listening socket and all connections (clients see the stream end)."""
        self._running.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        time.sleep(2.0 / self.fps)           # the connection threads notice and close

    def current(self) -> int:
        return int((time.monotonic() - self._clock) * self.fps)

    def part(self, k: int) -> bytes:
        frame = self.frames(k)
        if isinstance(frame, np.ndarray):
            ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:
                raise ValueError(f"cannot encode frame {k} as JPEG")
            frame = data.tobytes()
        with self._lock:
            self.sent += 1
        return frame

    def __enter__(self) -> "MjpegServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: MjpegServer

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        owner = self.owner
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        last = -1
        try:
            while owner._running.is_set():
                k = owner.current()
                if k == last:
                    time.sleep(max(0.001, (k + 1) / owner.fps - (time.monotonic() - owner._clock)))
                    continue
                data = owner.part(k)
                self.wfile.write(b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                 % (BOUNDARY, len(data)) + data + b"\r\n")
                last = k
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass

    def log_message(self, *args) -> None:
        pass


MAX_VIDEO_BYTES = 1 << 30        # the decoded frames held in memory by the test camera


def _video_frames(path: Path) -> FrameFn:
    """Frame k of a video file, looped (decoded once into memory: keep the file short; frames over the
    pixel limit, or more than 1 GiB of decoded frames in all, are refused)."""
    from edge_ad.imaging import check_pixels

    cap = cv2.VideoCapture(str(path))
    try:
        check_pixels(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
                     f"video {path}")
        frames, total = [], 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            total += frame.nbytes
            if total > MAX_VIDEO_BYTES:
                raise ValueError(f"{path} decodes to more than {MAX_VIDEO_BYTES >> 20} MiB of frames; give a shorter "
                                 "or smaller video to the test camera")
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"no frames could be read from {path}")
    return lambda k: frames[k % len(frames)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a video file as an HTTP MJPEG stream (a test camera).")
    parser.add_argument("video")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fps", type=float, default=15.0)
    args = parser.parse_args(argv)
    server = MjpegServer(args.video, port=args.port, host=args.host, fps=args.fps).start()
    print(f"serving {args.video} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
