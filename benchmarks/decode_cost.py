"""CPU cost of decoding one 1080p H.264 camera at 15 FPS, in software, on this machine.

    python benchmarks/decode_cost.py --json benchmarks/results/decode-cpu.json

An RTSP camera on the loopback (GStreamer's RTSP server from tests/servers, which sends the file
as it is, at its own pace, without decoding it) serves a 1080p H.264 file made by ffmpeg (libx264,
main profile, 4 Mbit/s, a key frame every 2 s: what an IP camera sends). This process reads it as
edge_ad's NetworkSource does (OpenCV's FFmpeg over TCP, grab + retrieve to BGR) for `--seconds`,
and reports its CPU time over the wall time: 100% is one core. Only the reader runs in this
process; the model is not run (its cost is `edge-ad bench`'s).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
from common import environment, write_json

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]                 # the RTSP camera of the tests

from servers.rtsp import RtspCamera, gst_python  # noqa: E402


def make_video(path: Path, seconds: float, fps: int) -> Path:
    """A 1920x1080 H.264 file at `fps` (testsrc2: moving detail, like a scene, not a still)."""
    if path.exists():
        return path
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg is not installed (Debian: ffmpeg)")
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=1920x1080:rate={fps}", "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast",
                    "-profile:v", "main", "-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M", "-g", str(2 * fps),
                    "-pix_fmt", "yuv420p", str(path)], check=True, timeout=900)
    return path


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(url: str, seconds: float, warmup: float = 3.0) -> dict:
    """Read `url` for `seconds` after `warmup`; frames, wall and CPU time of this process."""
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG,
                           [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10000])
    if not cap.isOpened():
        raise RuntimeError(f"cannot open {url}")
    try:
        end_warmup = time.monotonic() + warmup
        while time.monotonic() < end_warmup:
            cap.read()
        frames, shape = 0, None
        wall0, cpu0 = time.monotonic(), cpu_seconds()
        while time.monotonic() - wall0 < seconds:
            if not cap.grab():
                raise RuntimeError("the camera stopped sending")
            ok, image = cap.retrieve()
            frames += int(ok)
            shape = image.shape if ok else shape
        wall, cpu = time.monotonic() - wall0, cpu_seconds() - cpu0
    finally:
        cap.release()
    return {"frames": frames, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "fps": round(frames / wall, 2),
            "cpu_percent_of_one_core": round(100 * cpu / wall, 1), "cpu_ms_per_frame": round(1e3 * cpu / frames, 2),
            "frame_shape": list(shape) if shape else None, "opencv_threads": cv2.getNumThreads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured reading time")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "decode-cost")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    python, why = gst_python()
    if python is None:
        raise RuntimeError(why)
    video = make_video(args.work / f"1080p{args.fps}.mp4", args.seconds + 30, args.fps)
    with RtspCamera(python, video) as camera:
        result = measure(camera.url, args.seconds)
    result.update(source="RTSP H.264 1920x1080 main profile 4 Mbit/s over TCP on the loopback, software decode "
                         "(OpenCV's FFmpeg), grab + retrieve to BGR", target_fps=args.fps,
                  environment=environment(("opencv-python", "numpy")))
    print(result)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
