"""The `edge-ad` command."""

from __future__ import annotations

import argparse
import json
import sys


def _demo(args: argparse.Namespace) -> int:
    from edge_ad import demo

    summary = demo.run(args.out, category=args.category, seed=args.seed)
    print(json.dumps(summary, indent=2))
    print(f"\noutputs: {args.out}/summary.json, {args.out}/overlays/, data in {args.out}/data/")
    return 0


def _info(args: argparse.Namespace) -> int:
    import edge_ad
    from edge_ad import _kernels

    info = {"edge_ad": edge_ad.__version__, "kernels_have_cuda": bool(_kernels.has_cuda),
            "cuda_devices": _kernels.cuda_device_count()}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-ad", description="Visual anomaly detection for factory lines.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job on synthetic data")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--category", default="washer")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="what this installation can use (kernels, GPUs, runtimes)")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
