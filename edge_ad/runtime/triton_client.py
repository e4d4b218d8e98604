"""Triton client backend: the raw maps come from a Triton Inference Server, the rest stays local.

`edge_ad.load(bundle, backend="triton", triton_url="gpu-server:8001")` sends each prepared uint8 batch
to the server's model (`<model>_trt` when it is ready, else `<model>_onnx`, both written by
`edge-ad export BUNDLE --triton DIR`) over gRPC (tritonclient); the server's dynamic batcher merges
the requests of many cameras. The bundle supplies the heatmap parameters and the calibration, so
the results equal the local backends'. Needs `pip install "tritonclient[grpc]"` (edge_ad[triton]).

Unverified against a running server: Triton cannot run where this was written; the repository it
talks to is checked against Triton's config schema in the tests.
"""

from __future__ import annotations

import numpy as np

from edge_ad.bundle import Bundle, check_name
from edge_ad.runtime.backend import BaseBackend, LoadOptions

__all__ = ["TritonBackend", "model_names", "open_triton"]


def model_names(bundle: Bundle) -> dict[str, str]:
    """The repository's model names of a bundle (export/edge_ad_export/triton_repository.py writes them): folder names, so the
    model name must be a plain identifier (a BundleError otherwise)."""
    name = check_name(bundle.meta.get("model"), "model", str(bundle.path))
    return {"onnx": f"{name}_onnx", "tensorrt": f"{name}_trt"}


class TritonBackend(BaseBackend):
    """infer(uint8 N x H x W x 3) -> raw maps, computed by a Triton server."""

    name = "triton"

    def __init__(self, bundle: Bundle, *, url: str = "localhost:8001", model: str | None = None,
                 seed: int | None = None, timeout_s: float = 10.0) -> None:
        try:
            import tritonclient.grpc as grpcclient
        except ImportError:
            raise RuntimeError('the Triton backend needs tritonclient: pip install "edge_ad[triton]" '
                               '(or "tritonclient[grpc]")') from None
        names = model_names(bundle)                     # checked before anything goes on the wire
        self.input = check_name(bundle.meta["input"]["name"], "input.name", str(bundle.path))
        self.output = check_name(bundle.meta["outputs"][0]["name"], "outputs[0].name", str(bundle.path))
        graph_inputs = bundle.meta.get("graph_inputs", {})
        if seed is not None and any(seed != g["seed"] for g in graph_inputs.values()):
            raise ValueError("the Triton repository holds the bundle's own noise seed; drop seed= or re-export")
        self.grpc = grpcclient
        self.url, self.timeout = url, timeout_s
        self.client = grpcclient.InferenceServerClient(url=url)
        try:
            live = self.client.is_server_live(client_timeout=timeout_s)
        except Exception as err:  # noqa: BLE001 - tritonclient raises its own InferenceServerException
            raise ConnectionError(f"no Triton server answers at {url} ({err}); start tritonserver "
                                  "--model-repository DIR with DIR from `edge-ad export BUNDLE --triton DIR`") from err
        if not live:
            raise ConnectionError(f"the Triton server at {url} is not live")
        candidates = [model] if model else [names["tensorrt"], names["onnx"]]
        self.model = next((m for m in candidates if self.client.is_model_ready(m)), None)
        if self.model is None:
            raise ConnectionError(f"the Triton server at {url} has none of the models {candidates} ready; load the "
                                  "repository written by `edge-ad export BUNDLE --triton DIR`")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        request = self.grpc.InferInput(self.input, list(batch.shape), "UINT8")
        request.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.uint8))
        wanted = self.grpc.InferRequestedOutput(self.output)
        result = self.client.infer(self.model, [request], outputs=[wanted], client_timeout=self.timeout)
        return result.as_numpy(self.output)

    def close(self) -> None:
        self.client.close()


def open_triton(bundle: Bundle, options: LoadOptions) -> TritonBackend:
    """The registry's factory: a single-graph bundle's model on the Triton server at `options.triton_url`
    (default localhost:8001)."""
    return TritonBackend(bundle, url=options.triton_url or "localhost:8001", seed=options.seed)
