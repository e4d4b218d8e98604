"""The RTSP camera of the tests, driven from the test process: an H.264 file made by ffmpeg, GStreamer's
RTSP server (rtsp_server.py) run as a child process by a Python that has its bindings, and a TCP proxy
that can stall the connections going through it without closing them (a camera that hangs).

The server needs PyGObject, which the project's virtualenv does not have: `gst_python()` finds a
Python that has it (Debian's /usr/bin/python3 with python3-gi) and says why not when none does.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

SERVER = Path(__file__).with_name("rtsp_server.py")
ELEMENTS = ("qtdemux", "h264parse", "rtph264pay")     # what the server's pipeline is made of
_CHECK = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
          "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
          f"print(' '.join(e for e in {ELEMENTS!r} if Gst.ElementFactory.find(e) is None))")


def gst_python() -> tuple[str | None, str]:
    """(a Python that can run rtsp_server.py, "") or (None, why there is none)."""
    candidates = dict.fromkeys(p for p in ("/usr/bin/python3", sys.executable, shutil.which("python3")) if p)
    why = ("no Python with GStreamer's RTSP server bindings (Debian: python3-gi gir1.2-gst-rtsp-server-1.0 "
           "gstreamer1.0-rtsp)")
    for python in candidates:
        try:
            done = subprocess.run([python, "-c", _CHECK], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode != 0:
            continue
        missing = done.stdout.split()
        if not missing:
            return python, ""
        why = (f"GStreamer elements missing: {', '.join(missing)} (Debian: gstreamer1.0-plugins-good "
               "gstreamer1.0-plugins-bad)")
    return None, why


def h264_video(path: Path, *, seconds: int = 120, size: str = "160x120", fps: int = 15) -> tuple[Path | None, str]:
    """(an MP4 with an H.264 test pattern, "") made by ffmpeg/libx264, or (None, why it cannot be made).
    One key frame a second, so a client that connects mid-stream has a picture within a second."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None, "ffmpeg is not installed (Debian: ffmpeg)"
    done = subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                           f"testsrc=size={size}:rate={fps}", "-t", str(seconds), "-c:v", "libx264", "-preset",
                           "ultrafast", "-g", str(fps), "-pix_fmt", "yuv420p", str(path)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return None, f"ffmpeg cannot encode H.264 here: {done.stderr.strip()[-300:]}"
    return path, ""


class RtspCamera:
    """rtsp_server.py serving `video` at rtsp://127.0.0.1:PORT/cam. `stop()` kills it as a camera that
    loses power does; `start()` brings it back on the same port. `protocols`: tcp, udp or any."""

    def __init__(self, python: str, video: Path, *, protocols: str = "any", log: Path | None = None) -> None:
        self.python, self.video, self.protocols = python, video, protocols
        self.log = log or video.with_name(f"rtsp-{protocols}.log")
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self, timeout: float = 30.0) -> "RtspCamera":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([self.python, str(SERVER), "--video", str(self.video), "--port",
                                             str(self.port), "--protocols", self.protocols],
                                            stdout=subprocess.PIPE, stderr=log, text=True)
        line = _first_line(self.process, timeout)
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"the RTSP server did not start ({line!r}); see {self.log}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def __enter__(self) -> "RtspCamera":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    """The first line `process` prints, or "" when it prints none within `timeout` seconds."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0].strip() if lines else ""


class StallingProxy:
    """A TCP proxy from 127.0.0.1:`port` to `target_port`. `stall()` stops forwarding, both ways, on every
    connection open at that moment, and keeps them open: the client sees a camera that hangs, not one
    that hung up. Connections made afterwards are forwarded normally."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._links: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/cam") -> str:
        return f"rtsp://127.0.0.1:{self.port}{path}"

    def stall(self) -> int:
        """Stop forwarding on the connections open now; how many there were."""
        for _, _, stalled in self._links:
            stalled.set()
        return len(self._links)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for client, server, _ in self._links:
            client.close()
            server.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                if self._closed.is_set():
                    return
                continue
            stalled = threading.Event()
            self._links.append((client, server, stalled))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b, stalled), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, stalled: threading.Event) -> None:
        source.settimeout(0.1)
        while not self._closed.is_set():
            if stalled.is_set():
                time.sleep(0.1)                     # hold the connection open, move nothing
                continue
            try:
                data = source.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                target.close()                      # the other side hung up: so does this one
                return
            if stalled.is_set():
                continue                            # read as the stall began: never delivered
            try:
                target.sendall(data)
            except OSError:
                return
