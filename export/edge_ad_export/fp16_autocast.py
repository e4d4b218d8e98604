"""The mixed FP16 graph by NVIDIA Model Optimizer's AutoCast: `write_fp16(..., tool="autocast")`.

AutoCast (`modelopt.onnx.autocast.convert_to_mixed_precision`, nvidia-modelopt 0.47.0) runs the FP32
graph on ONNX Runtime over the calibration inputs and keeps a node in FP32 when any of its inputs or
outputs passes `data_max` (edge_ad passes its own DATA_MAX, 1e4; AutoCast's default is 512) or one of
its initializers passes FP16's range; the rest becomes FP16, with `keep_io_types=True` (uint8 frames
in, float32 maps out). The graph it writes then goes through edge_ad's acceptance, the same as the
converter's (edge_ad_export.fp16.write_fp16): no FP16 tensor beyond 65504 on the calibration inputs,
finite, the image scores in the FP32 graph's order.

nvidia-modelopt is not a dependency of edge_ad. Its `[onnx]` extra pins onnx~=1.21 and onnxruntime-gpu
~=1.24 and pulls cupy, so it is installed without that extra (no downgrade; checked with onnx 1.23.2
and onnxruntime 1.31.1), or kept in a venv of its own whose interpreter EDGE_AD_MODELOPT_PYTHON names:
the conversion then runs there, in a subprocess.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from .fp16 import added_casts, fp16_overflow, fp16_squares, fp32_nodes, name_nodes, op_counts, tensor_ranges

__all__ = ["MODELOPT_PYTHON", "INSTALL", "require_autocast", "convert_autocast"]

MODELOPT_PYTHON = "EDGE_AD_MODELOPT_PYTHON"
INSTALL = ("the FP16 tool 'autocast' needs NVIDIA Model Optimizer: pip install nvidia-modelopt==0.47.0 "
           "onnx-graphsurgeon onnxslim onnxscript onnx-ir lief polygraphy (not the [onnx] extra, which "
           "downgrades onnx and onnxruntime), or install nvidia-modelopt[onnx] in a venv of its own and set "
           f"{MODELOPT_PYTHON} to its python; or export with the default tool, 'converter'")
# Run by the interpreter of EDGE_AD_MODELOPT_PYTHON: argv = src, dst, calibration folder, data_max.
_SCRIPT = """
import logging, sys
import onnx, modelopt
from modelopt.onnx.autocast import convert_to_mixed_precision
logging.getLogger("modelopt.onnx").setLevel(logging.WARNING)
logging.getLogger("modelopt.onnx.autocast").setLevel(logging.WARNING)
src, dst, calibration, data_max = sys.argv[1:5]
half = convert_to_mixed_precision(src, keep_io_types=True, calibration_data=calibration, data_max=float(data_max))
onnx.save(half, dst)
print(modelopt.__version__)
"""


def require_autocast() -> None:
    """Raise ImportError (saying how to install it) unless AutoCast can run: importable here, or an
    interpreter named by EDGE_AD_MODELOPT_PYTHON. For a CLI to call before a long export starts."""
    if os.environ.get(MODELOPT_PYTHON):
        return
    try:
        import modelopt.onnx.autocast  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{INSTALL} ({err})") from err


def _in_process(src: Path, dst: Path, calibration: Path, data_max: float) -> str:
    """AutoCast in this interpreter; returns modelopt's version."""
    try:
        import modelopt
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as err:
        raise ImportError(f"{INSTALL} ({err})") from err
    loggers = [logging.getLogger(name) for name in ("modelopt.onnx", "modelopt.onnx.autocast")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)      # one INFO line per node kept in FP32 otherwise
    try:
        half = convert_to_mixed_precision(str(src), keep_io_types=True, calibration_data=str(calibration),
                                          data_max=data_max)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    onnx.save(half, str(dst))
    return modelopt.__version__


def _in_subprocess(python: str, src: Path, dst: Path, calibration: Path, data_max: float) -> str:
    """AutoCast in the interpreter `python` (a venv with nvidia-modelopt[onnx]); returns its version."""
    try:
        run = subprocess.run([python, "-c", _SCRIPT, str(src), str(dst), str(calibration), repr(data_max)],
                             capture_output=True, text=True, check=False)
    except OSError as err:
        raise RuntimeError(f"{MODELOPT_PYTHON}={python} cannot be run ({err}); point it at the python of a "
                           "venv with nvidia-modelopt[onnx], or unset it") from err
    if run.returncode:
        raise RuntimeError(f"AutoCast failed in {python} ({MODELOPT_PYTHON}):\n{run.stderr[-3000:]}")
    return run.stdout.strip().splitlines()[-1]


def convert_autocast(src: Path, dst: Path, feeds: dict[str, np.ndarray], *, data_max: float) -> dict:
    """Write AutoCast's mixed FP16 graph of `src` to `dst`, calibrated on `feeds`; returns the report
    (the keys of fp16.convert_fp16's, read off the written graph, plus modelopt's version and time)."""
    model = name_nodes(onnx.load(str(src)))
    ranges = tensor_ranges(model, feeds)          # for the overflow check: the FP32 graph's, not AutoCast's
    python = os.environ.get(MODELOPT_PYTHON)
    with tempfile.TemporaryDirectory(prefix="edge_ad_autocast_") as tmp:
        named, calibration = Path(tmp) / src.name, Path(tmp) / "calibration"
        onnx.save(model, str(named))              # the node names the report and the engine builder use
        calibration.mkdir()
        np.savez(calibration / "batch.npz", **feeds)     # one file: one batch of all images, no re-splitting
        start = time.perf_counter()
        version = (_in_subprocess(python, named, dst, calibration, data_max) if python
                   else _in_process(named, dst, calibration, data_max))
        seconds = time.perf_counter() - start
    half = onnx.load(str(dst))
    onnx.checker.check_model(half)
    kept = fp32_nodes(half, model)
    nodes = {n.name: n for n in model.graph.node}
    return {"fp32_islands": {name: _why(nodes[name], ranges, data_max) for name in kept}, "fp32_ops": [],
            "nodes": sum(n.op_type != "Constant" for n in model.graph.node), "fp32_nodes": len(kept),
            "fp32_by_op": op_counts(model, kept),
            "casts": added_casts(half, model), "max_abs": max(ranges.values(), default=0.0), "data_max": data_max,
            "fp16_overflow": fp16_overflow(half, model, ranges), "fp16_squares": fp16_squares(half, model, ranges),
            "modelopt": version,
            "autocast_s": round(seconds, 3), "in": "subprocess" if python else "process"}


def _why(node: onnx.NodeProto, ranges: dict[str, float], data_max: float) -> str:
    """Why AutoCast kept a node in FP32, as far as the measured ranges tell."""
    name = max([*node.input, *node.output], key=lambda t: ranges.get(t, 0.0), default="")
    peak = ranges.get(name, 0.0)
    if peak > data_max:
        return f"{'input' if name in node.input else 'output'} {name} reaches {peak:.3g}"
    return "kept FP32 by AutoCast, though no float I/O of it passes data_max here (an initializer or a rule of its own)"
