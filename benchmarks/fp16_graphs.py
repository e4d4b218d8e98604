"""What the FP16 export does to each model's graphs: FP32 islands, FP16 vs FP32 error, opcheck findings.

    python benchmarks/fp16_graphs.py --models simplenet,mkd,uniad,spr,diffad --json benchmarks/results/fp16-graphs.json

Each model is built at its paper's configuration (untrained heads, pretrained backbone where it has
one) and exported to a temporary bundle, whose export writes and checks the `*.fp16.onnx` graphs on
two seeded noise images; this reads the export's own report back (parity.json) and runs the operator
check on every graph.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="simplenet,mkd,uniad,spr,diffad")
    parser.add_argument("--config", choices=("paper", "cpu"), default="paper")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, bundle = build_bundle(name.strip(), Path(tmp), None, args.config)
            report[name] = {"backbone": model.config.get("backbone"), "input_size": model.config["image_size"],
                            "graphs": summarize(bundle)}
            print(name, json.dumps(report[name]["graphs"], default=str)[:400], flush=True)
    if args.json:
        write_json(args.json, {"config": args.config, "environment": environment(("edge_ad", "torch", "onnx",
                   "onnxruntime", "onnxconverter-common")), "models": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
