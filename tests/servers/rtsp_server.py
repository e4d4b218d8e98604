"""A real RTSP camera for the tests: GStreamer's RTSP server on the loopback, serving H.264 from a video file.

Run with a Python that has PyGObject and GStreamer's RTSP server bindings (Debian: python3-gi,
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-rtsp, gstreamer1.0-plugins-good/-bad; `.ci/run` installs them).
The project's virtualenv usually has no `gi`, so tests/servers/rtsp.py starts this script with the
system's python3 as a child process:

    python3 rtsp_server.py --video cam.mp4 [--port 0] [--mount /cam] [--protocols tcp|udp|any]

It prints `ready PORT` on stdout once it listens (port 0 picks a free one) and serves until it is
terminated. The file (MP4 with H.264) is sent as it is, at its own pace, without re-encoding: what a
factory IP camera sends. `--protocols` limits the transports the server accepts, so a test can prove
that a client really used the one it asked for. Kept to the standard library and gi: nothing of edge_ad.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402 - after require_version

PROTOCOLS = {"tcp": GstRtsp.RTSPLowerTrans.TCP, "udp": GstRtsp.RTSPLowerTrans.UDP,
             "any": GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP}


def media_factory(video: str, protocols: str) -> GstRtspServer.RTSPMediaFactory:
    """One shared media: the file demuxed, its H.264 parsed and packed into RTP, never decoded."""
    factory = GstRtspServer.RTSPMediaFactory()
    location = video.replace("\\", "\\\\").replace('"', '\\"')
    factory.set_launch(f'( filesrc location="{location}" ! qtdemux ! h264parse ! '
                       "rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory.set_shared(True)
    factory.set_protocols(PROTOCOLS[protocols])
    return factory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", required=True, help="MP4 file with an H.264 video track")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--protocols", choices=sorted(PROTOCOLS), default="any")
    args = parser.parse_args(argv)
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.mount, media_factory(args.video, args.protocols))
    if server.attach(None) == 0:
        print(f"error: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, loop.quit)
    print(f"ready {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
