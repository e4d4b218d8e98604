"""`edge-ad export BUNDLE --triton DIR`: a Triton Inference Server model repository of a bundle.

    DIR/<model>_onnx/config.pbtxt     platform "onnxruntime_onnx", the FP32 graph
    DIR/<model>_onnx/1/model.onnx
    DIR/<model>_trt/config.pbtxt      platform "tensorrt_plan", when the bundle carries engines:
    DIR/<model>_trt/1/<model>.sm86.plan   one plan per compute capability, `cc_model_filenames`

Both with `max_batch_size` (dims exclude the batch) and `dynamic_batching` (preferred batch sizes,
a queue delay), so frames from many cameras on many line PCs are batched on one GPU server; the
raw map comes back and the edge_ad client (runtime/triton_client.py) post-processes it with the bundle's
heatmap parameters and calibration, exactly as the local backends do.

A bundle with fixed extra inputs (SPR's seeded noise) gets them frozen into the repository's ONNX
graph as constants, since Triton batches every input of a batched model; such bundles get no TensorRT
model (the plan keeps `noise` as an input). DiffAD's loop runs in edge_ad, not in Triton: refused.
A plan must match the server's TensorRT version: build the engines with the server's TensorRT; its
optimization profile must take batches 1..max_batch (an error names the engines that do not).
How to serve the repository on a GPU Triton: docs/triton.md.
The config is a `ModelConfig` message of Triton's model_config.proto (tritonclient's classes), printed by
protobuf's text_format: names are escaped by the printer, never pasted into text. Every name that
becomes a folder, a file or a config field (model, tensors, compute capabilities) is checked first
(`validate_meta`); nothing is written outside DIR. A model folder is replaced in one atomic exchange
where the filesystem allows (renameat2), so Triton never sees half a model.

Only model folders this export wrote are replaced: each carries `.edge_ad-triton.json`, a manifest of
its files and their sha256. An existing folder without it (someone else's model, or one written by hand),
or whose files differ from it (a hand-edited config.pbtxt, a version added), is refused with the
differences named, unless `overwrite=True` (the CLI's --overwrite) says to replace it whole.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from edge_ad.bundle import (Bundle, BundleError, current_umask, disk_full_error, file_sha256, is_disk_full,
                            validate_meta)
from edge_ad.runtime.inputs import seeded_inputs
from edge_ad.runtime.triton_client import model_names
from edge_ad.runtime.triton_served import TRITON_TYPES

__all__ = ["write_repository", "model_names", "model_config"]

MAX_BATCH = 4096
MANIFEST = ".edge_ad-triton.json"       # in each model folder we write: its files and their sha256


def _model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise RuntimeError('writing a Triton repository needs tritonclient: pip install "tritonclient[grpc]" '
                           "(edge_ad[triton])") from None
    return model_config_pb2


def model_config(name: str, platform: str, bundle: Bundle, *, max_batch: int, preferred: list[int], delay_us: int,
                 instances: int, plans: dict[str, str] | None = None) -> str:
    """config.pbtxt of one model: a ModelConfig message printed by text_format."""
    from google.protobuf import text_format

    pb = _model_config_pb2()
    inp, out = bundle.meta["input"], bundle.meta["outputs"][0]
    config = pb.ModelConfig(name=name, platform=platform, max_batch_size=max_batch)
    config.input.add(name=inp["name"], data_type=pb.DataType.Value(TRITON_TYPES[inp["dtype"]]),
                     dims=[inp["height"], inp["width"], 3])
    config.output.add(name=out["name"], data_type=pb.DataType.Value(TRITON_TYPES[out["dtype"]]),
                      dims=list(out["shape"][1:]))
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = delay_us
    config.instance_group.add(count=instances)
    config.version_policy.latest.num_versions = 1
    for cc, filename in sorted((plans or {}).items()):
        config.cc_model_filenames[cc] = filename
    return text_format.MessageToString(config)


def _frozen_onnx(bundle: Bundle, dst: Path) -> None:
    """The FP32 graph with its fixed extra inputs (SPR's noise) turned into constants at the bundle's seed."""
    model = onnx.load(str(bundle.file("model.onnx")))
    for name, value in seeded_inputs(bundle.meta.get("graph_inputs", {}), None).items():
        graph_input = next((i for i in model.graph.input if i.name == name), None)
        if graph_input is None:
            raise BundleError(f"{bundle.path}: meta.json lists graph input {name!r}, which model.onnx does not "
                              "take; re-export the bundle")
        model.graph.input.remove(graph_input)
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
    onnx.save(model, str(dst))


def _version_key(version: str) -> tuple[int, ...]:
    """10.3.0 -> (10, 3, 0); only the leading numeric parts count (a validated meta.json has them)."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def _plans(bundle: Bundle, max_batch: int) -> dict[str, str]:
    """Compute capability -> engine file of the bundle's main graph (the newest TensorRT per capability)
    whose optimization profile takes every batch Triton may send, 1..max_batch. Engines of that graph
    that all fall short are an error naming them (Triton would refuse the model at load)."""
    found: dict[str, tuple[str, str]] = {}
    short = []
    for name, info in bundle.meta.get("engines", {}).items():
        if info.get("graph") != bundle.meta.get("fp16", {}).get("model.onnx"):
            continue
        if int(info.get("min_batch", 1)) > 1 or int(info.get("max_batch", 1)) < max_batch:
            short.append(f"{name} (batch {info.get('min_batch', 1)}..{info.get('max_batch', 1)})")
            continue
        cc, version = info["device"]["compute_capability"], info["device"]["tensorrt"]
        if cc not in found or _version_key(version) > _version_key(found[cc][1]):
            found[cc] = (name, version)
    if short and not found:
        raise ValueError(f"{bundle.path}: no TensorRT engine takes batches 1..{max_batch} (the Triton model's "
                         f"max_batch_size): {', '.join(short)}. Rebuild them with `edge-ad export BUNDLE --engine "
                         f"--batch 1,{max_batch},{max_batch}`, or give --max-batch at most their largest batch")
    return {cc: name for cc, (name, _) in found.items()}


def _check_options(max_batch: int, preferred: list[int] | None, delay_us: int, instances: int) -> list[int]:
    """Range checks of the batching options; returns the preferred batch sizes."""
    for name, value, low, high in (("max_batch", max_batch, 1, MAX_BATCH), ("delay_us", delay_us, 0, 10_000_000),
                                   ("instances", instances, 1, 256)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    if preferred is not None and (not isinstance(preferred, (list, tuple)) or
                                  not all(isinstance(b, int) and not isinstance(b, bool) for b in preferred)):
        raise ValueError(f"preferred must be a list of whole numbers (batch sizes), got {preferred!r}")
    return sorted({b for b in (preferred or [max(1, max_batch // 2), max_batch]) if 1 <= b <= max_batch})


def write_repository(bundle: Bundle, out: str | Path, *, max_batch: int = 8, preferred: list[int] | None = None,
                     delay_us: int = 2000, instances: int = 1, overwrite: bool = False) -> list[Path]:
    """Write (or add to) a model repository; returns the model folders written. Each model folder is
    written to a temporary folder inside the repository and swapped in whole. An existing model folder
    is replaced only when this export wrote it and nobody changed it since (its manifest), or with
    `overwrite`; the check of every folder comes before anything is written."""
    validate_meta(bundle.meta, str(bundle.path))         # names become folders, files and config fields
    if bundle.meta.get("pipeline", {}).get("kind", "single") != "single":
        raise ValueError(f"{bundle.model_name} is a multi-graph diffusion bundle: its DDIM loop runs in edge_ad, "
                         "not in Triton; serve it with `edge-ad stream` on the GPU machine instead")
    preferred = _check_options(max_batch, preferred, delay_us, instances)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names, written = model_names(bundle), []
    common = dict(max_batch=max_batch, preferred=preferred, delay_us=delay_us, instances=instances)
    plans = _plans(bundle, max_batch) if not bundle.meta.get("graph_inputs") else {}
    if not overwrite:
        for name in [names["onnx"], *([names["tensorrt"]] if plans else [])]:
            check_replaceable(out / name)

    def onnx_model(tmp: Path) -> None:
        (tmp / "1").mkdir()
        _frozen_onnx(bundle, tmp / "1" / "model.onnx")
        (tmp / "config.pbtxt").write_text(model_config(names["onnx"], "onnxruntime_onnx", bundle, **common))

    written.append(_write_model(out, names["onnx"], onnx_model, overwrite))
    if plans:
        def trt_model(tmp: Path) -> None:
            (tmp / "1").mkdir()
            files = {}
            for cc, engine in sorted(plans.items()):
                files[cc] = f"{bundle.model_name}.sm{cc.replace('.', '')}.plan"
                shutil.copyfile(bundle.file(engine), tmp / "1" / files[cc])
            (tmp / "config.pbtxt").write_text(model_config(names["tensorrt"], "tensorrt_plan", bundle, plans=files,
                                                           **common))

        written.append(_write_model(out, names["tensorrt"], trt_model, overwrite))
    return written


def check_replaceable(folder: Path) -> None:
    """Refuse to replace `folder` unless it is absent or exactly what an export of ours wrote there
    (its manifest lists every file, with the same sha256): a BundleError that names the difference."""
    if not os.path.lexists(folder):
        return
    fix = f"move it away, write the repository elsewhere, or pass --overwrite (overwrite=True) to replace {folder} whole"
    if folder.is_symlink() or not folder.is_dir() or not any(folder.iterdir()):
        return                       # links and files: _write_model refuses them; an empty folder loses nothing
    try:
        listed = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        if not isinstance(listed, dict):
            raise TypeError("files is not an object")
    except FileNotFoundError:
        raise BundleError(f"{folder} exists and edge_ad did not write it (no {MANIFEST}): it may be another model or "
                          f"hand-made; refusing to replace it: {fix}") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BundleError(f"{folder / MANIFEST} cannot be read ({str(err)[:120]}); refusing to replace {folder}: "
                          f"{fix}") from None
    present = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*")
               if (p.is_file() or p.is_symlink()) and p.name != MANIFEST}
    added = sorted(set(present) - set(listed))
    missing = sorted(set(listed) - set(present))
    changed = sorted(n for n in set(present) & set(listed)
                     if present[n].is_symlink() or file_sha256(present[n]) != listed[n])
    if added or missing or changed:
        what = "; ".join(f"{label}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
                         for label, names in (("changed", changed), ("added", added), ("removed", missing)) if names)
        raise BundleError(f"{folder} was changed since edge_ad wrote it ({what}); refusing to replace those "
                          f"changes: {fix}")


def _write_manifest(folder: Path) -> None:
    """The manifest of a filled model folder: every file's sha256 (what a later export may replace)."""
    files = {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"written_by": "edge_ad export --triton", "files": files}, indent=2) + "\n")




def _write_model(repo: Path, name: str, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Fill a temporary folder in `repo` and swap it in as `repo/name`; one writer per model at a
    time (a lock file), and the temporaries of a killed writer are removed first. An existing folder
    must be ours and unchanged (checked again under the lock) unless `overwrite`."""
    target = repo / name
    if target.resolve().parent != repo.resolve() or target.is_symlink():
        raise BundleError(f"{target} is a link or leaves the repository {repo}; refusing to replace it: "
                          "remove it, or write the repository elsewhere")
    if target.exists() and not target.is_dir():
        raise BundleError(f"{target} exists and is not a model folder; remove it or choose another repository")
    with _model_lock(repo, name):
        stale = re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.partial")
        for entry in repo.iterdir():
            if stale.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=repo))
        try:
            os.chmod(tmp, 0o777 & ~current_umask())
            fill(tmp)
            _write_manifest(tmp)
            if not overwrite:
                check_replaceable(target)
            if not target.exists():
                os.rename(tmp, target)
            elif _exchange(tmp, target):
                shutil.rmtree(tmp)                  # now the old model folder
            else:
                aside = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=repo))
                os.rename(target, aside / "old")
                os.rename(tmp, target)
                shutil.rmtree(aside)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, Exception) and is_disk_full(err, repo):
                kept = "the previous model folder is kept unchanged" if target.exists() else "nothing was written"
                raise disk_full_error(err, repo, f"writing the Triton model {target}",
                                      f"{kept} and the temporary was removed") from err
            raise
    return target


@contextmanager
def _model_lock(repo: Path, name: str) -> Iterator[None]:
    """An exclusive lock on `repo/.name.lock`; a second writer of the same model gets a clear error."""
    fd = os.open(repo / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BundleError(f"another export is writing {repo / name} right now; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux renameat2 RENAME_EXCHANGE); False where the
    kernel, libc or filesystem cannot, so the caller falls back to two renames."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100                     # Linux's AT_FDCWD: paths relative to the working directory
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):      # not supported here
        return False
    raise OSError(code, os.strerror(code), str(b))
