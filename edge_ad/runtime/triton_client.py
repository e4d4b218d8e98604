"""Triton client backend: the raw maps come from a Triton Inference Server, the rest stays local.

`edge_ad.load(bundle, backend="triton", triton_url="gpu-server:8001")` sends each prepared uint8 batch
to the server's model (`<model>_trt` when it is ready, else `<model>_onnx`, both written by
`edge-ad export BUNDLE --triton DIR`) over gRPC (tritonclient); the server's dynamic batcher merges
the requests of many cameras (and many line PCs). The bundle supplies the heat-map parameters and
the calibration, so the results equal the local backends': the heat-map kernel runs here, on the raw
maps the server returns. SPR's seeded noise is frozen into the served graph at the bundle's seed.

At load the server must answer, and the model must be ready with the bundle's tensors (a
ModelNotServed or ServedModelMismatch error naming the model, the server and the bundle otherwise);
its max_batch_size becomes the backend's `max_batch`. Later, a server that goes away is waited for
and the request sent again, like a camera that reconnects (edge_ad.runtime.triton_link: states,
back-off, gaps counted; `reconnect` sets the policy, `stats`/`link_summary()` report it).

Tested against a real tritonserver (2.51, CPU, its Python backend running the exported ONNX graph;
tests/test_triton_server.py). Unverified here: the TensorRT-plan model (`<model>_trt`) on a GPU server.
Needs `pip install "tritonclient[grpc]"` (edge_ad[triton]).
"""

from __future__ import annotations

import numpy as np

from edge_ad.bundle import Bundle, check_name
from edge_ad.runtime.backend import BaseBackend, LoadOptions
from edge_ad.runtime.triton_link import LinkStats, ServerLink
from edge_ad.runtime.triton_served import ServedModelMismatch, ServedSpec, check_config, missing_model
from edge_ad.stream.capture import Reconnect

__all__ = ["TritonBackend", "model_names", "open_triton"]


def model_names(bundle: Bundle) -> dict[str, str]:
    """The repository's model names of a bundle (export/edge_ad_export/triton_repository.py writes them): folder names, so the
    model name must be a plain identifier (a BundleError otherwise)."""
    name = check_name(bundle.meta.get("model"), "model", str(bundle.path))
    return {"onnx": f"{name}_onnx", "tensorrt": f"{name}_trt"}


def _grpc_module():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        raise RuntimeError('the Triton backend needs tritonclient: pip install "edge_ad[triton]" '
                           '(or "tritonclient[grpc]")') from None
    return grpcclient


class TritonBackend(BaseBackend):
    """infer(uint8 N x H x W x 3) -> raw maps, computed by a Triton server (module doc)."""

    name = "triton"

    def __init__(self, bundle: Bundle, *, url: str = "localhost:8001", model: str | None = None,
                 seed: int | None = None, timeout_s: float = 10.0, reconnect: Reconnect | None = None) -> None:
        grpc = _grpc_module()
        names = model_names(bundle)                     # checked before anything goes on the wire
        self.spec = ServedSpec.of(bundle)
        self.input, self.output = self.spec.input[0], self.spec.output[0]
        graph_inputs = bundle.meta.get("graph_inputs", {})
        if seed is not None and any(seed != g["seed"] for g in graph_inputs.values()):
            raise ValueError("the Triton repository holds the bundle's own noise seed; drop seed= or re-export")
        self.grpc, self.url, self.timeout = grpc, url, timeout_s
        client = grpc.InferenceServerClient(url=url)
        try:
            self._check_live(client)
            self.model = self._ready_model(client, [model] if model else [names["tensorrt"], names["onnx"]])
            self.max_batch = self._served_batch(client, timeout_s)
        except BaseException:
            client.close()
            raise
        self.link = ServerLink(url, self.model, lambda: grpc.InferenceServerClient(url=url), self._probe, reconnect)
        self.link.attach(client)

    # Load-time checks -------------------------------------------------------------------------------
    def _check_live(self, client) -> None:
        try:
            live = client.is_server_live(client_timeout=self.timeout)
        except Exception as err:  # noqa: BLE001 - tritonclient raises its own InferenceServerException
            raise ConnectionError(f"no Triton server answers at {self.url} ({err}); start tritonserver "
                                  "--model-repository DIR with DIR from `edge-ad export BUNDLE --triton DIR`") from err
        if not live:
            raise ConnectionError(f"the Triton server at {self.url} is not live")

    def _ready_model(self, client, candidates: list[str]) -> str:
        """The first of `candidates` the server has ready; ModelNotServed naming them and the bundle otherwise."""
        for name in candidates:
            if client.is_model_ready(name, client_timeout=self.timeout):
                return name
        try:
            index = client.get_model_repository_index(as_json=True, client_timeout=self.timeout).get("models", [])
        except Exception:  # noqa: BLE001 - the index only adds detail to the error
            index = []
        raise missing_model(index, candidates, self.spec, self.url)

    def _served_batch(self, client, timeout: float) -> int:
        """The served model's max_batch_size, its config checked against the bundle (ServedModelMismatch)."""
        config = client.get_model_config(self.model, client_timeout=timeout).config
        return check_config(config, self.spec, self.model, self.url)

    def _probe(self, client) -> str:
        """After an outage: "" when the server is live, the model ready and still the bundle's."""
        timeout = self.link.policy.timeout
        if not client.is_server_live(client_timeout=timeout):
            return "the server is not live"
        if not client.is_model_ready(self.model, client_timeout=timeout):
            return f"the server is up, the model {self.model!r} is not ready"
        batch = self._served_batch(client, timeout)
        if batch != self.max_batch:
            raise ServedModelMismatch(f"the model {self.model!r} on the Triton server at {self.url} came back with "
                                      f"max_batch_size {batch} instead of {self.max_batch}; load the bundle again")
        return ""

    # Inference ----------------------------------------------------------------------------------------
    @property
    def reconnect(self) -> Reconnect:
        """The retry policy of a server that goes away (a stream gives its sources' policy)."""
        return self.link.policy

    @reconnect.setter
    def reconnect(self, policy: Reconnect) -> None:
        if not isinstance(policy, Reconnect):
            raise TypeError(f"reconnect must be an edge_ad.stream.Reconnect, got {type(policy).__name__}")
        self.link.set_policy(policy)

    @property
    def stats(self) -> LinkStats:
        return self.link.stats

    def infer(self, batch: np.ndarray) -> np.ndarray:
        frames = np.ascontiguousarray(batch, dtype=np.uint8)
        return self.link.call(lambda client: self._request(client, frames))

    def _request(self, client, frames: np.ndarray) -> np.ndarray:
        request = self.grpc.InferInput(self.input, list(frames.shape), "UINT8")
        request.set_data_from_numpy(frames)
        wanted = self.grpc.InferRequestedOutput(self.output)
        try:
            result = client.infer(self.model, [request], outputs=[wanted], client_timeout=self.timeout)
        except Exception as err:
            if getattr(err, "status", None) and str(err.status()) in ("StatusCode.INVALID_ARGUMENT",):
                raise ValueError(f"the Triton server at {self.url} refused a batch of {list(frames.shape)} for the "
                                 f"model {self.model!r}: {err.message()}") from err
            raise
        raw = result.as_numpy(self.output)
        want = (len(frames), *self.spec.output[2])
        if raw is None or raw.shape != want:
            got = "nothing" if raw is None else f"shape {list(raw.shape)}"
            raise ServedModelMismatch(f"the model {self.model!r} on the Triton server at {self.url} returned {got} "
                                      f"as {self.output!r}, the bundle {self.spec.bundle} needs {list(want)}")
        return raw.astype(np.float32, copy=False)

    # The link's reports -------------------------------------------------------------------------------
    def link_summary(self) -> dict:
        """The connection: url, model, state, reconnects, gaps (for a stream's summary)."""
        return {"backend": self.name, "url": self.url, "model": self.model, **self.link.stats.summary()}

    def take_events(self) -> list[dict]:
        """State changes since the last call ({"event": "backend", "state": ...}), for a stream's sinks."""
        return self.link.take_events()

    def interrupt(self) -> None:
        """Stop waiting for a server that went away (a stream that is stopping)."""
        self.link.interrupt()

    def close(self) -> None:
        self.link.close()


def open_triton(bundle: Bundle, options: LoadOptions) -> TritonBackend:
    """The registry's factory: a single-graph bundle's model on the Triton server at `options.triton_url`
    (default localhost:8001)."""
    return TritonBackend(bundle, url=options.triton_url or "localhost:8001", seed=options.seed)
