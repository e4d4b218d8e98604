"""The fit loop: a fixed number of epochs (no selection on the test set), tqdm progress, a checkpoint
after every epoch written atomically, and --resume from the last one.

A checkpoint holds everything an uninterrupted run would still have in memory at the end of an epoch:
weights, optimizer states, the loss history, and the random states (torch, NumPy, Python, the data
loader's shuffling generator and any NumPy generator a model keeps), so that N epochs + resume M
epochs gives the same weights as N + M epochs in one go.

Every file goes to disk through `write_atomic`: a temporary sibling, fsync, rename. A kill or a full
disk at any moment leaves the previous file intact; a full disk is reported as "no space left on
DIR" (`DiskFullError`) and its temporary is removed.

A non-finite loss (or gradient norm, or weights) stops the training at once with a
`TrainingDivergedError` naming the epoch and batch: the check comes before the optimizer step, so the
last checkpoint (the last finite epoch) and the run.json that describes it are never replaced by NaN weights.
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from edge_ad.bundle import DiskFullError, file_sha256, is_disk_full   # one notion of a full disk, training and export
from edge_ad.models.base import AnomalyModel

__all__ = ["CHECKPOINT", "CheckpointError", "DiskFullError", "TrainingDivergedError", "capture_rng",
           "clean_temporaries", "file_sha256", "fit", "is_disk_full", "load_checkpoint", "non_finite_weights",
           "restore_rng", "save_checkpoint", "temporary_for", "write_atomic", "write_text_atomic"]

CHECKPOINT = "checkpoint.pt"
TEMP_SUFFIX = ".partial"            # temporaries are `.<name>.<pid>.partial` beside the file they become
LEGACY_TEMPS = ("checkpoint.tmp",)  # what earlier versions left behind when killed mid-write


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not belong to the run or the arguments."""


class TrainingDivergedError(ValueError):
    """The loss (or the weights) became NaN or infinite: training stopped before that step changed the
    weights, and the last checkpoint (the last finite epoch) was kept. The message says where and what to try."""


def _open_for_write(path: Path) -> BinaryIO:
    """The write layer of every run file (a plain buffered file); tests replace it to simulate a full disk."""
    return open(path, "wb")


class _HashingWriter(io.RawIOBase):
    """Passes writes through to `file` and keeps the sha256 of everything written."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__()
        self.file, self.sha256 = file, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        written = self.file.write(view)
        self.sha256.update(view[: len(view) if written is None else written])
        return len(view) if written is None else written


def temporary_for(path: Path) -> Path:
    """The temporary sibling `path` is written through (hidden, with this process's id)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def clean_temporaries(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Remove the temporaries that killed writers left for the files `names` in `folder` (only those:
    nothing else in the folder is touched; a temporary of a process still running is kept)."""
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        legacy = path.name in LEGACY_TEMPS
        ours = any(path.name.startswith(f".{n}.") and path.name.endswith(TEMP_SUFFIX) for n in names)
        if not (legacy or ours) or not path.is_file() or path.is_symlink():
            continue
        if ours and _writer_alive(path.name[: -len(TEMP_SUFFIX)].rsplit(".", 1)[-1]):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _writer_alive(pid_text: str) -> bool:
    """Whether the process that named a temporary is still running (not this one: ours are stale)."""
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except OSError:          # exists, another user's
        return True
    return True


def write_atomic(path: Path, write: Callable[[BinaryIO], Any], *, what: str | None = None) -> str:
    """Write `path` through `write(file)` into a temporary sibling, fsync it and rename it over `path`.

    Returns the sha256 of the bytes written. On any failure (a full disk, a kill by Ctrl-C) the
    temporary is removed and `path` keeps its previous content; a full disk raises DiskFullError."""
    path = Path(path)
    tmp = temporary_for(path)
    try:
        with _open_for_write(tmp) as file:
            hashing = _HashingWriter(file)
            write(hashing)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if is_disk_full(err, path.parent):
            free = _free_mb(path.parent)
            raise DiskFullError(errno.ENOSPC, f"no space left on {path.parent.resolve()} while writing "
                                f"{what or path.name} ({free}); the previous {path.name} is kept unchanged. "
                                "Free some space there, then run the command again") from err
        raise
    return hashing.sha256.hexdigest()


def write_text_atomic(path: Path, text: str) -> str:
    """write_atomic for a UTF-8 text file (run.json, metrics.json); returns its sha256."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def _free_mb(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MB free"
    except OSError:
        return "free space unknown"


def save_checkpoint(path: Path, model: nn.Module, optimizers: list, epoch: int, extra: dict, *,
                    losses: list[float] | None = None, rng: dict | None = None) -> str:
    """Write the checkpoint atomically (a kill or a full disk mid-write never leaves a broken or a
    missing one); returns its sha256."""
    state = {"model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
             "epoch": epoch, "losses": list(losses or []), "rng": rng or {}, **extra}
    return write_atomic(Path(path), lambda f: torch.save(state, f), what=f"the checkpoint of epoch {epoch}")


def load_checkpoint(path: Path, *, expected_sha256: str | None = None) -> dict:
    """weights_only=True: a checkpoint holds tensors and plain values, never code to unpickle.

    With `expected_sha256`, a checkpoint whose bytes differ (other weights than the run describes)
    is refused before it is read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first, or drop --resume")
    data = path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise CheckpointError(f"{path} is not the checkpoint {path.parent / 'run.json'} describes (its sha256 "
                              "differs): it was replaced or damaged after the run finished, e.g. by an "
                              "interrupted retrain or a partial copy. Copy the run again, resume the training that "
                              "replaced it (`edge-ad train ... --resume`), or retrain with --overwrite")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a corrupt or foreign file
        raise CheckpointError(f"cannot read the checkpoint {path}: it is truncated, corrupt or holds more "
                              f"than weights ({str(err).splitlines()[0][:200]}); retrain with --overwrite") from err


# Random states --------------------------------------------------------------------------------------------

def capture_rng(data: DataLoader | None = None, model: nn.Module | None = None) -> dict:
    """The random states a resumed run needs to continue exactly as an uninterrupted one."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    generator = getattr(data, "generator", None)
    if generator is not None:
        state["loader"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if model is not None:
        state["model"] = {k: g.bit_generator.state for k, g in _model_generators(model).items()}
    return state


def restore_rng(state: dict, data: DataLoader | None = None, model: nn.Module | None = None) -> None:
    """Set the random states `capture_rng` recorded (those present; older checkpoints have none)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(_tuples(state["python"]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    generator = getattr(data, "generator", None)
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if model is not None:
        generators = _model_generators(model)
        for key, value in state.get("model", {}).items():
            if key in generators:
                generators[key].bit_generator.state = value


def _tuples(value):
    """random.setstate needs tuples where a round trip may have given lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _model_generators(model: nn.Module) -> dict[str, np.random.Generator]:
    """NumPy generators held by the model's modules or by plain objects they hold (e.g. DiffAD's
    anomaly synthesizer), keyed by their attribute path."""
    found: dict[str, np.random.Generator] = {}
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            key = f"{name}.{attr}" if name else attr
            if isinstance(value, np.random.Generator):
                found[key] = value
            elif value is not None and not isinstance(value, (nn.Module, torch.Tensor, dict, list, tuple)):
                for sub, inner in getattr(value, "__dict__", {}).items():
                    if isinstance(inner, np.random.Generator):
                        found[f"{key}.{sub}"] = inner
    return found


# The loop --------------------------------------------------------------------------------------------------

def fit(model: AnomalyModel, data: DataLoader, inputs: Callable[[torch.Tensor], torch.Tensor], *, epochs: int,
        run_dir: Path, device: str, resume: bool = False, extra: dict | None = None,
        state: dict | None = None, on_epoch: Callable[[int, list[float], str], None] | None = None) -> list[float]:
    """Train `model` (its training_loss(x), optimizers(), max_grad_norm and after_step(): models/base.py) on
    batches turned into model input by `inputs` (the export's own UInt8Input.normalize); returns the
    loss of every epoch of this training, the epochs of earlier sessions included when resuming.

    `state`: the checkpoint to resume from (already read and checked by the caller; read from
    RUN/checkpoint.pt when None). `on_epoch(epoch, losses, sha256)` runs after each checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    optimizers = model.optimizers()
    start, losses = 0, []
    if resume:
        state = state if state is not None else load_checkpoint(run_dir / CHECKPOINT)
        model.load_state_dict(state["model"])
        if len(state["optimizers"]) != len(optimizers):
            raise CheckpointError(f"{run_dir / CHECKPOINT} holds {len(state['optimizers'])} optimizer states, "
                                  f"the model has {len(optimizers)}: it is not a checkpoint of this training")
        for opt, opt_state in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        start = int(state["epoch"])
        losses = [float(x) for x in state.get("losses", [])][:start]
        restore_rng(state.get("rng", {}), data, model)
        print(f"resuming after epoch {start} of {epochs}")
    clip = model.max_grad_norm
    trainable = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(start, epochs):
        model.train()
        total, count = 0.0, 0
        bar = tqdm(data, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
        for index, batch in enumerate(bar):
            images = batch["image"].to(device)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss = model.training_loss(inputs(images))
            loss.backward()
            value = float(loss.detach())
            if not math.isfinite(value):         # before the step: the weights are still the last finite ones
                raise _diverged(f"the loss is {value}", run_dir, epoch, epochs, (index, _batches(data)))
            if clip:
                norm = float(torch.nn.utils.clip_grad_norm_(trainable, clip))
                if not math.isfinite(norm):
                    raise _diverged(f"the gradient norm is {norm} (the loss was {value:.6g})", run_dir, epoch, epochs,
                                    (index, _batches(data)))
            for opt in optimizers:
                opt.step()
            model.after_step()                   # e.g. SPR's EMA update
            total += value * len(images)
            count += len(images)
            bar.set_postfix(loss=f"{total / count:.4f}")
        losses.append(total / max(count, 1))
        print(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
        bad = non_finite_weights(model)
        if bad:          # e.g. an infinite gradient without clipping: never replace the last good checkpoint
            raise _diverged(f"the weights became non-finite ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})",
                            run_dir, epoch, epochs)
        sha = save_checkpoint(run_dir / CHECKPOINT, model, optimizers, epoch + 1, extra or {}, losses=losses,
                              rng=capture_rng(data, model))
        if on_epoch is not None:
            on_epoch(epoch + 1, list(losses), sha)
    model.eval()
    return losses


# Divergence -------------------------------------------------------------------------------------------------

def _batches(data) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


def non_finite_weights(model: nn.Module) -> list[str]:
    """Names of the model's floating-point parameters and buffers that hold a NaN or an infinity."""
    return [name for name, t in model.state_dict().items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _diverged(what: str, run_dir: Path, epoch: int, epochs: int,
              batch: tuple[int, int | None] | None = None) -> TrainingDivergedError:
    """The error for a non-finite step (`epoch` and `batch` = (index, count) 0-based; no batch: found after
    the epoch): where it happened, which checkpoint was kept, what to try."""
    at = f"epoch {epoch + 1}/{epochs}"
    if batch is not None:
        at += f", batch {batch[0] + 1}" + (f"/{batch[1]}" if batch[1] else "")
    checkpoint = Path(run_dir) / CHECKPOINT
    if epoch > 0 and checkpoint.is_file():
        kept = (f"the last finite checkpoint, {checkpoint} (after epoch {epoch}), is kept unchanged and "
                f"{Path(run_dir) / 'run.json'} still describes it")
    elif checkpoint.is_file():
        kept = f"{checkpoint} (written before this training started) is kept unchanged"
    else:
        kept = "no checkpoint was written (no epoch finished with finite weights)"
    stopped = "before this step changed the weights" if batch is not None else "without saving these weights"
    return TrainingDivergedError(
        f"training diverged at {at}: {what}. Training stopped {stopped}; {kept}. Try a lower learning rate, "
        "check the training images (a corrupt, blank or extreme image), or another seed; then retrain with "
        "--overwrite (or another --out)")
