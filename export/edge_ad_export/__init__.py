"""The export pipeline: PyTorch model -> bundle (ONNX, TensorRT engines, Triton repository)."""
