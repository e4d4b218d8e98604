"""Which decoder reads an H.264/H.265 stream: the CPU (FFmpeg in software, the tested default) or the
NVIDIA decoder (NVDEC) where the box has one.

- **Jetson**: an RTSP stream is read through a GStreamer pipeline ending in nvv4l2decoder (NVDEC) and
  an appsink, opened by OpenCV's GStreamer backend (`jetson_pipeline`). Needs an OpenCV built with
  GStreamer: JetPack's (`apt install python3-opencv`) is; pip's opencv-python(-headless) wheels are
  not, so with them this path is unavailable and says so.
- **x86 with an NVIDIA GPU**: OpenCV's FFmpeg backend is asked for hardware decoding
  (`CAP_PROP_HW_ACCELERATION = VIDEO_ACCELERATION_ANY`, with `hw_decoders_any;cuda` in FFmpeg's
  capture options). Whether it decodes on the GPU depends on the FFmpeg OpenCV was built with;
  after opening, the capture is asked which acceleration it uses (`CAP_PROP_HW_ACCELERATION`), and
  the answer decides, not the request.

Modes (`decode=` of a source): `software` (default): FFmpeg on the CPU, as always. `auto`: the NVIDIA
decoder where this box has one, else software (logged once, with the reason). `hardware`: the NVIDIA
decoder or a clear error saying why it is absent (never a silent fallback).

Unverified: the Jetson pipeline and the FFmpeg CUDA path are written against the documented
GStreamer, NVIDIA (Accelerated GStreamer guide) and OpenCV videoio APIs and have not run on a
Jetson or with a CUDA-enabled FFmpeg here; the selection logic and the software default are tested.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import cv2

__all__ = ["DecodeFacts", "DecodePlan", "HardwareDecodeUnavailable", "acceleration_in_use", "choose_decoder",
           "jetson_pipeline"]

log = logging.getLogger("edge_ad.stream.sources")

SOFTWARE, JETSON, FFMPEG_HW = "software", "jetson-nvv4l2decoder", "ffmpeg-hw"
RTSP_LATENCY_MS = 200              # rtspsrc's jitter buffer: a few frames at 15-30 FPS
_ACCELERATIONS = {getattr(cv2, name): name.removeprefix("VIDEO_ACCELERATION_").lower()
                  for name in dir(cv2) if name.startswith("VIDEO_ACCELERATION_")}


class HardwareDecodeUnavailable(ValueError):
    """Hardware decoding was required (decode=hardware) and this box or this OpenCV cannot do it."""


@dataclass(frozen=True)
class DecodeFacts:
    """What this box offers for decoding, as `probe()` finds it (tests build their own)."""

    jetson: bool = False             # an NVIDIA Jetson (L4T)
    nvidia_gpu: bool = False         # an NVIDIA driver with a GPU (x86 or an SBSA arm64 server)
    opencv_gstreamer: bool = False   # OpenCV was built with its GStreamer backend
    opencv_ffmpeg: bool = True       # OpenCV was built with its FFmpeg backend
    nvv4l2decoder: bool = False      # GStreamer's NVDEC element is installed (JetPack)

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def probe() -> "DecodeFacts":
        """The facts of this box (cached: they do not change while a process runs)."""
        jetson = _is_jetson()
        return DecodeFacts(jetson=jetson, nvidia_gpu=_has_nvidia_driver(),
                           opencv_gstreamer=_has_backend(cv2.CAP_GSTREAMER), opencv_ffmpeg=_has_backend(cv2.CAP_FFMPEG),
                           nvv4l2decoder=jetson and _gst_element("nvv4l2decoder"))


@dataclass(frozen=True)
class DecodePlan:
    """How to open one source: `target` (a URL, path or pipeline) with `api`, capture `params`, and the
    FFmpeg `options` to add; `kind` names the decoder, `note` why it was chosen."""

    kind: str
    target: str
    api: int = cv2.CAP_FFMPEG
    params: tuple[int, ...] = ()
    options: dict[str, str] = field(default_factory=dict)
    note: str = ""
    required: bool = False           # decode=hardware: a software decode after opening is an error

    @property
    def hardware(self) -> bool:
        return self.kind != SOFTWARE


def choose_decoder(target: str, mode: str | None, *, kind: str, codec: str | None = None,
                   transport: str | None = None, facts: DecodeFacts | None = None) -> DecodePlan:
    """The plan for a source of `kind` ("rtsp", "http", "file", "camera", "pipeline") at `target`.

    `mode` None or "software": FFmpeg on the CPU. "auto": the NVIDIA decoder when this box has one,
    else software with the reason in `note`. "hardware": the NVIDIA decoder, or
    HardwareDecodeUnavailable saying why not and what to do."""
    mode = mode or "software"
    if mode == "software":
        return DecodePlan(SOFTWARE, target)
    facts = facts or DecodeFacts.probe()
    plan, why = _hardware_plan(target, kind=kind, codec=codec or "h264", transport=transport, facts=facts)
    if plan is not None:
        return DecodePlan(plan.kind, plan.target, plan.api, plan.params, plan.options, plan.note,
                          required=mode == "hardware")
    if mode == "hardware":
        raise HardwareDecodeUnavailable(f"hardware decoding was asked (decode=hardware) but {why}; use decode=auto "
                                        "(hardware where available, else software) or decode=software")
    return DecodePlan(SOFTWARE, target, note=f"decoding in software: {why}")


def _hardware_plan(target: str, *, kind: str, codec: str, transport: str | None,
                   facts: DecodeFacts) -> tuple[DecodePlan | None, str]:
    """(the hardware plan, "") or (None, why there is none) for this source on this box."""
    if kind == "camera":
        return None, "a local camera (V4L2) sends raw or MJPEG frames: there is no H.264 stream to decode"
    if kind == "pipeline":
        return None, "a GStreamer pipeline given as the source chooses its own decoder"
    if facts.jetson:
        return _jetson_plan(target, kind=kind, codec=codec, transport=transport, facts=facts)
    if facts.nvidia_gpu:
        if not facts.opencv_ffmpeg:
            return None, "this OpenCV was built without FFmpeg"
        options = {"hw_decoders_any": "cuda"}
        params = (cv2.CAP_PROP_HW_ACCELERATION, cv2.VIDEO_ACCELERATION_ANY)
        return DecodePlan(FFMPEG_HW, target, cv2.CAP_FFMPEG, params, options,
                          note="OpenCV's FFmpeg asked for NVDEC (hw_decoders_any;cuda); checked after opening"), ""
    return None, ("this machine has no NVIDIA decoder: it is not a Jetson (no /etc/nv_tegra_release) and has no "
                  "NVIDIA GPU driver (no /proc/driver/nvidia)")


def _jetson_plan(target: str, *, kind: str, codec: str, transport: str | None,
                 facts: DecodeFacts) -> tuple[DecodePlan | None, str]:
    if kind != "rtsp":
        return None, ("on a Jetson, hardware decoding is built for rtsp:// streams (a GStreamer pipeline); for a "
                      f"{kind} source give your own pipeline ending in appsink as the source")
    if not facts.opencv_gstreamer:
        return None, ("this OpenCV was built without GStreamer, which the Jetson decoder (nvv4l2decoder) needs: "
                      "pip's opencv-python(-headless) wheels are; use JetPack's OpenCV (apt install python3-opencv, "
                      "and a virtualenv made with --system-site-packages) or build OpenCV with -D WITH_GSTREAMER=ON")
    if not facts.nvv4l2decoder:
        return None, ("GStreamer's nvv4l2decoder element is missing (JetPack's nvidia-l4t-gstreamer package); "
                      "check with gst-inspect-1.0 nvv4l2decoder")
    return DecodePlan(JETSON, jetson_pipeline(target, codec=codec, transport=transport), cv2.CAP_GSTREAMER,
                      note="NVDEC through GStreamer (nvv4l2decoder)"), ""


def jetson_pipeline(url: str, *, codec: str = "h264", transport: str | None = None,
                    latency_ms: int = RTSP_LATENCY_MS) -> str:
    """The GStreamer pipeline that decodes an RTSP H.264/H.265 stream on a Jetson's NVDEC and hands BGR
    frames to OpenCV (one buffer, dropping old ones: a live source keeps only the newest frame).
    Unverified (no Jetson here): written from NVIDIA's Accelerated GStreamer guide."""
    if codec not in ("h264", "h265"):
        raise ValueError(f"codec must be h264 or h265, got {codec!r}")
    protocols = f" protocols={transport}" if transport else ""
    location = url.replace('"', "%22")
    return (f'rtspsrc location="{location}" latency={int(latency_ms)}{protocols} ! rtp{codec}depay ! {codec}parse ! '
            "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
            "appsink drop=true max-buffers=1 sync=false")


def acceleration_in_use(cap: cv2.VideoCapture) -> str:
    """The hardware acceleration an opened FFmpeg capture really uses ("none" for software decoding),
    from `CAP_PROP_HW_ACCELERATION`, which OpenCV sets to the type in use after opening."""
    try:
        value = int(cap.get(cv2.CAP_PROP_HW_ACCELERATION))
    except (cv2.error, ValueError, OverflowError):
        return "none"
    return _ACCELERATIONS.get(value, f"type {value}")


def source_kind(target: str | int) -> str:
    """"camera", "pipeline", "rtsp", "http" or "file" for what a source opens."""
    if isinstance(target, int):
        return "camera"
    text = str(target)
    if "appsink" in text:
        return "pipeline"
    if re.match(r"^rtsps?://", text, re.IGNORECASE):
        return "rtsp"
    if re.match(r"^(https?|rtmp)://", text, re.IGNORECASE):
        return "http"
    return "file"


def _has_backend(api: int) -> bool:
    """Whether this OpenCV can open captures with `api` (built in, or a plugin it found)."""
    try:
        return bool(cv2.videoio_registry.hasBackend(api))
    except (AttributeError, cv2.error):
        return False


def _is_jetson() -> bool:
    if Path("/etc/nv_tegra_release").exists():
        return True
    try:
        return "jetson" in Path("/proc/device-tree/model").read_text(errors="replace").lower()
    except OSError:
        return False


def _has_nvidia_driver() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def _gst_element(name: str) -> bool:
    """Whether GStreamer has the element `name` (gst-inspect-1.0 --exists; False without GStreamer's tools)."""
    inspect = shutil.which("gst-inspect-1.0")
    if inspect is None:
        return False
    try:
        return subprocess.run([inspect, "--exists", name], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
