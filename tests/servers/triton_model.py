"""The Python-backend model the test Triton server runs for an exported model: the repository's own ONNX
graph on ONNX Runtime (CPU), under the config.pbtxt the exporter wrote (only `platform` is swapped for
`backend: "python"`, because the `tritonserver` shipped in the nvidia-pytriton wheel has no ONNX Runtime
backend). Copied into each served model's version folder as model.py; runs inside Triton's Python
stub (Debian's Python 3.11, the test server's own virtualenv), never in the test process.

Every request of a dynamic batch is stacked into one ONNX Runtime call, so what Triton's batcher
merged is computed as one batch, as the ONNX Runtime and TensorRT backends do.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Triton's Python-backend interface: initialize, execute, finalize."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("EDGE_AD_TEST_ORT_THREADS", "1"))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(os.path.join(folder, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def execute(self, requests):
        frames = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        maps = self.session.run([self.output], {self.input: np.concatenate(frames)})[0]
        responses, start = [], 0
        for part in frames:
            out = pb_utils.Tensor(self.output, np.ascontiguousarray(maps[start:start + len(part)]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += len(part)
        return responses

    def finalize(self):
        self.session = None
