"""The `edge-ad` command."""

from __future__ import annotations

import argparse
import json
import sys


def _demo(args: argparse.Namespace) -> int:
    from edge_ad import demo

    summary = demo.run(args.out, seed=args.seed, epochs=args.epochs)
    print(json.dumps(summary, indent=2))
    print(f"\noutputs in {args.out}/: summary.json, annotated.mp4, events.jsonl, bundle/, run/, data/")
    return 0


def _train(args: argparse.Namespace) -> int:
    from edge_ad.training.run import TrainConfig, train

    kwargs = {"backbone": args.backbone, "image_size": args.image_size, "resize_size": args.resize_size,
              "pretrained": False if args.no_pretrained else None}
    result = train(TrainConfig(data=args.data, out=args.out, model=args.model, epochs=args.epochs,
                               batch_size=args.batch_size, seed=args.seed, device=args.device, resume=args.resume,
                               budget=args.budget, stages=args.stage, model_kwargs=kwargs))
    print(json.dumps(result, indent=2, default=str))
    print(f"run: {args.out} (checkpoint.pt, run.json, metrics.json)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from edge_ad.training.report import evaluate_run

    report = evaluate_run(args.run, data=args.data, modes=args.modes, device=args.device)
    print(json.dumps(report, indent=2, default=str))
    print(f"written: {report['written']}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge_ad.bundle import read_bundle

    source = Path(args.source)
    if (source / "meta.json").is_file():
        if args.out:
            raise ValueError(f"{source} is already a bundle; --out is for exporting a training run")
        bundle = read_bundle(source)
    else:
        if not args.out:
            raise ValueError(f"exporting the run {source} needs --out BUNDLE (or give a bundle with --engine/--triton)")
        from export.bundle import export_run

        bundle = export_run(source, args.out, overwrite=args.overwrite)
        print(f"bundle: {bundle.path} ({', '.join(bundle.meta['files'])})")
    if args.engine:
        from export.tensorrt import build_bundle_engines, parse_batches

        paths = build_bundle_engines(bundle, batch=parse_batches(args.batch), typing=args.typing, dla_core=args.dla_core)
        print("TensorRT engines:\n  " + "\n  ".join(str(p) for p in paths))
        bundle = read_bundle(bundle.path)
    if args.triton:
        from export.triton import write_repository

        models = write_repository(bundle, args.triton, max_batch=args.max_batch)
        print(f"Triton model repository {args.triton}: {', '.join(m.name for m in models)}")
    return 0


def _stream(args: argparse.Namespace) -> int:
    import edge_ad
    from edge_ad.stream import Reconnect, stop_on_signals

    detector = edge_ad.load(args.bundle, backend=args.backend, steps=args.steps, seed=args.noise_seed,
                            triton_url=args.triton_url)
    policy = Reconnect(initial=args.retry_initial, cap=args.retry_max, budget=args.retry_budget)
    stream = detector.stream(args.source, sinks=_stream_sinks(args), batch=args.batch, max_frames=args.max_frames,
                             duration=args.duration, idle_timeout=args.idle_timeout, reconnect=policy,
                             realtime=args.realtime, loop=args.loop)
    metrics = None
    if args.metrics_port is not None:
        from edge_ad.stream.prometheus import MetricsServer

        metrics = MetricsServer(stream, args.metrics_port, host=args.metrics_host)
    try:
        with stop_on_signals(stream):
            for item in stream:
                if item.result.is_anomalous and args.verbose:
                    print(f"{item.frame.source} frame {item.frame.index}: ANOMALY score "
                          f"{item.result.normalized_score:.2f}", flush=True)
    finally:
        if metrics is not None:
            metrics.close()
    summary = stream.summary()
    print(json.dumps(summary, indent=2))
    for name, s in summary["sources"].items():
        print(f"{name}: {s['state']}, {s['frames']} frames, {s['fps']:.1f} FPS, latency p50 {s['latency_ms_p50']:.1f} ms "
              f"p99 {s['latency_ms_p99']:.1f} ms, {s['anomalous']} anomalous, {s['dropped']} dropped, "
              f"{s['corrupt']} corrupt, {s['reconnects']} reconnects")
    print(f"{summary['frames']} frames, {summary['fps']:.1f} FPS, latency p50 {summary['latency_ms_p50']:.1f} ms, "
          f"p99 {summary['latency_ms_p99']:.1f} ms, {summary['corrupt']} corrupt, {summary['dropped']} dropped")
    return 0


def _stream_sinks(args: argparse.Namespace) -> list:
    """Snapshots first, so the events file can name each anomalous frame's snapshot."""
    from edge_ad.stream import EventsSink, SnapshotSink, VideoSink, WindowSink

    sinks = []
    if args.snapshots:
        sinks.append(SnapshotSink(args.snapshots, budget_mb=args.snapshot_budget_mb))
    if args.events:
        sinks.append(EventsSink(args.events, frames=args.events_frames, fsync=args.fsync))
    if args.video:
        sinks.append(VideoSink(args.video, fps=args.fps))
    if args.show and WindowSink.available():
        sinks.append(WindowSink())
    return sinks


def _info(args: argparse.Namespace) -> int:
    import edge_ad
    from edge_ad import _kernels

    info = {"edge_ad": edge_ad.__version__, "kernels_have_cuda": bool(_kernels.has_cuda),
            "cuda_devices": _kernels.cuda_device_count()}
    if info["cuda_devices"] == 0:
        info["cuda_error"] = _kernels.cuda_init_error()   # why not: no driver, an old driver, no device
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    print(json.dumps(info, indent=2))
    return 0


def _stream_arguments(stream: argparse.ArgumentParser) -> None:
    from edge_ad.runtime import BACKENDS

    stream.add_argument("bundle")
    stream.add_argument("--source", required=True, action="append",
                        help="camera index, video file, image folder or rtsp/http URL; repeat for several sources")
    stream.add_argument("--backend", default="auto", choices=BACKENDS)
    stream.add_argument("--triton-url", default=None, help="host:port of a Triton server (--backend triton)")
    stream.add_argument("--batch", type=int, default=None,
                        help="frames per inference (default: one per source, at most the engine's max or 8)")
    stream.add_argument("--events", help="JSON Lines file: start, anomalies, source states, summary")
    stream.add_argument("--events-frames", choices=("anomalous", "all"), default="anomalous",
                        help="which frames get a line in --events (all: every part's result, for traceability)")
    stream.add_argument("--fsync", action="store_true", help="fsync the events file after each line (power loss)")
    stream.add_argument("--snapshots", metavar="DIR", help="save anomalous frames (original + heatmap) here")
    stream.add_argument("--snapshot-budget-mb", type=float, default=500.0,
                        help="disk budget of --snapshots; the oldest are deleted beyond it")
    stream.add_argument("--video", help="annotated video file to write (one per source with several)")
    stream.add_argument("--fps", type=float, default=15.0, help="frame rate of the annotated video")
    stream.add_argument("--show", action="store_true", help="open a window when a display exists")
    stream.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    stream.add_argument("--metrics-host", default="127.0.0.1",
                        help="address of the metrics endpoint (0.0.0.0 to let another machine scrape it)")
    stream.add_argument("--retry-initial", type=float, default=0.5, help="first reconnection delay, seconds")
    stream.add_argument("--retry-max", type=float, default=30.0, help="cap of the doubling reconnection delay")
    stream.add_argument("--retry-budget", type=int, default=None,
                        help="failed reconnection attempts in a row before a source fails (default: never)")
    stream.add_argument("--realtime", action="store_true", help="pace video files at their frame rate")
    stream.add_argument("--loop", action="store_true", help="replay video files from the start when they end")
    stream.add_argument("--max-frames", type=int, default=None)
    stream.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    stream.add_argument("--idle-timeout", type=float, default=None,
                        help="stop when no source delivered a frame for this many seconds (default: wait)")
    stream.add_argument("--steps", type=int, default=None, help="DDIM steps of a diffusion bundle (default: its own)")
    stream.add_argument("--noise-seed", type=int, default=None,
                        help="seed of the inference noise of SPR/DiffAD bundles (default: the bundle's)")
    stream.add_argument("--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    from edge_ad.models import BUDGETS, list_models  # imports no model module (and no torch model code)

    parser = argparse.ArgumentParser(prog="edge-ad", description="Visual anomaly detection for factory lines.")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="json: one object per line")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job on synthetic data")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's budget)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    train = sub.add_parser("train", help="train a model on an MVTec-layout folder")
    train.add_argument("--model", default="simplenet", help=f"one of: {', '.join(list_models())}")
    train.add_argument("--data", required=True, nargs="+", metavar="DIR",
                       help="category folder(s) with train/good and test/; several train one unified model")
    train.add_argument("--out", required=True, help="run folder")
    train.add_argument("--budget", choices=BUDGETS, default="paper",
                       help="default epochs/batch/size: the paper's, or the short CPU budget")
    train.add_argument("--epochs", type=int, default=None, help="default: the budget's")
    train.add_argument("--batch-size", type=int, default=None, help="default: the budget's")
    train.add_argument("--backbone", default=None, help="timm name (default: the model's)")
    train.add_argument("--image-size", type=int, default=None, help="crop size fed to the model")
    train.add_argument("--resize-size", type=int, default=None, help="resize before the center crop")
    train.add_argument("--no-pretrained", action="store_true", help="random backbone weights (tests)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cpu")
    train.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    train.add_argument("--stage", nargs="+", default=None, metavar="STAGE",
                       help="staged models (diffad: autoencoder denoiser segmentation): run only these "
                            "stages, continuing from RUN's checkpoint (default: all, in order)")
    train.set_defaults(func=_train)
    evaluate = sub.add_parser("eval", help="metrics of a training run, per localization mode")
    evaluate.add_argument("run", help="run folder written by `edge-ad train`")
    evaluate.add_argument("--data", nargs="+", metavar="DIR", help="test on these folders (default: the run's)")
    evaluate.add_argument("--modes", nargs="+", help="localization modes (default: all the model has)")
    evaluate.add_argument("--device", default="cpu")
    evaluate.set_defaults(func=_eval)
    export = sub.add_parser("export", help="a training run -> a bundle; a bundle -> TensorRT engines, Triton repository")
    export.add_argument("source", metavar="RUN|BUNDLE", help="a training run (with --out) or an existing bundle")
    export.add_argument("--out", help="bundle folder to write from a run")
    export.add_argument("--overwrite", action="store_true")
    export.add_argument("--engine", action="store_true",
                        help="build the FP16 TensorRT engine(s) for this GPU into the bundle (needs TensorRT)")
    export.add_argument("--batch", default="1,1,8", help="engine batch profile: N, MIN,MAX or MIN,OPT,MAX")
    export.add_argument("--typing", choices=("auto", "strong", "weak"), default="auto",
                        help="strongly typed FP16 graph (TensorRT 10/11) or the FP16 builder flag (10.x, DLA)")
    export.add_argument("--dla-core", type=int, default=None, help="build for this DLA core (AGX Orin, Orin NX)")
    export.add_argument("--triton", metavar="DIR", help="write a Triton Inference Server model repository")
    export.add_argument("--max-batch", type=int, default=8, help="Triton max_batch_size")
    export.set_defaults(func=_export)
    stream = sub.add_parser("stream", help="run a bundle on cameras, videos, URLs or image folders")
    _stream_arguments(stream)
    stream.set_defaults(func=_stream)
    info = sub.add_parser("info", help="what this installation can use (kernels, GPUs, runtimes)")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; errors the user can act on print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    from edge_ad.logs import configure

    configure(args.log_format, args.log_level)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"edge-ad {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, ConnectionError, FileNotFoundError, IOError, RuntimeError) as err:
        from edge_ad.logs import redact

        print(f"edge-ad {args.command}: error: {redact(str(err))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
