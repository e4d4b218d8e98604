"""Issue 14, the reviewer's second round (training, demo, export): gaps 4, 5, 6, 11, 12, 13, 14a, 14b.

- 4: a non-finite loss stops training before the optimizer step; the last finite checkpoint and the
  run.json that describes it are kept, and the error names the epoch and batch (fit and staged models).
- 5: `edge-ad demo --out DIR` refuses a folder it did not make (no demo marker) unless overwrite=True.
- 6: a Triton model folder that our export did not write, or that was edited since, is not replaced
  unless overwrite=True.
- 11: `export --batch` is capped at the bundle schema's MAX_BATCH, and spelled strictly.
- 12: a full disk during an export says "no space left on DIR", removes the temporary, keeps the old bundle.
- 13: heatmap.sigma / window the kernels would refuse, and meta.config sizes the torch backend would build.
- 14a: the TensorRT timing cache is written through a unique temporary, removed on failure.
- 14b: benchmark results are written atomically; a torn results file is refused with a message.

Real components throughout (real training of tiny models, real files, real ONNX Runtime, the real
bundle writer). The one test double is the write layer that raises ENOSPC, since a full disk cannot be
made here; each test that uses it says so.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_ad import models as model_registry
from edge_ad.cli import main
from edge_ad.data.synthetic import Counts, make_category
from edge_ad.models.diffad import DiffAD
from edge_ad.models.simplenet import SimpleNet
from edge_ad.training.fit import TrainingDivergedError, fit, load_checkpoint
from edge_ad.training.run import TrainConfig, load_run, train

TINY = {"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32, "pretrained": False}
TINY_DIFFAD = {"image_size": 32, "resize_size": 36, "ae_channels": (8, 8, 16), "ae_attention": False,
               "unet_channels": (16, 16), "unet_attention": (1,), "seg_channels": (8, 8, 16)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_category(tmp_path_factory.mktemp("review") / "data", "conveyor",
                         counts=Counts(train=8, test_good=2, test_per_defect=1), seed=3)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (links as their target) -> sha256; what must not change."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------ 4. a non-finite loss keeps the last good epoch


class _Diverging:
    """Mixin for a real model whose training_loss turns non-finite at its `at`-th call (1-based): what a
    diverging optimizer produces, at a step the test chooses."""

    at: int = 0
    value: float = math.nan
    calls: int = 0

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        loss = super().training_loss(x)
        return loss * type(self).value if type(self).calls == type(self).at else loss


class DivergingSimpleNet(_Diverging, SimpleNet):
    pass


class DivergingDiffAD(_Diverging, DiffAD):
    pass


@pytest.fixture
def diverging(monkeypatch):
    """Register the diverging models under their own names (the registry imports them from this module)."""
    module = importlib.import_module(__name__).__name__
    for name, cls in (("diverging_simplenet", "DivergingSimpleNet"), ("diverging_diffad", "DivergingDiffAD")):
        monkeypatch.setitem(model_registry._REGISTRY, name, (module, cls))

    def arm(cls, at: int, value: float = math.nan) -> None:
        monkeypatch.setattr(cls, "at", at)
        monkeypatch.setattr(cls, "value", value)
        monkeypatch.setattr(cls, "calls", 0)

    return arm


def _train(data: Path, out: Path, **kw) -> dict:
    cfg = {"epochs": 3, "batch_size": 4, "model_kwargs": TINY, "model": "diverging_simplenet", **kw}
    return train(TrainConfig(data=str(data), out=str(out), **cfg))


# 7 training images in batches of 4: two batches an epoch. (value, step, epoch, batch, epochs kept)
CASES = [(math.nan, 1, 1, 1, 0), (-math.inf, 2, 1, 2, 0), (math.nan, 3, 2, 1, 1), (math.inf, 6, 3, 2, 2)]


@pytest.mark.parametrize("value,step,epoch,batch,kept", CASES)
def test_non_finite_loss_stops_and_keeps_the_last_finite_checkpoint(data, tmp_path, diverging, value, step, epoch,
                                                                    batch, kept) -> None:
    run = tmp_path / "run"
    diverging(DivergingSimpleNet, step, value)
    with pytest.raises(TrainingDivergedError) as caught:
        _train(data, run)
    message = str(caught.value)
    assert f"epoch {epoch}/3, batch {batch}/2" in message and "lower learning rate" in message
    assert "check the training images" in message
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "training" and info["epochs_done"] == kept
    if kept == 0:
        assert not (run / "checkpoint.pt").exists() and info["checkpoint_sha256"] is None
        assert "no checkpoint was written" in message
        return
    assert f"after epoch {kept}" in message
    state = load_checkpoint(run / "checkpoint.pt", expected_sha256=info["checkpoint_sha256"])
    assert state["epoch"] == kept and all(math.isfinite(x) for x in state["losses"])
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values() if t.is_floating_point())
    assert info["losses"] == state["losses"]
    diverging(DivergingSimpleNet, 0)                 # the cause fixed: the kept epoch resumes and finishes
    _train(data, run, resume=True)
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    load_run(run)


def test_fit_stops_on_a_nan_batch_from_the_data(data, tmp_path) -> None:
    """The `inputs` function (the export's normalization) gives a NaN batch at the 3rd step: the NaN flows
    through the real model into its loss; the checkpoint of epoch 1 stays as it was written."""
    from torch.utils.data import ConcatDataset

    from edge_ad.data import MVTecDataset
    from edge_ad.runtime.preprocess import Geometry
    from edge_ad.training.adapter import UInt8Input
    from edge_ad.training.data import Prepared, loader

    torch.manual_seed(0)
    model = SimpleNet(**TINY)
    wrapped = UInt8Input(model, model.mean, model.std)
    data_set = ConcatDataset([Prepared(MVTecDataset(str(data), "train"), Geometry((72, 72), (64, 64)))])
    batches = loader(data_set, 4, shuffle=True, seed=0)
    model.prepare_training(wrapped.normalize(b["image"]) for b in batches)
    calls = []

    def inputs(images: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        x = wrapped.normalize(images)
        return x * math.nan if len(calls) == 3 else x

    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"epoch 2/4, batch 1/2: the loss is nan"):
        fit(model, batches, inputs, epochs=4, run_dir=run, device="cpu")
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 1 and all(bool(torch.isfinite(t).all()) for t in state["model"].values()
                                       if t.is_floating_point())
    assert [p.name for p in run.iterdir()] == ["checkpoint.pt"]        # no temporary left


def test_weights_that_turn_non_finite_are_never_saved(data, tmp_path) -> None:
    """A finite loss but weights made infinite by the step (an overflowing update): the epoch is not saved."""
    from edge_ad.data import MVTecDataset
    from edge_ad.runtime.preprocess import Geometry
    from edge_ad.training.adapter import UInt8Input
    from edge_ad.training.data import Prepared, loader

    class Overflowing(SimpleNet):
        steps = 0

        def after_step(self) -> None:             # the last step of epoch 1 overflows a weight
            Overflowing.steps += 1
            if Overflowing.steps == 2:
                with torch.no_grad():
                    self.discriminator[0].weight.mul_(1e30).mul_(1e30)

    torch.manual_seed(0)
    model = Overflowing(**TINY)
    wrapped = UInt8Input(model, model.mean, model.std)
    batches = loader(Prepared(MVTecDataset(str(data), "train"), Geometry((72, 72), (64, 64))), 4, shuffle=True, seed=0)
    model.prepare_training(wrapped.normalize(b["image"]) for b in batches)
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"epoch 1/2: the weights became non-finite \(discriminator.0.weight\)\. Training stopped without saving"):
        fit(model, batches, wrapped.normalize, epochs=2, run_dir=run, device="cpu")
    assert not (run / "checkpoint.pt").exists()


def test_staged_model_keeps_the_earlier_stage_when_a_later_one_diverges(data, tmp_path, diverging, capsys) -> None:
    run = tmp_path / "run"
    kw = {"model": "diverging_diffad", "model_kwargs": TINY_DIFFAD, "epochs": 1}
    diverging(DivergingDiffAD, 4)          # stage 1: steps 1-2; stage 2 epoch 1: steps 3-4
    with pytest.raises(TrainingDivergedError, match=r"epoch 1/1, batch 2/2: the loss is nan") as caught:
        _train(data, run, **kw)
    assert "written before this training started" in str(caught.value)
    info = json.loads((run / "run.json").read_text())
    state = load_checkpoint(run / "checkpoint.pt", expected_sha256=info["checkpoint_sha256"])
    assert info["status"] == "training" and info["stages_done"] == ["autoencoder"] == state["stages_done"]
    assert state["stage"] == "autoencoder"
    diverging(DivergingDiffAD, 0)
    _train(data, run, **kw, stages=["denoiser", "segmentation"])
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


def test_cli_reports_divergence_in_one_line(data, tmp_path, diverging, capsys) -> None:
    run = tmp_path / "run"
    diverging(DivergingSimpleNet, 3)
    code = main(["train", "--model", "diverging_simplenet", "--data", str(data), "--out", str(run), "--epochs", "2",
                 "--batch-size", "4", "--image-size", "64", "--resize-size", "72", "--no-pretrained"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("edge-ad train: error: training diverged at epoch 2/2, batch 1/2: the loss is nan")
    assert json.loads((run / "run.json").read_text())["epochs_done"] == 1


# ------------------------------------------------------------------------ 5. the demo writes only its own folder


FOREIGN = [{"events.jsonl": "my events\n"}, {"annotated.mp4": "my video"}, {"notes.txt": "x"},
           {"run/run.json": "{}"}, {"data/photo.png": "png"}, {"summary.json": "{}"},
           {"summary.json": '{"model": "mine"}', "bundle/meta.json": "{}"}, {".hidden": "x"}]


@pytest.mark.parametrize("files", FOREIGN, ids=lambda f: "+".join(f))
def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys, files) -> None:
    from edge_ad import demo

    out = tmp_path / "mine"
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = _tree(tmp_path)
    with pytest.raises(demo.DemoOutError, match=r"already holds files the demo did not write .*--overwrite"):
        demo.run(out, epochs=1)
    assert _tree(tmp_path) == before
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-ad demo: error: --out") and "Traceback" not in err
    assert _tree(tmp_path) == before


def test_demo_claims_new_empty_and_marked_folders_and_refuses_a_file(tmp_path) -> None:
    from edge_ad.demo import MARKER, DemoOutError, claim_out

    for out in (tmp_path / "new" / "demo", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        claim_out(out)
        assert (out / MARKER).is_file()
        (out / "events.jsonl").write_text("from the first run\n")       # a second run (make demo again) is fine
        claim_out(out)
    legacy = tmp_path / "legacy"                                          # a demo's output from before the marker
    (legacy / "run").mkdir(parents=True)
    (legacy / "summary.json").write_text(json.dumps({"model": "simplenet", "budget": "x", "video_frame_auroc": 0.9,
                                                     "model_fps": 1.0, "stream_fps": 1.0}))
    claim_out(legacy)
    assert (legacy / MARKER).is_file()
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(DemoOutError, match="is not a folder"):
        claim_out(file)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "empty")
    with pytest.raises(DemoOutError, match="is not a folder"):
        claim_out(link)


def test_demo_overwrite_takes_a_foreign_folder(tmp_path) -> None:
    from edge_ad.demo import MARKER, claim_out

    out = tmp_path / "mine"
    out.mkdir()
    (out / "events.jsonl").write_text("mine\n")
    claim_out(out, overwrite=True)
    assert (out / MARKER).is_file() and (out / "events.jsonl").read_text() == "mine\n"   # replaced later, by the demo


# ------------------------------------------------------- 6. Triton replaces only the model folders it wrote


def _foreign_model(folder: Path, case: str) -> None:
    """A model folder someone else made, or ours changed afterwards (`case` says how)."""
    from edge_ad_export.triton_repository import MANIFEST

    if case == "hand-made":
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text('name: "toy_onnx"\nplatform: "onnxruntime_onnx"\n')
        (folder / "1" / "model.onnx").write_bytes(b"someone's model")
    elif case == "other versions only":
        (folder / "7").mkdir(parents=True)
        (folder / "7" / "model.onnx").write_bytes(b"v7")
    elif case == "a label file":
        folder.mkdir(parents=True)
        (folder / "labels.txt").write_text("ok\nng\n")
    elif case == "edited config":
        with open(folder / "config.pbtxt", "a") as f:
            f.write("instance_group [{ count: 4 kind: KIND_GPU }]\n")
    elif case == "added version":
        (folder / "2").mkdir()
        (folder / "2" / "model.onnx").write_bytes(b"a newer model, hand-placed")
    elif case == "removed file":
        (folder / "1" / "model.onnx").unlink()
    elif case == "config replaced by a link":
        target = folder.parent / "elsewhere.pbtxt"
        target.write_text((folder / "config.pbtxt").read_text())
        (folder / "config.pbtxt").unlink()
        (folder / "config.pbtxt").symlink_to(target)
    elif case == "manifest not JSON":
        (folder / MANIFEST).write_text("{torn")
    elif case == "manifest not a manifest":
        (folder / MANIFEST).write_text(json.dumps({"files": ["config.pbtxt"]}))
    else:
        raise AssertionError(case)


FOREIGN_MODELS = ["hand-made", "other versions only", "a label file"]
CHANGED_MODELS = ["edited config", "added version", "removed file", "config replaced by a link", "manifest not JSON",
                  "manifest not a manifest"]


@pytest.fixture
def toy_bundle_path(tmp_path) -> Path:
    from test_bundle_hardening import toy

    return toy(tmp_path / "bundle")


@pytest.mark.parametrize("case", FOREIGN_MODELS + CHANGED_MODELS)
def test_triton_refuses_a_model_folder_it_did_not_write_or_that_changed(toy_bundle_path, tmp_path, capsys,
                                                                        case) -> None:
    from edge_ad.bundle import BundleError, read_bundle
    from edge_ad_export.triton_repository import write_repository

    repo = tmp_path / "repo"
    repo.mkdir()
    bundle = read_bundle(toy_bundle_path)
    if case in CHANGED_MODELS:
        write_repository(bundle, repo)                   # ours first, then changed by hand
    _foreign_model(repo / "toy_onnx", case)
    before = _tree(tmp_path)
    with pytest.raises(BundleError, match=r"(did not write|was changed since|cannot be read).*--overwrite"):
        write_repository(bundle, repo)
    assert _tree(tmp_path) == before
    assert main(["export", str(toy_bundle_path), "--triton", str(repo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-ad export: error: ") and "Traceback" not in err and "toy_onnx" in err
    assert _tree(tmp_path) == before
    (model,) = write_repository(bundle, repo, overwrite=True)        # asked for: replaced whole
    assert sorted(p.name for p in model.iterdir()) == [".edge_ad-triton.json", "1", "config.pbtxt"]


def test_triton_replaces_its_own_unchanged_folder_and_takes_an_empty_one(toy_bundle_path, tmp_path) -> None:
    from edge_ad.bundle import read_bundle
    from edge_ad_export.triton_repository import write_repository

    repo = tmp_path / "repo"
    (repo / "toy_onnx").mkdir(parents=True)              # empty: nothing to lose
    (repo / "other_model" / "1").mkdir(parents=True)     # another model beside it: untouched
    (repo / "other_model" / "config.pbtxt").write_text("name: 'other_model'\n")
    other = _tree(repo / "other_model")
    bundle = read_bundle(toy_bundle_path)
    write_repository(bundle, repo)
    first = _tree(repo / "toy_onnx")
    write_repository(bundle, repo, max_batch=4)          # ours and unchanged: replaced without --overwrite
    second = _tree(repo / "toy_onnx")
    assert first["config.pbtxt"] != second["config.pbtxt"] and _tree(repo / "other_model") == other


# ------------------------------------------------------------- 11. --batch is capped before any TensorRT build


GOOD_BATCHES = {"1": (1, 1, 1), "1,8": (1, 1, 8), "1,4,8": (1, 4, 8), " 2 , 4 ": (2, 2, 4), "4096": (4096,) * 3,
                "1,1,4096": (1, 1, 4096)}
BAD_BATCHES = ["1,1,100000", "4097", "1,4097", "1,2,4097", "1,1,999999999", "0", "0,8", "8,1", "2,1,4", "-1",
               "1,-8", "", ",", "1,", ",8", "1,,8", "1,2,3,4", "1.5", "1e3", "0x10", "1_000", "١", "８", "1;8", "one",
               "1, 8\n", None, 8]


@pytest.mark.parametrize("text,want", sorted(GOOD_BATCHES.items()))
def test_batch_profiles_within_the_cap_are_read(text, want) -> None:
    from edge_ad.runtime.engine_builder import parse_batches

    assert parse_batches(text) == want


@pytest.mark.parametrize("text", BAD_BATCHES, ids=repr)
def test_batch_profiles_out_of_range_or_misspelled_are_refused(text) -> None:
    from edge_ad.runtime.engine_builder import parse_batches

    with pytest.raises(ValueError, match="--batch") as caught:
        parse_batches(text)
    if text in ("1,1,100000", "4097", "1,1,999999999"):
        assert "over 4096" in str(caught.value)


@pytest.mark.parametrize("batch", [(1, 1, 100000), (0, 1, 1), (4, 2, 8), (1, 1), (1.0, 1, 2), (True, 1, 1)], ids=repr)
def test_engine_builders_check_the_profile_before_anything(batch, toy_bundle_path) -> None:
    """The Python API too: build_bundle_engines refuses the profile before it looks for TensorRT."""
    from edge_ad.bundle import read_bundle
    from edge_ad.runtime.engine_builder import build_bundle_engines

    with pytest.raises(ValueError, match="--batch"):
        build_bundle_engines(read_bundle(toy_bundle_path), batch=batch)


def test_cli_refuses_a_huge_engine_batch_in_one_line(toy_bundle_path, capsys) -> None:
    before = _tree(toy_bundle_path.parent)
    assert main(["export", str(toy_bundle_path), "--engine", "--batch", "1,1,100000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-ad export: error: --batch 1,1,100000: MAX 100000 is over 4096") and "Traceback" not in err
    assert _tree(toy_bundle_path.parent) == before


# --------------------------------------------- 14a. the timing cache: a temporary of its own, removed on failure


def test_timing_cache_is_replaced_atomically_through_unique_temporaries(tmp_path) -> None:
    import threading

    from edge_ad.runtime.engine_builder import save_timing_cache

    cache = tmp_path / "timing" / "dev.cache"
    payloads = [bytes([i]) * (200_000 + i) for i in range(8)]
    threads = [threading.Thread(target=save_timing_cache, args=(cache, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.read_bytes() in payloads                       # one whole cache, never a torn mix
    assert [p.name for p in cache.parent.iterdir()] == ["dev.cache"]


def test_timing_cache_on_a_full_disk_leaves_no_temporary_and_keeps_the_old_cache(tmp_path, monkeypatch, caplog) -> None:
    """A full disk cannot be made here: os.fdopen's file (the write layer) is replaced by a real file that
    writes part of the data and then raises OSError(ENOSPC), the one test double of this test."""
    import edge_ad.runtime.engine_builder as trt_export

    cache = tmp_path / "dev.cache"
    cache.write_bytes(b"old cache")
    (tmp_path / "dev.partial").write_bytes(b"x")                 # the fixed name earlier versions left behind
    os.utime(tmp_path / "dev.partial", (0, 0))
    real = os.fdopen

    class Full:
        def __init__(self, fd, mode):
            self.file = real(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trt_export.os, "fdopen", Full)
    assert trt_export.save_timing_cache(cache, b"new" * 1000) is False
    assert cache.read_bytes() == b"old cache" and sorted(p.name for p in tmp_path.iterdir()) == ["dev.cache"]
    assert "could not keep the TensorRT timing cache" in caplog.text


# ------------------------------------------ 12. a full disk during an export: named, cleaned up, old bundle kept


class _FullDisk:
    """A real file that takes `room` bytes and then fails as a full disk does: OSError(ENOSPC)."""

    def __init__(self, path, room: int) -> None:
        self.file, self.room = open(path, "wb"), room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.file.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".partial") or ".starting-" in p.name]


def _fill_then(failure: BaseException):
    """A bundle fill that writes the toy graph, then part of a second file, then fails with `failure`."""
    from test_bundle_hardening import toy_fill

    def fill(folder: Path) -> None:
        toy_fill()(folder)
        with open(folder / "extra.bin", "wb") as f:
            f.write(b"x" * 10_000)
        raise failure

    return fill


def _torch_style(text: str) -> RuntimeError:
    """What torch's C++ writers raise: a RuntimeError, its OSError as the context (or none at all)."""
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        try:
            raise RuntimeError(text)
        except RuntimeError as err:
            return err


DISK_FULL_FAILURES = {       # folder -> the error
    "ENOSPC": lambda d: OSError(errno.ENOSPC, "No space left on device"),
    "EDQUOT": lambda d: OSError(errno.EDQUOT, "Disk quota exceeded"),
    "ENOSPC naming the temporary": lambda d: OSError(errno.ENOSPC, "No space left on device",
                                                     str(d / ".bundle.abcd1234.partial" / "content" / "model.onnx")),
    "torch zip writer": lambda d: _torch_style("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed "
                                               "writing file data/0: file write failed"),
    "onnx message": lambda d: RuntimeError("Failed to write model: [Errno 28] No space left on device"),
}


@pytest.mark.parametrize("existed", [False, True], ids=["first export", "overwrite"])
@pytest.mark.parametrize("kind", sorted(DISK_FULL_FAILURES))
def test_full_disk_in_the_fill_is_named_cleaned_up_and_keeps_the_old_bundle(tmp_path, monkeypatch, kind,
                                                                            existed) -> None:
    """The fill stands for the exporter's writes (ONNX, checkpoint copy): it raises what a full disk makes
    each of them raise, the one test double here."""
    from edge_ad.bundle import DiskFullError, read_bundle, write_bundle
    from test_bundle_hardening import toy, toy_meta

    out = tmp_path / "bundle"
    if existed:
        toy(out)
    before = _tree(tmp_path)
    if kind == "torch zip writer":           # no errno there: a failed write on a nearly full disk is a full disk
        monkeypatch.setattr("edge_ad.bundle._NEARLY_FULL", 1 << 62)
    with pytest.raises(DiskFullError) as caught:
        write_bundle(out, toy_meta(), _fill_then(DISK_FULL_FAILURES[kind](tmp_path)), overwrite=True)
    message = str(caught.value)
    assert caught.value.errno == errno.ENOSPC
    assert message.startswith(f"no space left on {tmp_path.resolve()} while exporting the bundle {out} (")
    assert ".partial" not in message and "MB free" in message and "Free some space" in message
    assert ("previous bundle" in message and "kept unchanged" in message) if existed else "nothing was written" in message
    assert _tree(tmp_path) == before and _no_temporaries(tmp_path)
    if existed:
        read_bundle(out)


def test_a_write_failure_that_is_not_a_full_disk_keeps_its_own_error(tmp_path) -> None:
    from edge_ad.bundle import write_bundle
    from test_bundle_hardening import toy_meta

    with pytest.raises(RuntimeError, match="file write failed"):       # plenty of space here: not a full disk
        write_bundle(tmp_path / "b", toy_meta(), _fill_then(RuntimeError("file write failed")))
    with pytest.raises(PermissionError):
        write_bundle(tmp_path / "b", toy_meta(), _fill_then(PermissionError(errno.EACCES, "denied")))
    assert _no_temporaries(tmp_path) and not (tmp_path / "b").exists()


@pytest.mark.parametrize("room", [0, 10, 200])
def test_full_disk_writing_meta_json_keeps_the_old_bundle(tmp_path, monkeypatch, room) -> None:
    """The write layer of meta.json (`edge_ad.bundle._open_for_write`) is a real file that fills up."""
    import edge_ad.bundle as bundle_module
    from edge_ad.bundle import DiskFullError, read_bundle
    from test_bundle_hardening import toy

    out = toy(tmp_path / "bundle")
    before = _tree(tmp_path)
    monkeypatch.setattr(bundle_module, "_open_for_write", lambda path: _FullDisk(path, room))
    with pytest.raises(DiskFullError, match=f"no space left on {tmp_path.resolve()} .*previous bundle"):
        toy(out, scale=2.0, overwrite=True)
    assert _tree(tmp_path) == before and _no_temporaries(tmp_path)
    monkeypatch.undo()
    assert read_bundle(out).meta["files"]


def test_full_disk_adding_an_engine_keeps_the_bundle(tmp_path, monkeypatch) -> None:
    """Same write layer, for an engine added to a bundle (add_file)."""
    import edge_ad.bundle as bundle_module
    from edge_ad.bundle import DiskFullError, add_file, read_bundle
    from test_bundle_hardening import toy

    out = toy(tmp_path / "bundle")
    before = _tree(tmp_path)
    monkeypatch.setattr(bundle_module, "_open_for_write", lambda path: _FullDisk(path, 100))
    with pytest.raises(DiskFullError, match=r"no space left on .* while adding engines/x.engine .*kept as it was"):
        add_file(read_bundle(out), "engines/x.engine", b"p" * 5000, lambda meta: None)
    after = {k: v for k, v in _tree(tmp_path).items() if not k.endswith("/.meta.lock")}   # the bundle's own lock
    assert after == before and _no_temporaries(tmp_path)
    assert "engines/x.engine" not in read_bundle(out).meta["files"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data) -> Path:
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    train(TrainConfig(data=str(data), out=str(run), epochs=1, batch_size=4, model_kwargs=TINY))
    return run


@pytest.mark.parametrize("layer", ["checkpoint copy", "onnx.save"])
def test_full_disk_in_a_real_export_keeps_the_old_bundle_and_says_so(tiny_run, tmp_path, monkeypatch, capsys,
                                                                     layer) -> None:
    """A real export of a trained run; the write layer of one of its writes (the checkpoint copy, or
    onnx.save of the FP16 graph) is a real file that runs out of space: the one test double."""
    import shutil

    import onnx

    from edge_ad.bundle import DiskFullError, read_bundle
    from edge_ad_export.exporter import export_run

    out = tmp_path / "bundle"
    export_run(tiny_run, out)
    before = _tree(tmp_path)
    if layer == "checkpoint copy":
        def copy(src, dst, **kw):
            with open(src, "rb") as f, _FullDisk(dst, 4096) as g:
                shutil.copyfileobj(f, g)
        monkeypatch.setattr("edge_ad_export.exporter.shutil.copy2", copy)
    else:
        def save(model, path, *args, **kw):
            with _FullDisk(path, 1000) as g:
                g.write(model.SerializeToString())
        monkeypatch.setattr(onnx, "save", save)
    with pytest.raises(DiskFullError, match=f"no space left on {tmp_path.resolve()} while exporting the bundle"):
        export_run(tiny_run, out, overwrite=True)
    assert _tree(tmp_path) == before and _no_temporaries(tmp_path)
    read_bundle(out)
    assert main(["export", str(tiny_run), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"edge-ad export: error: no space left on {tmp_path.resolve()}") and "Traceback" not in err
    assert "previous bundle" in last and _tree(tmp_path) == before and _no_temporaries(tmp_path)


def test_full_disk_writing_a_triton_model_keeps_the_old_one(toy_bundle_path, tmp_path, monkeypatch) -> None:
    """onnx.save of the repository's graph (its write layer) runs out of space: the one test double."""
    import onnx

    from edge_ad.bundle import DiskFullError, read_bundle
    from edge_ad_export.triton_repository import write_repository

    repo = tmp_path / "repo"
    write_repository(read_bundle(toy_bundle_path), repo)
    before = _tree(repo)

    def save(model, path, *args, **kw):
        with _FullDisk(path, 10) as g:
            g.write(model.SerializeToString())

    monkeypatch.setattr(onnx, "save", save)
    with pytest.raises(DiskFullError, match=f"no space left on {repo.resolve()} while writing the Triton model "
                                            ".*previous model folder is kept unchanged"):
        write_repository(read_bundle(toy_bundle_path), repo)
    assert _tree(repo) == before and _no_temporaries(repo)


# ---------------------------------------------- 13. heat-map and config values that only failed at inference


FRAME = np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)

BAD_HEATMAPS = [  # (smooth, sigma, window, field)
    ("gaussian", 0, None, "heatmap.sigma"), ("gaussian", 0.0, None, "heatmap.sigma"),
    ("gaussian", -1.0, None, "heatmap.sigma"), ("gaussian", -0.0, None, "heatmap.sigma"),
    ("gaussian", math.nan, None, "heatmap.sigma"), ("gaussian", math.inf, None, "heatmap.sigma"),
    ("gaussian", 129.0, None, "heatmap.sigma"), ("gaussian", 256.0, None, "heatmap.sigma"),
    ("gaussian", "4", None, "heatmap.sigma"), ("gaussian", None, None, "heatmap.sigma"),
    ("box", 4.0, 0, "heatmap.window"), ("box", 4.0, -3, "heatmap.window"), ("box", 4.0, None, "heatmap.window"),
    ("box", 4.0, 1025, "heatmap.window"), ("box", 4.0, 2.5, "heatmap.window"), ("box", 4.0, True, "heatmap.window"),
    ("gaussian", 4.0, 0, "heatmap.window"),
]
GOOD_HEATMAPS = [("none", 0.0, None), ("box", 0.0, 1), ("box", 4.0, 1024), ("gaussian", 1e-3, None),
                 ("gaussian", 128.0, None), ("gaussian", 4.0, 5)]


def _bundle_copy(source: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "bundle"
    shutil.copytree(source, out, symlinks=True)
    return out


def _set_heatmap(bundle: Path, smooth, sigma, window) -> None:
    from test_bundle_hardening import edit_meta

    edit_meta(bundle, lambda m: m["heatmap"].update(smooth=smooth, sigma=sigma, window=window))


@pytest.mark.parametrize("smooth,sigma,window,field", BAD_HEATMAPS, ids=repr)
def test_heatmap_values_the_kernels_refuse_are_refused_at_load(tiny_bundle, tmp_path, capsys, smooth, sigma, window,
                                                               field) -> None:
    import edge_ad
    from edge_ad.bundle import BundleError

    bundle = _bundle_copy(tiny_bundle, tmp_path)
    _set_heatmap(bundle, smooth, sigma, window)
    with pytest.raises(BundleError, match=f"meta.json field {field}"):
        edge_ad.load(bundle, backend="onnxruntime-cpu")
    code = main(["stream", str(bundle), "--source", str(tmp_path / "none.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and f"field {field}" in err and "Traceback" not in err


@pytest.mark.parametrize("smooth,sigma,window", GOOD_HEATMAPS, ids=repr)
def test_heatmap_values_the_kernels_take_load_and_run(tiny_bundle, tmp_path, smooth, sigma, window) -> None:
    import edge_ad

    bundle = _bundle_copy(tiny_bundle, tmp_path)
    _set_heatmap(bundle, smooth, sigma, window)
    result = edge_ad.load(bundle, backend="onnxruntime-cpu").predict(FRAME)
    assert math.isfinite(result.score) and result.heatmap.shape == FRAME.shape[:2]


BAD_CONFIGS = [  # (key, value, field named)
    ("image_size", 100000, "config.image_size"), ("image_size", 1 << 40, "config.image_size"),
    ("image_size", 8, "config.image_size"), ("image_size", 4097, "config.image_size"),
    ("image_size", 128, "config.image_size"), ("image_size", 63, "config.image_size"),
    ("image_size", "64", "config.image_size"), ("image_size", 64.0, "config.image_size"),
    ("image_size", None, "config.image_size"), ("image_size", True, "config.image_size"),
    ("resize_size", 100000, "config.resize_size"), ("resize_size", 64, "config.resize_size"),
    ("resize_size", -72, "config.resize_size"), ("embed_dim", 10**9, "config.embed_dim"),
    ("disc_hidden", -(10**6), "config.disc_hidden"), ("lr_disc", math.nan, "config.lr_disc"),
    ("margin", math.inf, "config.margin"), ("layers", [2] * 100, "config.layers"),
    ("layers", [[[[[[1]]]]]], "config.layers"), ("backbone", "x" * 300, "config.backbone"),
    ("backbone", "lite0\nroot", "config.backbone"), ("extra", {"k": 10**9}, "config.extra.k"),
]


@pytest.mark.parametrize("key,value,field", BAD_CONFIGS, ids=repr)
def test_config_sizes_are_bounded_and_match_the_graph_at_load(tiny_bundle, tmp_path, key, value, field) -> None:
    import edge_ad
    from edge_ad.bundle import BundleError
    from test_bundle_hardening import edit_meta

    bundle = _bundle_copy(tiny_bundle, tmp_path)
    edit_meta(bundle, lambda m: m["config"].__setitem__(key, value))
    for backend in ("onnxruntime-cpu", "torch-cpu"):
        with pytest.raises(BundleError, match=f"{bundle}: meta.json field {field}"):
            edge_ad.load(bundle, backend=backend)


def test_torch_backend_refuses_a_config_too_big_for_its_checkpoint_before_building(tiny_bundle, tmp_path) -> None:
    """16384-wide layers (about 1 GiB of weights) against a checkpoint of a few MiB: refused by size,
    before the model is built (the message says how big it would have been)."""
    import edge_ad
    from edge_ad.bundle import BundleError
    from test_bundle_hardening import edit_meta

    bundle = _bundle_copy(tiny_bundle, tmp_path)
    edit_meta(bundle, lambda m: m["config"].update(embed_dim=16384, disc_hidden=16384))
    with pytest.raises(BundleError, match=r"describes a model with \d+ MiB of weights, but checkpoint.pt has \d+ MiB"):
        edge_ad.load(bundle, backend="torch-cpu")
    assert edge_ad.load(bundle, backend="onnxruntime-cpu").predict(FRAME)   # the graph does not use the config


@pytest.mark.parametrize("change,match", [
    ({"embed_dim": 96}, "does not fit the model meta.json's config describes"),
    ({"weights": "/etc/passwd"}, "config.weights names a file outside the bundle"),
    ({"backbone": "no_such_net"}, "cannot be built"),
    ({"no_such_option": 1}, "cannot be built"),
    ({"image_size": None}, "config.image_size"),
])
def test_torch_backend_says_which_config_it_cannot_build(tiny_bundle, tmp_path, change, match) -> None:
    import edge_ad
    from edge_ad.bundle import BundleError
    from test_bundle_hardening import edit_meta

    bundle = _bundle_copy(tiny_bundle, tmp_path)
    edit_meta(bundle, lambda m: m["config"].update(change))
    with pytest.raises(BundleError, match=match):
        edge_ad.load(bundle, backend="torch-cpu")


def test_torch_backend_ties_buffer_sizes_to_what_the_bundle_records(tiny_bundle) -> None:
    from edge_ad.bundle import Bundle, BundleError, read_bundle
    from edge_ad.training.torch_backend import model_config

    meta = read_bundle(tiny_bundle).meta
    spr = {**meta, "config": {**meta["config"], "perturbations": 3},
           "graph_inputs": {"noise": {"shape": [3, 3, 64, 64], "dtype": "float32", "seed": 0}}}
    assert model_config(Bundle(tiny_bundle, spr))["perturbations"] == 3
    for forged in ({**spr, "config": {**spr["config"], "perturbations": 60000}},
                   {**meta, "config": {**meta["config"], "perturbations": 65536}},
                   {**meta, "config": {**meta["config"], "latent_channels": 4096},
                    "pipeline": {"latent_shape": [4, 8, 8]}}):
        with pytest.raises(BundleError, match="the bundle records"):
            model_config(Bundle(tiny_bundle, forged))


# --------------------------------------------------- 14b. benchmark results: atomic writes, torn files refused


@pytest.fixture
def bench(monkeypatch):
    root = Path(__file__).resolve().parents[2] / "benchmarks"
    monkeypatch.syspath_prepend(str(root))
    import common

    return common


def test_results_file_is_never_seen_torn_while_rewritten(bench, tmp_path) -> None:
    import threading

    path = tmp_path / "results" / "accuracy.json"
    payloads = [{"model": i, "figures": list(range(20_000 + i))} for i in range(30)]
    bench.write_json(path, payloads[0])
    done = threading.Event()

    def writer() -> None:
        for p in payloads[1:]:
            bench.write_json(path, p)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set() or reads < 50:
        assert json.loads(path.read_text()) in payloads            # old or new, never a torn file
        reads += 1
    thread.join()
    assert json.loads(path.read_text()) == payloads[-1]
    assert [p.name for p in path.parent.iterdir()] == ["accuracy.json"]


def test_results_file_survives_a_full_disk(bench, tmp_path, monkeypatch) -> None:
    """os.fdopen's file (the write layer) is a real file that raises ENOSPC partway: the one test double."""
    path = tmp_path / "fps.json"
    bench.write_json(path, {"old": True})
    real = os.fdopen

    def full(fd, *args, **kw):
        f = real(fd, *args, **kw)

        def write(text):
            f.buffer.write(text[:5].encode()) if hasattr(f, "buffer") else None
            raise OSError(errno.ENOSPC, "No space left on device")

        f.write = write
        return f

    monkeypatch.setattr(bench.os, "fdopen", full)
    with pytest.raises(OSError, match=f"no space left on {tmp_path.resolve()} while writing fps.json .*previous"):
        bench.write_json(path, {"new": "x" * 10_000})
    assert json.loads(path.read_text()) == {"old": True} and [p.name for p in tmp_path.iterdir()] == ["fps.json"]


@pytest.mark.parametrize("text", ['{"simplenet": {"image_auroc": 0.9', "", "[1, 2]", "\x00\x01", '{"a": 1}{'])
def test_accuracy_refuses_a_damaged_results_file_before_training(bench, tmp_path, text) -> None:
    import accuracy

    path = tmp_path / "accuracy.json"
    path.write_text(text)
    with pytest.raises(SystemExit) as caught:
        accuracy.main(["--json", str(path), "--work", str(tmp_path / "work"), "--models", "simplenet"])
    assert str(path) in str(caught.value) and "move it away" in str(caught.value)
    assert path.read_text() == text and not (tmp_path / "work").exists()


@pytest.mark.parametrize("name,kw,key", [
    ("spr", {"image_size": 32, "channels": (8, 16, 16), "time_dim": 16, "perturbations": 2}, "perturbations"),
    ("diffad", TINY_DIFFAD, "latent_channels"),
])
def test_torch_backend_builds_real_spr_and_diffad_bundles_and_refuses_forged_buffers(data, tmp_path, name, kw,
                                                                                    key) -> None:
    import edge_ad
    from edge_ad.bundle import BundleError
    from edge_ad_export.exporter import export_run
    from test_bundle_hardening import edit_meta

    train(TrainConfig(data=str(data), out=str(tmp_path / "run"), model=name, epochs=1, batch_size=4, model_kwargs=kw))
    bundle = export_run(tmp_path / "run", tmp_path / "bundle").path
    frame = FRAME[:40, :40]
    torch_score = edge_ad.load(bundle, backend="torch-cpu").predict(frame).score
    assert torch_score == pytest.approx(edge_ad.load(bundle, backend="onnxruntime-cpu").predict(frame).score, rel=1e-3)
    edit_meta(bundle, lambda m: m["config"].__setitem__(key, 60000))
    with pytest.raises(BundleError, match=f"config.{key} is 60000, but the bundle records"):
        edge_ad.load(bundle, backend="torch-cpu")


# ----------------------------------------------------------------------------------------------- neighbours


@pytest.mark.parametrize("names", [("metrics.json",), ("eval.json",), ("metrics.json", "eval.json")])
def test_train_refuses_a_folder_whose_metrics_files_are_not_a_runs(data, tmp_path, names) -> None:
    """A new run would replace (and first delete) metrics.json / eval.json it did not write."""
    from edge_ad.training.run import RunError

    out = tmp_path / "out"
    out.mkdir()
    for name in names:
        (out / name).write_text('{"mine": true}')
    before = _tree(out)
    with pytest.raises(RunError, match=r"holds .* but no training run .*--overwrite"):
        train(TrainConfig(data=str(data), out=str(out), epochs=1, batch_size=4, model_kwargs=TINY))
    assert _tree(out) == before
    train(TrainConfig(data=str(data), out=str(out), epochs=1, batch_size=4, model_kwargs=TINY, overwrite=True))
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("preferred", [["4"], [2.0], [True], "4", 4])
def test_triton_preferred_batch_sizes_are_whole_numbers(toy_bundle_path, tmp_path, preferred) -> None:
    from edge_ad.bundle import read_bundle
    from edge_ad_export.triton_repository import write_repository

    with pytest.raises(ValueError, match="preferred must be a list of whole numbers"):
        write_repository(read_bundle(toy_bundle_path), tmp_path / "repo", preferred=preferred)


@pytest.mark.parametrize("resize,ok", [([16, 16], True), ([64, 64], True), ([16, 64], True), ([65, 16], False),
                                       ([16384, 16384], False), ([16, 1000], False)])
def test_geometry_resize_is_bounded_by_the_crop(toy_bundle_path, resize, ok) -> None:
    """A tampered resize of 16384 x 16384 with a 16-pixel crop would allocate 800 MB per frame."""
    import edge_ad
    from edge_ad.bundle import BundleError
    from test_bundle_hardening import SIDE, edit_meta

    edit_meta(toy_bundle_path, lambda m: m["geometry"].__setitem__("resize", resize))
    frame = FRAME[:SIDE * 2, :SIDE * 3]
    if ok:
        assert math.isfinite(edge_ad.load(toy_bundle_path, backend="onnxruntime-cpu").predict(frame).score)
    else:
        with pytest.raises(BundleError, match=r"geometry\.resize .* is over 4 times the crop"):
            edge_ad.load(toy_bundle_path, backend="onnxruntime-cpu")


@pytest.mark.parametrize("spec,field", [({"dtype": "float64"}, "dtype"), ({"dtype": None}, "dtype"),
                                        ({"distribution": "uniform"}, "distribution"),
                                        ({"distribution": 3}, "distribution")])
def test_graph_input_kinds_the_runtime_cannot_make_are_refused_at_load(toy_bundle_path, spec, field) -> None:
    from edge_ad.bundle import BundleError, read_bundle
    from test_bundle_hardening import edit_meta

    noise = {"shape": [2, 3, 4, 4], "dtype": "float32", "distribution": "standard_normal", "seed": 0, **spec}
    edit_meta(toy_bundle_path, lambda m: m.__setitem__("graph_inputs", {"noise": noise}))
    with pytest.raises(BundleError, match=rf"field graph_inputs\['noise'\]\.{field}"):
        read_bundle(toy_bundle_path)
