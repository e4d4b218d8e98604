"""`edge-ad train`: fit a model on normal images, calibrate on normal images it did not see, evaluate on test.

Data comes in any layout edge_ad/data reads (MVTec AD, MVTec AD 2, LOCO, VisA, plain folders; see
edge_ad/data/layouts.py). Calibration uses the layout's own normal validation images when it has
them (validation/good), else a held-out part of the training images. A test split is optional: with
none, or with no defect images, the run is still trained, calibrated and written, and the metrics
that need them are null with the reason in `absent`. Plain folders (--good/--bad) have no place for
normal test images: the held-out normal images stand in as such (said in the metrics).

Several category folders train one model on all of them (UniAD's unified setting; any model can): the
training images are pooled, each category gives its own validation split, one calibration is made from
all of them, and metrics are reported per category and as their mean.

A run's files belong together. RUN/run.json names its `run_id` and `status` ("training" until
calibration and evaluation are written, then "complete") and, once complete, the sha256 of the
checkpoint it describes; every checkpoint carries the same `run_id`. Each file is written atomically
(temporary sibling + rename), run.json is rewritten to "training" before a checkpoint is replaced, and
only a complete run whose checkpoint matches its sha256 is exported or evaluated. A kill at any moment
therefore leaves the old complete run, the new complete run, or a new partial run that `--resume`
continues, never calibration of other weights. An existing run is replaced only with --overwrite;
one process at a time writes a run folder (a lock on the folder); stale temporaries of a killed
writer are removed by the next one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import ConcatDataset

import edge_ad
from edge_ad.data import DataSource, SampleDataset, load_source
from edge_ad.models import create_model, training_defaults
from edge_ad.models.base import AnomalyModel
from edge_ad.postprocess import HeatmapSpec
from edge_ad.runtime.preprocess import Geometry
from edge_ad.training.adapter import UInt8Input
from edge_ad.training.calibrate import Calibration, CalibrationError, calibrate
from edge_ad.training.data import Part, Prepared, loader, train_val_parts
from edge_ad.training.predict import metrics, predict
from edge_ad.training.fit import (CHECKPOINT, CheckpointError, capture_rng, clean_temporaries, file_sha256, fit,
                                  load_checkpoint, save_checkpoint, write_text_atomic)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no folder lock
    fcntl = None

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
EVAL_FILE = "eval.json"
RUN_FILES = (RUN_FILE, CHECKPOINT, METRICS_FILE, EVAL_FILE)    # everything `train` and `eval` write in a run
TRAINING, COMPLETE = "training", "complete"
RUN_FORMAT = 2
MAX_SEED = 2**63 - 1


class RunError(ValueError):
    """A run folder that cannot be used as asked (already a run, in use, unfinished, mixed, damaged);
    the message says what to do."""


@dataclass
class TrainConfig:
    data: str | DataSource | list         # one category (a folder or a DataSource), or several for one unified model
    out: str
    model: str = "simplenet"
    epochs: int | dict[str, int] | None = None   # None: the model's default; staged models: per stage
    batch_size: int | None = None
    seed: int = 0
    device: str = "cpu"
    resume: bool = False                  # continue the run in `out` from its last checkpoint
    overwrite: bool = False               # replace a run already in `out`
    val_fraction: float = 0.1
    budget: str = "paper"                 # "paper" or "cpu": which of the model's defaults to use
    stages: list[str] | None = None       # staged models (DiffAD): the stages to run now; None = all
    model_kwargs: dict = field(default_factory=dict)   # backbone, image_size, resize_size, pretrained, ...
    fit: str | None = None                # "squash", "letterbox" or "crop"; None: preprocess.DEFAULT_FIT
    format: str | None = None             # dataset layout of the `data` folders (data.FORMATS); None: detected
    category: str | None = None           # VisA: the object, when `data` is the VisA root


@dataclass
class Category:
    name: str
    train: SampleDataset
    test: SampleDataset | None
    val: SampleDataset | None = None      # the layout's own normal validation images (calibration), if any
    source: DataSource | None = None      # resolved: what run.json records to read the same images again
    test_where: str = ""                  # where the test images were looked for (messages)
    test_note: str | None = None          # how the test split was completed (normal images stood in)


def load_categories(data, *, format: str | None = None, category: str | None = None) -> list[Category]:
    """One Category per source (a folder, a DataSource or its dict); `format` and `category` apply
    to the sources given as folders. Names are the folder (or VisA object) names, made unique."""
    items = [data] if isinstance(data, (str, Path, dict, DataSource)) else list(data)
    if not items:
        raise ValueError("no data given; pass --data DIR [DIR ...] or --good DIR")
    out, seen = [], set()
    for item in items:
        if isinstance(item, (str, Path)):
            if not str(item).strip():
                raise ValueError("an empty --data folder name was given; pass the category folder(s)")
            item = DataSource(path=str(item), format=format, category=category)
        splits, source = load_source(DataSource.of(item))
        name = source.name()
        while name in seen:
            name += "_"
        seen.add(name)
        out.append(Category(name, splits.train, splits.test, splits.val, source, splits.test_where))
    return out


def run_data(info: dict):
    """What a run was trained on, for load_categories: the resolved sources it recorded (runs from
    before layouts record folders only, which are detected again)."""
    return info.get("data_sources") or info["data"]


def categories_to_test(info: dict, data: list[str] | None = None, *, format: str | None = None,
                       category: str | None = None) -> list[Category]:
    """The categories to test (eval, report): `data` (folders) or the run's own sources, plain
    folders' test split completed by the held-out normal images as training did (its seed, fraction)."""
    categories = load_categories(data or run_data(info), format=format, category=category)
    fraction = float(info.get("val_fraction", TrainConfig.val_fraction))
    for c in categories:
        if lacks_normal_test_images(c):
            complete_test(c, train_val_parts(c.train, c.val, fraction, int(info.get("seed", 0)))[1])
    return categories


def plan_categories(categories: list[Category], fraction: float, seed: int) -> list[tuple[Part, Part]]:
    """(training images, calibration images) of each category; completes plain folders' test split
    (defect images only) with the held-out normal images (never trained on)."""
    parts = [train_val_parts(c.train, c.val, fraction, seed) for c in categories]
    for c, (_, val) in zip(categories, parts):
        if lacks_normal_test_images(c):
            complete_test(c, val)
    return parts


def lacks_normal_test_images(c: Category) -> bool:
    """Whether the test split is plain folders' defect images, which has no normal ones by layout
    (the other layouts have a place for them: there an empty one is the user's choice, reported)."""
    labels = c.test.labels if c.test is not None else np.zeros(0, np.int64)
    is_folder = c.source is not None and c.source.format == "folder"
    return bool(is_folder and (labels == 1).any() and not (labels == 0).any())


def complete_test(c: Category, val: Part) -> None:
    """Add the held-out normal images to a test split that has none (image AUROC needs both classes)."""
    c.test = c.test.plus(val.samples("validation"), "test")
    c.test_note = (f"no normal test images in {c.test_where}: the {len(val)} held-out normal images of "
                   f"{val.source} stand in; they also set the threshold, so the false-positive rate at it "
                   "is optimistic")
    log.warning("%s: %s", c.name, c.test_note)


# Checks made before anything is trained or written ---------------------------------------------------------

def _check_stage_epochs(model: AnomalyModel, epochs: int | dict) -> None:
    """Per-stage epochs name exactly the model's stages (a staged model only)."""
    if not isinstance(epochs, dict):
        return
    stages = list(model.STAGES)
    if sorted(epochs) != sorted(stages):
        raise ValueError(f"epochs per stage must name the stages {stages or '(this model has none)'}, got "
                         f"{sorted(epochs)}; or give one number of epochs for every stage")


def check_config(cfg: TrainConfig) -> None:
    """Numbers in range, a usable device, not both --resume and --overwrite."""
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    for name in ("epochs", "batch_size"):
        value = getattr(cfg, name)
        values = value.values() if name == "epochs" and isinstance(value, dict) else [value]
        if value is not None and any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"{name} must be a whole number >= 1 (epochs: or one per stage), got {value!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}, got {cfg.seed!r}")
    if not isinstance(cfg.val_fraction, (int, float)) or not 0 < cfg.val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {cfg.val_fraction!r}")
    if not str(cfg.out).strip():
        raise ValueError("--out is empty; give the run folder to write")
    check_device(cfg.device)


def check_device(device: str) -> None:
    """A torch device that exists here: cpu, or cuda[:N] with that GPU visible to torch."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(f"--device {device!r} is not a device torch knows (cpu, cuda, cuda:N): {err}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {device}: torch sees no CUDA GPU here (torch {torch.__version__}); "
                             "use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"--device {device}: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")


def check_test_splits(categories: list[Category]) -> dict[str, str]:
    """What each category's test split cannot measure, said before training (not after hours of it):
    without defect images no metric can be computed, without good images no image AUROC. The run is
    still trained, calibrated and written, with those metrics null and the reason recorded."""
    notes = {}
    for c in categories:
        labels = c.test.labels if c.test is not None else np.zeros(0, np.int64)
        test = c.test_where or (Path(c.test.root) / "test" if c.test is not None else "the test split")
        if not len(labels):
            notes[c.name] = (f"no test images ({test}): trained on good images only; image AUROC, pixel AUROC, "
                             "AUPRO and the operating point need defect images, so they are null; the model is "
                             "still trained, calibrated and written")
        elif not (labels == 1).any():
            notes[c.name] = (f"{test} has no defect images (only good/): image AUROC, pixel AUROC and AUPRO "
                             "cannot be computed; the model is still trained, calibrated and written, with "
                             "those metrics null")
        elif not (labels == 0).any():
            notes[c.name] = (f"{test} has no good/ images: image AUROC cannot be computed (null in the run); "
                             "the model is still trained, calibrated and written")
    for note in notes.values():
        log.warning(note)
    return notes


def _check_out(run_dir: Path, folders: list[str]) -> None:
    """--out is a folder (or does not exist yet) and lies outside the data folders."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} exists and is not a folder; choose a run folder")
    out = run_dir.resolve()
    for folder in folders:
        data = Path(folder).resolve()
        if out == data or data in out.parents:
            raise RunError(f"--out {run_dir} lies inside the data folder {folder}; write the run elsewhere "
                           "so that its files never mix with the images")


def _selected_stages(model: AnomalyModel, cfg: TrainConfig) -> list[str] | None:
    """The stages to run (staged models), checked; None for a model trained in one go."""
    if not model.STAGES:
        if cfg.stages:
            raise ValueError(f"--stage is for staged models (diffad); {cfg.model} trains in one go")
        return None
    stages = list(model.STAGES)
    selected = list(cfg.stages or stages)
    unknown = [s for s in selected if s not in stages]
    if unknown or selected != sorted(selected, key=stages.index) or len(set(selected)) != len(selected):
        raise ValueError(f"stages {selected}: choose among {', '.join(stages)}, in that order")
    return selected


# The run folder --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Create the run folder and hold an exclusive lock on it: one writer at a time."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunError(f"--out {run_dir} exists and is not a folder; choose a run folder") from None
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunError(f"{run_dir} is being written by another `edge-ad train` right now; wait for it to "
                           "finish, or choose another --out") from None
        yield
    finally:
        os.close(fd)


def read_run_info(run_dir: Path) -> dict | None:
    """RUN/run.json as a dict, None when there is none; a damaged file is a RunError."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise RunError(f"{path} cannot be read ({str(err)[:200]}); the run is damaged: retrain with --overwrite") from None
    if not isinstance(info, dict):
        raise RunError(f"{path} is not a run description (a JSON object); retrain with --overwrite")
    return info


def _describe(run_dir: Path) -> str:
    try:
        info = read_run_info(run_dir)
    except RunError:
        return "its run.json is damaged"
    if info is None:
        return "a checkpoint without run.json"
    status = info.get("status", COMPLETE if "calibration" in info else TRAINING)
    done = info.get("stages_done")
    progress = f"stages {', '.join(done) or 'none'} done" if done is not None else \
        f"{info.get('epochs_done', info.get('epochs', '?'))} epoch(s)"
    return f"{info.get('model', '?')}, {status}, {progress}"


def _plain(value):
    """JSON-shaped copy (tuples -> lists), so a config read back from JSON compares equal."""
    return json.loads(json.dumps(value, default=str))


class _RunWriter:
    """Writes RUN/run.json (atomically, strict JSON) from the fixed description plus the progress."""

    def __init__(self, run_dir: Path, base: dict, run_id: str, carry: dict) -> None:
        self.path, self.base, self.run_id, self.carry = run_dir / RUN_FILE, base, run_id, carry

    def write(self, **fields) -> dict:
        info = {"format": RUN_FORMAT, "run_id": self.run_id, **self.base, **self.carry, **fields}
        write_text_atomic(self.path, json.dumps(_finite_or_null(info), indent=2, allow_nan=False) + "\n")
        return info


def _finite_or_null(value):
    """NaN/inf (a diverged loss) become null: run.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def _check_same_settings(run_dir: Path, state: dict, cfg: TrainConfig, model: AnomalyModel, run_info: dict,
                         *, training: bool) -> None:
    """The checkpoint was made by this model with this geometry and configuration (and, to resume,
    the same batch size, seed and data split); otherwise say what differs."""
    diffs = []
    if state.get("model_name") not in (None, cfg.model):
        diffs.append(f"model: run {state['model_name']!r}, arguments {cfg.model!r}")
    if state.get("config") is not None:
        before, now = _plain(state["config"]), _plain(model.config)
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                diffs.append(f"{key}: run {before.get(key)!r}, arguments {now.get(key)!r}")
    if training:
        for key in ("batch_size", "seed", "train_images", "val_images"):
            if key in state and _plain(state[key]) != _plain(run_info[key]):
                diffs.append(f"{key}: run {state[key]!r}, arguments {run_info[key]!r}")
    if diffs:
        raise RunError(f"{run_dir / CHECKPOINT} was trained with other settings than these arguments give "
                       f"({'; '.join(diffs)}); give the run's settings (see {run_dir / RUN_FILE}), or start a new "
                       "run with --overwrite or another --out")


def _resume_state(run_dir: Path, info: dict | None, cfg: TrainConfig, model: AnomalyModel,
                  run_info: dict, *, training: bool) -> dict | None:
    """The checkpoint to continue from, checked against the run and the arguments; None when the run
    in the folder has no checkpoint of its own yet (it then starts from epoch 0)."""
    path = run_dir / CHECKPOINT
    partial = info is not None and info.get("status") == TRAINING
    if not path.is_file():
        if partial and training:
            log.warning("%s has no checkpoint of this run yet; training starts from epoch 0", run_dir)
            return None
        raise FileNotFoundError(f"no checkpoint at {path}; train first, or drop --resume")
    state = load_checkpoint(path)
    if not _belongs(path, state, info):
        if partial and training:
            log.warning("the checkpoint in %s belongs to the run this one replaced; removing it, training starts "
                        "from epoch 0", run_dir)
            path.unlink()
            return None
        raise RunError(f"{path} and {run_dir / RUN_FILE} belong to different trainings (an interrupted retrain?); "
                       "retrain with --overwrite")
    _check_same_settings(run_dir, state, cfg, model, run_info, training=training)
    return state


def _belongs(path: Path, state: dict, info: dict | None) -> bool:
    """Whether the checkpoint is the run's: the same run_id, or (a checkpoint from before run ids)
    the one run.json recorded by its sha256. Runs from before run ids accept any."""
    run_id = (info or {}).get("run_id")
    if not run_id:
        return True
    if state.get("run_id"):
        return state["run_id"] == run_id
    return info.get("checkpoint_sha256") is not None and file_sha256(path) == info["checkpoint_sha256"]


# Training ---------------------------------------------------------------------------------------------------

def train(cfg: TrainConfig) -> dict:
    """Train, calibrate and evaluate; writes RUN/checkpoint.pt, RUN/run.json and RUN/metrics.json."""
    start = time.perf_counter()
    check_config(cfg)
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.out)
    defaults = training_defaults(cfg.model, cfg.budget)      # an unknown model name fails first
    categories = load_categories(cfg.data, format=cfg.format, category=cfg.category)
    sources = [c.source for c in categories]
    folders = [s.folder() for s in sources]
    _check_out(run_dir, [p for s in sources for p in (s.path, s.good, s.bad, s.masks) if p is not None])
    parts = plan_categories(categories, cfg.val_fraction, cfg.seed)
    notes = check_test_splits(categories)
    epochs = cfg.epochs or defaults["epochs"]
    batch_size = cfg.batch_size or defaults["batch_size"]
    model = create_model(cfg.model, **{**defaults.get("model_kwargs", {}), **cfg.model_kwargs}).to(cfg.device)
    selected = _selected_stages(model, cfg)
    _check_stage_epochs(model, epochs)
    size, resize = model.config["image_size"], model.config["resize_size"]
    geometry = Geometry.for_model(size, resize, cfg.fit)
    wrapped = UInt8Input(model, model.mean, model.std).to(cfg.device)   # the export's own pre-processing
    run_info = {"model": cfg.model, "config": model.config, "geometry": geometry.to_dict(),
                "heatmap": model.heatmap_spec()._asdict(), "data": folders[0] if len(folders) == 1 else folders,
                "data_sources": [s.to_dict() for s in sources], "categories": [c.name for c in categories],
                "epochs": epochs, "batch_size": batch_size, "budget": cfg.budget, "seed": cfg.seed,
                "val_fraction": cfg.val_fraction, "train_images": sum(len(t) for t, _ in parts),
                "val_images": sum(len(v) for _, v in parts),
                "calibration_images": {c.name: v.source for c, (_, v) in zip(categories, parts)},
                "edge_ad": edge_ad.__version__, "torch": torch.__version__}
    if notes:
        run_info["test_split_notes"] = notes
    train_set = ConcatDataset([t.prepared(geometry) for t, _ in parts])
    train_data = loader(train_set, batch_size, shuffle=True, seed=cfg.seed)
    extra = {"model_name": cfg.model, "config": model.config, "geometry": geometry.to_dict(),
             "batch_size": batch_size, "seed": cfg.seed, "train_images": run_info["train_images"],
             "val_images": run_info["val_images"]}
    with run_lock(run_dir):
        clean_temporaries(run_dir, RUN_FILES)
        begun = _begin(run_dir, cfg, model, run_info, selected)
        writer, state = begun.writer, begun.state
        extra["run_id"] = writer.run_id
        if selected is not None:
            losses, done = run_stages(model, cfg, train_data, wrapped, epochs, extra, state=state, writer=writer,
                                      previous_losses=begun.previous_losses)
            if done != list(model.STAGES):      # trained in parts: the run is complete after the last stage
                writer.write(status=TRAINING, stages_done=done, losses=losses,
                             checkpoint_sha256=file_sha256(run_dir / CHECKPOINT))
                return {"stages_done": done, "seconds": time.perf_counter() - start}
            progress = {"stages_done": done}
        else:
            if state is None:                    # e.g. SimpleNet's feature statistics
                _prepare(model, train_data, wrapped, cfg.device)

            def on_epoch(epoch: int, so_far: list[float], sha: str) -> None:
                writer.write(status=TRAINING, epochs_done=epoch, losses=so_far, checkpoint_sha256=sha)

            losses = fit(model, train_data, wrapped.normalize, epochs=epochs, run_dir=run_dir, device=cfg.device,
                         resume=state is not None, state=state, extra=extra, on_epoch=on_epoch)
            progress = {"epochs_done": epochs}
        calibration, result = _calibrate_and_evaluate(run_dir, model, wrapped, categories, geometry, parts,
                                                      batch_size, cfg.device)
        result["seconds"] = time.perf_counter() - start
        sha = file_sha256(run_dir / CHECKPOINT)
        write_text_atomic(run_dir / METRICS_FILE, json.dumps(_finite_or_null(result), indent=2, allow_nan=False) + "\n")
        writer.write(status=COMPLETE, **progress, calibration=calibration.to_dict(), losses=losses, metrics=result,
                     checkpoint_sha256=sha)
    return result


@dataclass
class _Start:
    writer: _RunWriter
    state: dict | None                       # the checkpoint to continue from; None: from scratch
    previous_losses: dict = field(default_factory=dict)   # staged models: losses of earlier stages


def _begin(run_dir: Path, cfg: TrainConfig, model: AnomalyModel, run_info: dict,
           selected: list[str] | None) -> _Start:
    """Decide what this training does with the folder (new run, replace, resume, continue stages),
    check it, and mark the run as training in run.json before any checkpoint is touched."""
    holds_run = (run_dir / RUN_FILE).exists() or (run_dir / CHECKPOINT).exists()
    continuing = selected is not None and selected[0] != model.STAGES[0]
    if holds_run and not (cfg.resume or cfg.overwrite or continuing):
        raise RunError(f"{run_dir} already holds a training run ({_describe(run_dir)}); pass --resume to continue "
                       "it, --overwrite to replace it, or choose another --out")
    foreign = [name for name in (METRICS_FILE, EVAL_FILE) if os.path.lexists(run_dir / name)]
    if foreign and not holds_run and not cfg.overwrite:     # not a run's: someone else's files of those names
        raise RunError(f"{run_dir} holds {' and '.join(foreign)} but no training run ({RUN_FILE}, {CHECKPOINT}); a run "
                       "would replace them: choose another --out, or pass --overwrite to replace them")
    state, info, run_id = None, None, uuid.uuid4().hex
    if cfg.resume or continuing:
        info = read_run_info(run_dir)
        state = _resume_state(run_dir, info, cfg, model, run_info, training=cfg.resume)
        run_id = (info or {}).get("run_id") or (state or {}).get("run_id") or run_id
    if selected is None and state is not None and int(state.get("epoch", 0)) > run_info["epochs"]:
        raise RunError(f"{run_dir} has already trained {state['epoch']} epochs; --resume continues up to --epochs, "
                       f"so give --epochs {state['epoch']} or more (got {run_info['epochs']})")
    if selected is not None:
        done = list(state.get("stages_done", [])) if state is not None else []
        stages = list(model.STAGES)
        missing = [s for s in stages[: stages.index(selected[0])] if s not in done]
        if missing:
            raise ValueError(f"stage {selected[0]!r} needs {', '.join(missing)} trained first in {run_dir}; "
                             f"run `edge-ad train ... --out {run_dir} --stage {missing[0]}`")
    carry, fields, previous = {}, {"status": TRAINING, "epochs_done": 0, "checkpoint_sha256": None}, {}
    if state is not None:
        resumed = list((info or {}).get("resumed_at", []))
        if cfg.resume:
            resumed.append(int(state.get("epoch", 0)))
        carry["resumed_at"] = resumed
        fields.update(epochs_done=int(state.get("epoch", 0)), checkpoint_sha256=file_sha256(run_dir / CHECKPOINT))
        if "stages_done" in state:
            fields["stages_done"] = list(state["stages_done"])
        old = (info or {}).get("losses")
        if selected is not None and isinstance(old, dict):
            previous = {k: v for k, v in old.items() if k in model.STAGES}
            fields["losses"] = previous
        elif selected is None:
            fields["losses"] = [float(x) for x in state.get("losses", [])]
    writer = _RunWriter(run_dir, run_info, run_id, carry)
    writer.write(**fields)
    stale = (CHECKPOINT, METRICS_FILE, EVAL_FILE) if state is None else (METRICS_FILE, EVAL_FILE)
    for name in stale:      # a new run keeps nothing of the one it replaces; a resumed one no old metrics
        (run_dir / name).unlink(missing_ok=True)
    return _Start(writer, state, previous)


def _calibrate_and_evaluate(run_dir: Path, model, wrapped, categories, geometry, parts, batch_size,
                            device) -> tuple[Calibration, dict]:
    """Calibration on the validation split, metrics on test; an error here keeps the trained weights
    and says how to finish without training again."""
    spec = model.heatmap_spec()
    try:
        val_set = ConcatDataset([v.prepared(geometry) for _, v in parts])
        val = predict(wrapped, loader(val_set, batch_size, shuffle=False), spec, device)
        calibration = calibrate(val["scores"], val["maps"])
    except CalibrationError as err:
        raise CalibrationError(f"{err} (the trained weights stay in {run_dir / CHECKPOINT} for inspection; the run "
                               "is not complete and cannot be exported)") from err
    except ValueError as err:
        raise RunError(f"{err}; the trained weights are kept in {run_dir / CHECKPOINT}: fix this, then run the "
                       "same `edge-ad train` with --resume to calibrate and evaluate without training again") from err
    try:
        result = evaluate_categories(wrapped, categories, geometry, spec, batch_size, device,
                                     threshold=calibration.image_threshold)
    except ValueError as err:
        raise RunError(f"{err}; the trained weights are kept in {run_dir / CHECKPOINT}: fix this, then run the "
                       "same `edge-ad train` with --resume to calibrate and evaluate without training again") from err
    return calibration, result


def _prepare(model: AnomalyModel, data, wrapped: UInt8Input, device: str) -> None:
    """model.prepare_training on the normalized training batches, for the models that prepare (override
    the hook). Only those get the batches: creating them starts a pass of the loader, which draws once
    from its shuffling generator whether or not the model reads a batch, so handing them to every model
    would change the shuffling (and the weights) of a given seed for the models that do not prepare."""
    if type(model).prepare_training is AnomalyModel.prepare_training:
        return
    model.prepare_training(wrapped.normalize(b["image"].to(device)) for b in data)


def run_stages(model: AnomalyModel, cfg: TrainConfig, data, wrapped: UInt8Input, epochs: int | dict,
               extra: dict, *, state: dict | None = None, writer: _RunWriter | None = None,
               previous_losses: dict | None = None) -> tuple[dict, list[str]]:
    """Fit a staged model's stages in order (all, or `cfg.stages`), each from the weights the earlier
    ones left in RUN/checkpoint.pt (`state`, read and checked by the caller); returns the losses per
    stage (earlier sessions' included) and the stages done so far."""
    stages, run_dir = list(model.STAGES), Path(cfg.out)
    selected = list(cfg.stages or stages)
    done = list(state.get("stages_done", [])) if state is not None else []
    if state is not None:
        model.load_state_dict(state["model"])
    missing = [s for s in stages[: stages.index(selected[0])] if s not in done]
    if missing:
        raise ValueError(f"stage {selected[0]!r} needs {', '.join(missing)} trained first in {run_dir}; "
                         f"run `edge-ad train ... --out {run_dir} --stage {missing[0]}`")
    losses = dict(previous_losses or {})
    for stage in selected:
        if cfg.resume and stage in done:
            continue
        model.set_stage(stage)
        again = bool(cfg.resume and state is not None and state.get("stage") == stage)
        if not again:                            # e.g. DiffAD's latent scale before the denoiser
            _prepare(model, data, wrapped, cfg.device)
        n = epochs[stage] if isinstance(epochs, dict) else epochs
        print(f"stage {stage}: {n} epochs")
        stage_extra = {**extra, "stage": stage, "stages_done": done}

        def on_epoch(epoch: int, so_far: list[float], sha: str, stage: str = stage) -> None:
            if writer is not None:
                writer.write(status=TRAINING, stages_done=done, stage=stage, epochs_done=epoch,
                             losses={**losses, stage: so_far}, checkpoint_sha256=sha)

        losses[stage] = fit(model, data, wrapped.normalize, epochs=n, run_dir=run_dir, device=cfg.device,
                            resume=again, state=state if again else None, extra=stage_extra, on_epoch=on_epoch)
        done = [s for s in stages if s in done or s == stage]
        sha = save_checkpoint(run_dir / CHECKPOINT, model, [], n, {**extra, "stage": stage, "stages_done": done},
                              losses=losses[stage], rng=capture_rng(data, model))
        if writer is not None:
            writer.write(status=TRAINING, stages_done=done, losses=losses, checkpoint_sha256=sha)
    return losses, done


# Reading a run back ----------------------------------------------------------------------------------------

def load_run(run_dir: str | Path) -> tuple[dict, AnomalyModel]:
    """A complete run's description (run.json) and its trained model (eval mode, weights from the
    checkpoint). Refused with a message: an unfinished run, a damaged run.json or calibration, and a
    checkpoint that is not the one run.json describes."""
    run_dir = Path(run_dir)
    info_path = run_dir / RUN_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run ({RUN_FILE} missing); run `edge-ad train` first")
    info = read_run_info(run_dir)
    status = info.get("status")
    if status not in (None, TRAINING, COMPLETE):
        raise RunError(f"{info_path} has status {status!r}, not {TRAINING!r} or {COMPLETE!r}; the run is damaged: "
                       "retrain with --overwrite")
    if status == TRAINING or "calibration" not in info:
        if info.get("stages_done") is not None and "stage" not in info:
            raise RunError(f"{run_dir} has not finished training (stages done: {', '.join(info['stages_done'])}); "
                           "run the remaining `edge-ad train --stage` steps first")
        raise RunError(f"{run_dir} has not finished training ({_describe(run_dir)}): it was interrupted or is "
                       f"still running; continue it with `edge-ad train ... --out {run_dir} --resume`")
    for key, kind in (("model", str), ("config", dict), ("geometry", dict), ("data", (str, list))):
        if not isinstance(info.get(key), kind):
            raise RunError(f"{info_path} has no valid {key!r}; the run is damaged: retrain with --overwrite")
    data = [info["data"]] if isinstance(info["data"], str) else info["data"]
    if not data or not all(isinstance(d, str) and d for d in data):
        raise RunError(f"{info_path}: 'data' must name the training folder(s); the run is damaged: retrain with --overwrite")
    _check_sources(info, info_path)
    if not isinstance(info.get("metrics", {}), (dict, type(None))):
        raise RunError(f"{info_path}: 'metrics' must be an object; the run is damaged: retrain with --overwrite")
    try:
        geometry = Geometry.from_dict(info["geometry"])
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536
                   for v in (*geometry.resize, *geometry.crop)) or len(geometry.resize) != 2 or len(geometry.crop) != 2:
            raise ValueError("resize and crop must be two positive whole numbers each")
    except (KeyError, TypeError, ValueError) as err:
        raise RunError(f"{info_path}: geometry {info['geometry']!r} is not valid ({err}); the run is damaged: "
                       "retrain with --overwrite") from None
    Calibration.from_dict(info["calibration"], where=f"{info_path}: calibration")
    expected = info.get("checkpoint_sha256")
    if status == COMPLETE and not isinstance(expected, str):
        raise RunError(f"{info_path} names no checkpoint_sha256; the run is damaged: retrain with --overwrite")
    if not (run_dir / CHECKPOINT).is_file():
        raise RunError(f"{run_dir / CHECKPOINT} is missing: {info_path} describes weights that are not there; copy "
                       "the run again, or retrain with --overwrite")
    state = load_checkpoint(run_dir / CHECKPOINT, expected_sha256=expected)
    if status is None:
        _check_legacy(run_dir, info, state)
    try:
        model = create_model(info["model"], **{**info["config"], "pretrained": False})
    except (TypeError, ValueError) as err:
        raise RunError(f"{info_path} describes a model that cannot be built ({err}); retrain with --overwrite") from err
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"{run_dir / CHECKPOINT} does not fit the model {info_path} describes "
                              f"({str(err).splitlines()[0][:200]}); retrain with --overwrite") from err
    return info, model.eval()


def _check_sources(info: dict, info_path: Path) -> None:
    """`data_sources` (runs since layouts): a list of data sources, one per category."""
    sources = info.get("data_sources")
    if sources is None:
        return
    try:
        if not isinstance(sources, list) or not sources:
            raise ValueError("it must be a list of data sources")
        for source in sources:
            DataSource.of(source)
    except ValueError as err:
        raise RunError(f"{info_path}: 'data_sources' is not valid ({err}); the run is damaged: retrain with "
                       "--overwrite") from None


def _check_legacy(run_dir: Path, info: dict, state: dict) -> None:
    """A run written before runs carried a checkpoint sha256: at least the epoch count and the
    configuration of the checkpoint must be run.json's (an interrupted retrain left other weights)."""
    log.warning("%s predates checked runs (no checkpoint sha256 in run.json); checking epochs and configuration "
                "only", run_dir)
    mixed = []
    if "stages_done" not in info and isinstance(info.get("epochs"), int) and "epoch" in state \
            and int(state["epoch"]) != info["epochs"]:
        mixed.append(f"run.json describes {info['epochs']} epochs, the checkpoint is from epoch {state['epoch']}")
    if state.get("config") is not None and _plain(state["config"]) != _plain(info.get("config")):
        mixed.append("the checkpoint's model configuration differs from run.json's")
    if mixed:
        raise RunError(f"{run_dir}: run.json and {CHECKPOINT} belong to different trainings ({'; '.join(mixed)}), "
                       "e.g. a retrain was interrupted; continue it with --resume or retrain with --overwrite")


def evaluate_categories(model: torch.nn.Module, categories: list[Category], geometry: Geometry, spec: HeatmapSpec,
                        batch_size: int, device: str, *, threshold: float | None = None) -> dict:
    """Metrics of one category, or per category plus their mean (the unified setting's report);
    each category's with its operating point at the image `threshold` (the deployed one). A metric
    no category can give is null, with the reasons in `absent`."""
    per = {}
    for c in categories:
        if c.test is None or not len(c.test):
            per[c.name] = no_test_metrics(c.test_where)
            continue
        test = predict(model, loader(Prepared(c.test, geometry), batch_size, shuffle=False), spec, device)
        per[c.name] = with_operating_point(metrics(test), test, threshold)
        per[c.name]["per_defect_image_auroc"] = _per_defect(c.test, test)
        if c.test_note:
            per[c.name]["test_note"] = c.test_note
    if len(per) == 1:
        return next(iter(per.values()))
    out = {key: mean_of([m[key] for m in per.values()]) for key in ("image_auroc", "pixel_auroc", "aupro")}
    absent = {key: "; ".join(f"{name}: {m.get('absent', {}).get(key, '?')}" for name, m in per.items())
              for key in ("image_auroc", "pixel_auroc", "aupro") if out[key] is None}
    if absent:
        out["absent"] = absent
    out["categories"] = per
    return out


def no_test_metrics(where: str) -> dict:
    """The metrics of a category without test images: all null, each with the reason."""
    reason = f"no test images ({where or 'no test split'}): trained on good images only"
    keys = ("image_auroc", "pixel_auroc", "aupro", "operating_point")
    return {**{k: None for k in keys}, "absent": {k: reason for k in keys}, "per_defect_image_auroc": {}}


def with_operating_point(result: dict, pred: dict, threshold: float | None) -> dict:
    """`result` plus `operating_point` (edge_ad.metrics.operating_point of the test scores at the
    threshold: recall, false-positive rate, precision, F1, F1-max and its threshold) when the test
    images hold both classes, else null with the reason in `absent`."""
    from edge_ad.metrics import operating_point

    labels, scores = np.asarray(pred["labels"]), np.asarray(pred["scores"], np.float64)
    reason = None
    if threshold is None:
        reason = "no image threshold to measure it at"
    elif not ((labels == 1).any() and (labels == 0).any()):
        reason = "the test images need both good and defect images"
    elif not np.isfinite(scores).all():
        reason = "the model's score is NaN/inf on some test images"
    result["operating_point"] = None if reason else {"threshold": float(threshold),
                                                     **operating_point(scores, labels, float(threshold))}
    if reason:
        result.setdefault("absent", {})["operating_point"] = reason
    return result


def mean_of(values: list) -> float | None:
    """Mean of the values that are not None (a category without masks has no pixel metrics)."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _per_defect(test_set: SampleDataset, pred: dict) -> dict:
    """Image AUROC of each defect type against the normal test images (none without normal images)."""
    from edge_ad.metrics import image_auroc

    defects = np.array([s.defect for s in test_set.samples])
    good = defects == "good"
    out = {}
    if not good.any() or not np.isfinite(pred["scores"]).all():
        return out
    for d in sorted(set(defects) - {"good"}):
        keep = good | (defects == d)
        out[d] = image_auroc(pred["labels"][keep], pred["scores"][keep])
    return out
