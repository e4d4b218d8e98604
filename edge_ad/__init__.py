"""edge_ad: visual anomaly detection on edge GPUs.

Train a published model on images of good parts, export it once into a self-describing bundle, and
run it on a camera, a video file or an RTSP stream with TensorRT or ONNX Runtime. The runtime side
(this package's runtime, stream, bundle and postprocess modules) never imports torch.
"""

import importlib.util as _util

__version__ = "0.1.0"

# OpenCV is part of the base install everywhere but on aarch64, where it must come from the system (a
# Jetson's JetPack OpenCV has GStreamer and CUDA; a pip wheel would shadow it): say so before a bare
# "No module named cv2" does.
if _util.find_spec("cv2") is None:
    raise ImportError("edge_ad needs OpenCV (the module cv2) and none is installed. x86: reinstall edge_ad (its "
                      "base install has opencv-python-headless). Jetson: use JetPack's OpenCV (sudo apt install "
                      "python3-opencv, in a venv made with --system-site-packages), never a pip OpenCV wheel. "
                      'Other ARM boxes: pip install "edge_ad[opencv]".')


def load(bundle, backend: str = "auto", **kwargs):
    """Open an exported bundle and return a Detector (see edge_ad.runtime.load). Never imports torch."""
    from edge_ad.runtime import load as _load

    return _load(bundle, backend, **kwargs)
