"""edge_ad: visual anomaly detection on edge GPUs.

Train a published model on images of good parts, export it once into a self-describing bundle, and
run it on a camera, a video file or an RTSP stream with TensorRT or ONNX Runtime. The runtime side
(this package's runtime, stream, bundle and postprocess modules) never imports torch.
"""

__version__ = "0.1.0"


def load(bundle, backend: str = "auto", **kwargs):
    """Open an exported bundle and return a Detector (see edge_ad.runtime.load). Never imports torch."""
    from edge_ad.runtime import load as _load

    return _load(bundle, backend, **kwargs)
