"""`edge-ad bench`: how fast, and how right, a bundle runs on every backend this box has.

For each backend that can run here and each batch size, frames per second with p50/p99 latency of
- model: a prepared uint8 batch in, image scores out: the network and the heat-map kernel (on the
  device where the backend post-processes there), the same work for every backend;
- e2e: camera-sized BGR frames (640 x 480) in, Results out: resize + crop, inference, heat map, decision;
then the parity of the scores against ONNX Runtime on the CPU (the FP32 reference) on seeded random
frames, the image AUROC of an MVTec-layout test split when one is given, and the ratio to the paper's
timing. FPS = batch / p50. benchmarks/fps.py times with the same functions (`time_call`, `measure`).

Imports no torch: the torch backend is reached through the registry only, and is skipped with the
reason where torch is not installed. TensorRT and Triton rows are unverified on a machine without them.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

import edge_ad
from edge_ad.bundle import current_umask, disk_full_error, is_disk_full, read_bundle
from edge_ad.imaging import IMAGE_SUFFIXES, read_image
from edge_ad.runtime.detector import Detector
from edge_ad.runtime.devices import gpu_present, kernels, tensorrt_missing
from edge_ad.runtime.papers import vs_paper
from edge_ad.runtime.precision import PRECISIONS
from edge_ad.runtime.preprocess import Geometry, prepare
from edge_ad.runtime.registry import BackendUnavailable, backend_names, get_backend, resolve

__all__ = ["BenchConfig", "REFERENCE", "check_json_path", "default_backends", "environment", "format_report", "measure",
           "parse_backends", "parse_batches", "split_spec", "problems", "run", "time_call", "write_json"]

FRAME = (480, 640)              # a camera's frame, H x W, BGR
PARITY_FRAMES = 8
REFERENCE = "onnxruntime-cpu"   # the FP32 reference every backend's scores are compared with
PRECISION = {"tensorrt": "fp16", "triton": "as served"}        # the rest: fp32, torch on CUDA: FP16 autocast


@dataclass
class BenchConfig:
    """What `edge-ad bench` was asked: `backends` None = every registered one that runs here."""

    bundle: str | Path
    backends: list[str] | None = None
    batches: list[int] = field(default_factory=lambda: [1, 8])
    iters: int = 20
    warmup: int = 3
    data: str | Path | None = None
    triton_url: str | None = None
    seed: int = 0


# ------------------------------------------------------------------------------------------- timing


def time_call(fn: Callable[[], object], *, iters: int, warmup: int) -> dict:
    """p50, p99 (nearest rank), mean and min of `iters` timed calls after `warmup` untimed ones, in ms.
    The calls return host arrays, so the time includes waiting for the device."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got {iters} and {warmup}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    rank = lambda q: samples[min(len(samples) - 1, max(0, int(np.ceil(q * len(samples))) - 1))]  # noqa: E731
    return {"p50_ms": float(np.median(samples)), "p99_ms": rank(0.99), "mean_ms": float(np.mean(samples)),
            "min_ms": samples[0], "iters": iters}


def seeded_images(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """n uint8 H x W x 3 images with structure (smooth random colour fields plus noise), not flat noise:
    scores that differ between images, so their order means something."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    smooth = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in coarse])
    return np.clip(smooth + rng.normal(0.0, 12.0, smooth.shape), 0, 255).astype(np.uint8)


def measure(detector: Detector, batch: int, *, iters: int, warmup: int, seed: int = 0) -> dict:
    """{"model": timing, "e2e": timing} of one batch size, each with its FPS (batch / p50)."""
    h, w = detector.geometry.crop
    prepared = seeded_images(batch, h, w, seed)
    frames = list(seeded_images(batch, *FRAME, seed + 1))
    out = {"model": time_call(lambda: detector.heatmaps(prepared, maps=False), iters=iters, warmup=warmup),
           "e2e": time_call(lambda: detector.predict(frames), iters=iters, warmup=warmup)}
    for timing in out.values():
        timing["fps"] = batch * 1e3 / timing["p50_ms"]
    out["model"]["input"] = f"{h}x{w} uint8 RGB, prepared"
    out["e2e"]["input"] = f"{FRAME[1]}x{FRAME[0]} BGR frames"
    return out


# ------------------------------------------------------------------------------------------- parity


def scores_in_chunks(detector: Detector, prepared: np.ndarray, chunk: int) -> np.ndarray:
    """Image scores of a prepared stack, `chunk` images per call (as the timed batch runs)."""
    return np.concatenate([detector.heatmaps(prepared[i:i + chunk], maps=False)[1]
                           for i in range(0, len(prepared), chunk)]).astype(np.float64)


class Reference:
    """ONNX Runtime on the CPU (FP32): the scores every backend is compared with, cached per chunk size
    so that the same frames in the same batches are compared (the reference with itself is exact)."""

    def __init__(self, bundle: str | Path, prepared: np.ndarray) -> None:
        self.prepared = prepared
        self.scores: dict[int, np.ndarray] = {}
        self.detector: Detector | None = None
        self.missing: str | None = None
        try:
            self.detector = edge_ad.load(bundle, backend=REFERENCE)
        except (BackendUnavailable, RuntimeError, ValueError, OSError) as err:
            self.missing = f"no {REFERENCE} reference: {err}"

    def parity(self, detector: Detector, chunk: int) -> dict:
        """Largest score difference over the reference's spread, and whether the order is the same."""
        if self.detector is None:
            return {"reference": REFERENCE, "missing": self.missing}
        chunk = min(chunk, len(self.prepared))
        if chunk not in self.scores:
            self.scores[chunk] = scores_in_chunks(self.detector, self.prepared, chunk)
        want, got = self.scores[chunk], scores_in_chunks(detector, self.prepared, chunk)
        diff = float(np.abs(got - want).max())
        spread = float(np.ptp(want))               # 0: every frame scored the same; the ratio is then None
        return {"reference": REFERENCE, "frames": len(want), "max_abs_diff": diff, "spread": spread,
                "diff_over_spread": diff / spread if spread > 0 else (0.0 if diff == 0 else None),
                "same_order": bool(np.array_equal(np.argsort(want, kind="stable"), np.argsort(got, kind="stable")))}

    def close(self) -> None:
        if self.detector is not None:
            self.detector.close()


# ----------------------------------------------------------------------------------------- accuracy


def read_test_split(data: str | Path, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """An MVTec-layout category's test split (test/good = normal, test/<defect> = anomalous), each image
    prepared to the bundle's crop, and its labels (1 = anomalous)."""
    test = Path(data) / "test"
    if not test.is_dir():
        raise FileNotFoundError(f"--data {data}: no test/ folder; give an MVTec-layout category folder "
                                "(test/good/*.png and test/<defect>/*.png)")
    folders = sorted(p for p in test.iterdir() if p.is_dir() and not p.name.startswith("."))
    images, labels = [], []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                images.append(prepare(read_image(path), geometry))
                labels.append(int(folder.name != "good"))
    if 0 not in labels or 1 not in labels:
        raise ValueError(f"--data {data}: the AUROC needs good images (test/good/) and anomalous ones "
                         f"(test/<defect>/); found {labels.count(0)} good and {labels.count(1)} anomalous")
    return np.stack(images), np.asarray(labels)


def accuracy(detector: Detector, prepared: np.ndarray, labels: np.ndarray, chunk: int) -> dict:
    """Image AUROC of the backend's scores on a test split (edge_ad.metrics: numpy and OpenCV only)."""
    from edge_ad.metrics import image_auroc

    scores = scores_in_chunks(detector, prepared, chunk)
    return {"image_auroc": image_auroc(labels, scores), "images": int(len(labels)),
            "anomalous": int(labels.sum())}


# ----------------------------------------------------------------------------------------- backends


def default_backends() -> list[str]:
    """Every registered backend with its device fixed: a name whose device is "auto" is left out when an
    alias of it fixes the device (onnxruntime -> onnxruntime-cpu, onnxruntime-cuda)."""
    entries = [get_backend(n) for n in backend_names() if n != "auto"]
    fixed = {e.factory for e in entries if e.device != "auto"}
    return [e.name for e in entries if e.device != "auto" or e.factory not in fixed]


def split_spec(spec: str) -> tuple[str, str | None]:
    """"onnxruntime-cpu:int8" -> ("onnxruntime-cpu", "int8"); a name alone -> (name, None): the backend's default."""
    name, _, precision = spec.partition(":")
    return name.strip(), (precision.strip() or None)


def parse_backends(text: str) -> list[str]:
    """--backends: comma-separated registered names (checked), each optionally with a precision
    (`name:fp32|bf16|fp16|int8|int8+bf16`, edge_ad.runtime.precision), in order, without repeats."""
    specs = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not specs:
        raise ValueError(f"--backends {text!r}: name at least one of {', '.join(backend_names())}")
    for spec in specs:
        name, precision = split_spec(spec)
        if name != "auto":
            get_backend(name)               # ValueError listing the choices
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"--backends {spec!r}: the precision after ':' must be one of {', '.join(PRECISIONS)}")
    return specs


def parse_batches(text: str) -> list[int]:
    """--batches: comma-separated whole numbers from 1 to 1024."""
    try:
        batches = [int(b, 10) for b in text.split(",") if b.strip()]
    except ValueError:
        batches = []
    if not batches or any(not 1 <= b <= 1024 for b in batches):
        raise ValueError(f"--batches {text!r}: give whole numbers from 1 to 1024 separated by commas, e.g. 1,8")
    return list(dict.fromkeys(batches))


def open_backend(spec: str, config: BenchConfig) -> tuple[Detector | None, str]:
    """(detector, its row label) of a backend spec ("name[:precision]") that can run here, or (None, why not)."""
    requested, precision = split_spec(spec)
    if requested == "triton" and not config.triton_url:
        return None, "no Triton server named: give --triton-url HOST:PORT"
    try:
        entry = resolve(requested)
    except BackendUnavailable as err:
        return None, str(err)
    if entry.name == "tensorrt" and tensorrt_missing():
        return None, str(tensorrt_missing())
    if entry.device == "cuda" and not gpu_present():
        return None, "no CUDA GPU here"
    profile = (1, 1, max(8, *config.batches))
    try:
        detector = edge_ad.load(config.bundle, backend=requested if requested == "auto" else entry.name,
                                batch=profile, triton_url=config.triton_url, precision=precision)
    except (BackendUnavailable, RuntimeError, ValueError, OSError, ImportError) as err:
        return None, f"cannot run here: {err}"
    if requested == "auto":                           # what edge_ad.load picked, its timing probe included
        chosen = getattr(detector.backend, "precision", None)
        return detector, f"auto ({detector.backend.name}{f':{chosen}' if chosen else ''})"
    return detector, entry.name + (f":{precision}" if precision else "")


def precision_of(label: str, detector: Detector) -> str:
    """The arithmetic a backend runs in: what the backend reports (OpenVINO's resolved hint), else what
    was asked for, else its default: TensorRT's engines are FP16, torch on CUDA autocasts to FP16."""
    if label.startswith("auto (") and label.endswith(")"):         # "auto (tensorrt)": the backend it picked
        label = label[len("auto ("):-1]
    name, asked = split_spec(label)
    reported = getattr(detector.backend, "precision", None)
    if isinstance(reported, str):
        return reported
    if asked:
        return asked
    if name.startswith("torch") and detector.backend.device_heatmap:
        return "fp16 (autocast)"
    return PRECISION.get(name, "fp32")


def bench_backend(name: str, detector: Detector, config: BenchConfig, reference: Reference) -> list[dict]:
    """The rows of one backend, one per batch size."""
    steps = detector.bundle.meta.get("pipeline", {}).get("steps")
    rows = []
    for batch in config.batches:
        timing = measure(detector, batch, iters=config.iters, warmup=config.warmup, seed=config.seed)
        rows.append({"backend": name, "precision": precision_of(name, detector), "batch": batch, "steps": steps,
                     "max_batch": detector.max_batch, "model": timing["model"], "e2e": timing["e2e"],
                     "parity": reference.parity(detector, batch),
                     "vs_paper": vs_paper(detector.model_name, timing["model"]["fps"], steps)})
    return rows


def run(config: BenchConfig, *, echo: Callable[[str], None] = lambda line: None) -> dict:
    """Time, check and compare every backend asked for; `echo` hears progress lines. Backends that cannot
    run here are listed in "skipped" with the reason; one that fails while running in "failed"."""
    bundle = read_bundle(config.bundle)
    geometry = Geometry.from_dict(bundle.meta["geometry"])
    test = read_test_split(config.data, geometry) if config.data else None
    names = config.backends or default_backends()
    reference = Reference(bundle.path, seeded_images(max(PARITY_FRAMES, *config.batches), *geometry.crop,
                                                     config.seed + 2))
    report: dict = {"bundle": str(bundle.path), "model": bundle.model_name, "rows": [], "skipped": {},
                    "failed": {}, "accuracy": {}, "resolved": {}, "data": str(config.data) if config.data else None,
                    "iters": config.iters, "warmup": config.warmup, "reference": reference.missing or REFERENCE}
    try:
        for requested in names:
            detector, name = open_backend(requested, config)
            if detector is None:
                report["skipped"][requested] = name
                echo(f"{requested}: skipped ({name})")
                continue
            report["resolved"][requested] = name          # "auto" -> the backend and precision it chose
            try:
                with detector:
                    report["rows"] += bench_backend(name, detector, config, reference)
                    if test is not None:
                        report["accuracy"][name] = accuracy(detector, *test, max(config.batches))
            except Exception as err:  # noqa: BLE001 - one backend failing must not hide the others
                report["failed"][name] = f"{type(err).__name__}: {err}"
                echo(f"{name}: failed ({report['failed'][name]})")
                continue
            echo(f"{name}: " + ", ".join(f"batch {r['batch']} {r['model']['fps']:.1f} FPS" for r in report["rows"]
                                         if r["backend"] == name))
    finally:
        reference.close()
    report["environment"] = environment()
    return report


def problems(report: dict, explicit: list[str] | None = None) -> list[str]:
    """What makes the run a failure: a backend that failed while running, no backend at all, or a backend
    named explicitly (`explicit`, from --backends) that could not run here."""
    found = [f"{name} failed: {why}" for name, why in report["failed"].items()]
    found += [f"{name} cannot run: {report['skipped'][name]}" for name in (explicit or []) if name in report["skipped"]]
    if not report["rows"] and not found:
        found.append("no backend could run here (see the skipped list)")
    return found


# ------------------------------------------------------------------------------------------- report


def format_report(report: dict) -> str:
    """The table a user reads: one line per backend and batch, then what was skipped and the accuracy."""
    lines = [f"edge-ad bench: {report['model']} ({report['bundle']}); parity vs {report['reference']}",
             f"{'backend':21s} {'precision':15s} {'batch':>5s} {'model FPS':>10s} {'p50 ms':>8s} {'p99 ms':>8s} "
             f"{'e2e FPS':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'diff/spread':>11s} {'order':>5s}  vs paper"]
    for r in report["rows"]:
        m, e, p = r["model"], r["e2e"], r["parity"]
        diff = "-" if p.get("diff_over_spread") is None else f"{p['diff_over_spread']:.1e}"
        order = ("same" if p["same_order"] else "DIFF") if "same_order" in p else "-"
        lines.append(f"{r['backend']:21s} {r['precision']:15s} {r['batch']:5d} {m['fps']:10.1f} {m['p50_ms']:8.2f} "
                     f"{m['p99_ms']:8.2f} {e['fps']:8.1f} {e['p50_ms']:8.2f} {e['p99_ms']:8.2f} {diff:>11s} "
                     f"{order:>5s}  {_paper_text(r['vs_paper'])}")
    lines += [f"skipped {name}: {why}" for name, why in report["skipped"].items()]
    lines += [f"FAILED {name}: {why}" for name, why in report["failed"].items()]
    for name, acc in report["accuracy"].items():
        lines.append(f"image AUROC {name}: {acc['image_auroc']:.4f} ({acc['images']} test images, "
                     f"{acc['anomalous']} anomalous, {report['data']})")
    env = report.get("environment", {})
    lines.append(f"CPU: {env.get('cpu')}; GPU: {env.get('gpu') or 'none'}; model = prepared batch -> scores "
                 f"(network + heat map), e2e = {FRAME[1]}x{FRAME[0]} BGR frames -> Results; FPS = batch / p50")
    return "\n".join(lines)


def _paper_text(paper: dict | None) -> str:
    if not paper:
        return "-"
    text = f"{paper['ratio']:.2f}x of {paper['paper_fps']:.0f} FPS ({paper['hardware']})"
    return text + (f" ({paper['note']})" if paper.get("note") else "")


# -------------------------------------------------------------------------------------- environment

# one import name, several distributions
DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
                 "opencv": ("opencv-python", "opencv-python-headless", "opencv-contrib-python"),
                 "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13")}
PACKAGES = ("edge_ad", "numpy", "onnxruntime", "openvino", "opencv", "tensorrt", "torch", "tritonclient")


def package_version(name: str) -> str | None:
    """The installed version of a package by its distribution's metadata (nothing is imported)."""
    for dist in DISTRIBUTIONS.get(name, (name,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):       # x86; ARM boards (Jetson) say "Model"
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """The machine and versions the figures ran on; the GPU as the compiled kernels see it (no torch)."""
    versions = {name: package_version(name) for name in PACKAGES}
    versions["edge_ad"] = versions["edge_ad"] or edge_ad.__version__
    versions["opencv"] = versions["opencv"] or cv2.__version__          # JetPack's apt OpenCV has no metadata
    env = {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
           "python": platform.python_version(), "versions": versions, "gpu": None,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    k = kernels()
    if k is not None and k.has_cuda and k.cuda_device_count() > 0:
        env["gpu"] = k.cuda_device_name(0)
    elif k is not None and k.has_cuda:
        env["cuda_error"] = k.cuda_init_error()
    return env


def check_json_path(path: str | Path) -> Path:
    """The report's path; a folder given as the file is an IsADirectoryError saying what to give."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--json {path} is a folder; give a file name, e.g. {path / 'bench.json'}")
    return path


def write_json(path: str | Path, payload: dict) -> None:
    """Write the report atomically (see write_text_atomic): never a torn file."""
    write_text_atomic(check_json_path(path), json.dumps(payload, indent=2, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """A temporary of its own beside `path`, fsync, rename: a kill, a full disk or a second writer leaves
    the old file or the new one, never a torn one (the temporary is removed on failure; a full disk says so)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(name, 0o666 & ~current_umask())          # as a plain write would (mkstemp makes 0600)
        os.replace(name, path)
    except BaseException as err:
        Path(name).unlink(missing_ok=True)
        if is_disk_full(err, path.parent):
            raise disk_full_error(err, path.parent, f"writing {path.name}", f"the previous {path.name} is kept") from err
        raise
