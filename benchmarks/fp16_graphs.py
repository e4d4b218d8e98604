"""What the FP16 export does to each model's graphs: FP32 islands, FP16 vs FP32 error, opcheck findings.

    python benchmarks/fp16_graphs.py --models simplenet,mkd,uniad,spr,diffad --json benchmarks/results/fp16-graphs.json
    python benchmarks/fp16_graphs.py --tool both --json benchmarks/results/fp16-tools.json \\
        [--modelopt-python ~/.cache/edge_ad/modelopt-venv/bin/python] [--autocast-default]

Each model is built at its paper's configuration (untrained heads, pretrained backbone where it has
one) and exported to a temporary bundle, whose export writes and checks the `*.fp16.onnx` graphs on
two seeded noise images; `--tool converter` reads the export's own report back (parity.json) and runs
the operator check on every graph.

`--tool autocast|both` compares the FP16 tools (edge_ad_export.fp16.TOOLS) on the very graphs and
calibration inputs the export hands to write_fp16: each graph is copied aside and converted by each
tool through write_fp16, so every tool meets the same acceptance (overflow, finite, score order), and
its written graph goes through opcheck. AutoCast runs in this interpreter where it imports (imported
before the first model, so its import is not timed); `--modelopt-python` also runs it in that interpreter
(a venv with nvidia-modelopt[onnx]'s own pins) in a subprocess, `--autocast-default` also at
AutoCast's own data_max (512).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from common import environment, write_json
from fps import build_bundle


def summarize(bundle) -> dict:
    from edge_ad_export.opcheck import check_graph

    parity = json.loads(bundle.file("parity.json").read_text())
    reports = {"model.onnx": parity["fp16"]["model.onnx"]} if "fp16" in parity else \
        {f"{part}.onnx": v["fp16"] for part, v in parity.items() if isinstance(v, dict) and "fp16" in v}
    out = {}
    for graph, r in reports.items():
        half = bundle.meta["fp16"][graph]
        out[graph] = {"nodes": r["nodes"], "fp32_islands": len(r["fp32_islands"]), "fp32_nodes": r["fp32_nodes"],
                      "island_examples": dict(list(r["fp32_islands"].items())[:3]), "max_abs": r["max_abs"],
                      "relative_max_error": r["check"]["relative_max_error"],
                      "scores_rank_same": r["check"]["scores_rank_same"],
                      "opcheck_errors": {g: [str(f) for f in check_graph(bundle.file(g)) if f.severity == "error"]
                                         for g in (graph, half)}}
    return out


def variants(tool: str, modelopt_python: str | None, autocast_default: bool) -> dict[str, dict]:
    """Name -> write_fp16 arguments (+ the interpreter AutoCast runs in) of each tool run compared."""
    from edge_ad_export.fp16 import DATA_MAX

    runs = {}
    if tool in ("converter", "both"):
        runs["converter"] = {"tool": "converter", "data_max": DATA_MAX}
    if tool in ("autocast", "both"):
        here = _autocast_here()
        if not here and not modelopt_python:
            from edge_ad_export.fp16_autocast import INSTALL

            raise SystemExit(f"{INSTALL}; or pass --modelopt-python")
        if here:
            runs["autocast"] = {"tool": "autocast", "data_max": DATA_MAX}
        if modelopt_python:
            runs["autocast-venv"] = {"tool": "autocast", "data_max": DATA_MAX, "python": modelopt_python}
        if autocast_default:
            elsewhere = {} if here else {"python": modelopt_python}
            runs["autocast-512"] = {"tool": "autocast", "data_max": 512.0, **elsewhere}
    return runs


def _autocast_here() -> bool:
    """modelopt's AutoCast importable in this interpreter (imported now: its import is not timed later)."""
    try:
        import modelopt.onnx.autocast  # noqa: F401
    except ImportError:
        return False
    return True


def run_tool(src: Path, feeds: dict, ranks: bool, spec: dict) -> dict:
    """One tool on a copy of FP32 graph `src`: write_fp16's report (or why it refused) and opcheck errors."""
    from edge_ad_export.fp16 import fp16_name, write_fp16
    from edge_ad_export.fp16_autocast import MODELOPT_PYTHON
    from edge_ad_export.opcheck import errors
    from edge_ad_export.parity import ParityError

    spec = dict(spec)
    python = spec.pop("python", None)
    with tempfile.TemporaryDirectory() as tmp, _env(MODELOPT_PYTHON, python):
        shutil.copy2(src, Path(tmp) / src.name)
        start = time.perf_counter()
        try:
            r = write_fp16(Path(tmp), src.name, feeds, ranks=ranks, **spec)
            verdict = "accepted"
        except ParityError as err:
            r, verdict = None, f"refused: {err}"
        seconds = time.perf_counter() - start
        out = {"verdict": verdict, "write_fp16_s": round(seconds, 3), "data_max": spec["data_max"]}
        if r is not None:
            out.update({k: r.get(k) for k in ("nodes", "fp32_nodes", "fp32_by_op", "casts", "convert_s", "autocast_s",
                                              "modelopt", "in")},
                       fp32_islands=len(r["fp32_islands"]), island_examples=dict(list(r["fp32_islands"].items())[:3]),
                       fp16_overflow=len(r["fp16_overflow"]), fp16_squares=r["fp16_squares"], **r["check"],
                       opcheck_errors=[str(f) for f in errors(Path(tmp) / fp16_name(src.name))])
    return out


@contextmanager
def _env(name: str, value: str | None):
    old = os.environ.pop(name, None)
    if value:
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
        if old is not None:
            os.environ[name] = old


@contextmanager
def comparing(runs: dict[str, dict], record: dict):
    """While exporting: every graph handed to write_fp16 is also converted by each run into `record`
    (graph file -> run name -> result); the export itself goes on with its own call."""
    import edge_ad_export.diffusion_graphs as diffusion
    import edge_ad_export.exporter as exporter

    real = exporter.write_fp16

    def write_fp16(folder: Path, graph_file: str, feeds: dict, *, ranks: bool = True, **kwargs) -> dict:
        record[graph_file] = {name: run_tool(Path(folder) / graph_file, feeds, ranks, spec)
                              for name, spec in runs.items()}
        print(" ", graph_file, {n: (r["verdict"][:8], r.get("relative_max_error"), r.get("fp32_nodes"),
                                    r["write_fp16_s"]) for n, r in record[graph_file].items()}, flush=True)
        return real(folder, graph_file, feeds, ranks=ranks, **kwargs)

    exporter.write_fp16 = diffusion.write_fp16 = write_fp16
    try:
        yield
    finally:
        exporter.write_fp16 = diffusion.write_fp16 = real


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="simplenet,mkd,uniad,spr,diffad")
    parser.add_argument("--config", choices=("paper", "cpu"), default="paper")
    parser.add_argument("--tool", choices=("converter", "autocast", "both"), default="converter",
                        help="converter: the export's own report; autocast/both: the tools compared per graph")
    parser.add_argument("--modelopt-python", help="also run AutoCast in this interpreter (EDGE_AD_MODELOPT_PYTHON)")
    parser.add_argument("--autocast-default", action="store_true", help="also run AutoCast at its data_max, 512")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    compare = args.tool != "converter"
    runs = variants(args.tool, args.modelopt_python, args.autocast_default) if compare else {}
    versions = ["edge_ad", "torch", "onnx", "onnxruntime", "onnxconverter-common"]
    if "autocast" in runs:
        versions.append("nvidia-modelopt")
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            name, record = name.strip(), {}
            print(name, flush=True)
            with comparing(runs, record) if compare else nullcontext():
                model, bundle = build_bundle(name, Path(tmp), None, args.config)
            report[name] = {"backbone": model.config.get("backbone"), "input_size": model.config["image_size"]}
            report[name]["tools" if compare else "graphs"] = record if compare else summarize(bundle)
            if not compare:
                print(name, json.dumps(report[name]["graphs"], default=str)[:400], flush=True)
            shutil.rmtree(bundle.path, ignore_errors=True)
    if args.json:
        payload = {"config": args.config, "environment": environment(tuple(versions)), "models": report}
        if compare:
            payload["runs"] = runs
            payload["modelopt_python"] = _interpreter(args.modelopt_python) if args.modelopt_python else None
        write_json(args.json, payload)
    return 0


def _interpreter(python: str) -> dict:
    """The versions AutoCast ran with in the other interpreter."""
    import subprocess

    code = ("import json; from importlib import metadata as m; print(json.dumps({p: m.version(p) for p in "
            "('nvidia-modelopt', 'onnx', 'onnxruntime-gpu', 'torch', 'numpy')}))")
    run = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return {"python": python, "versions": json.loads(run.stdout)}


if __name__ == "__main__":
    sys.exit(main())
