"""Issue 14, hostile replay of training runs: `edge-ad train --overwrite` killed (SIGKILL) at seeded
random moments, a full disk at seeded random byte counts, run.json and checkpoints tampered in
generated ways, and test splits of every shape. After each: no file outside the run folder changed,
no temporary is left once the next training ran, and the run on disk either loads (its checkpoint
being the one run.json describes) or is refused with a message, and `--resume` makes it complete.

The full disk is the one test double: the write layer `edge_ad.training.fit._open_for_write` is
replaced by a real file that raises OSError(ENOSPC) after N bytes, since a full disk cannot be made here."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edge_ad.cli import main
from edge_ad.data.synthetic import Counts, make_category
from edge_ad.training import fit as fit_module
from edge_ad.training.fit import DiskFullError
from edge_ad.training.run import TrainConfig, load_run, train

RNG = random.Random(1414)
CLI_TINY = ["--batch-size", "4", "--image-size", "64", "--resize-size", "72", "--no-pretrained"]
TINY = {"image_size": 64, "resize_size": 72, "embed_dim": 64, "disc_hidden": 32, "pretrained": False}
EXPECTED = (ValueError, FileNotFoundError, OSError)     # what a refusal may raise (with a message)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_category(tmp_path_factory.mktemp("hostile-train") / "data", "conveyor",
                         counts=Counts(train=8, test_good=2, test_per_defect=1), seed=5)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _loads_or_refused(run: Path) -> str:
    """'loaded' (and then its checkpoint is run.json's) or 'refused: <message>'; anything else fails."""
    try:
        info, _ = load_run(run)
    except EXPECTED as err:
        assert str(err).strip(), f"{type(err).__name__} without a message"
        return f"refused: {err}"
    digest = hashlib.sha256((run / "checkpoint.pt").read_bytes()).hexdigest()
    assert info.get("checkpoint_sha256") in (None, digest)
    return "loaded"


# Kills -------------------------------------------------------------------------------------------------------

def test_overwrite_killed_at_random_moments_never_mixes_runs(data, tmp_path, capsys) -> None:
    run = tmp_path / "run"

    def command(seed: int) -> list[str]:
        return ["train", "--data", str(data), "--out", str(run), "--epochs", "8", "--seed", str(seed), *CLI_TINY]

    assert main(command(0)) == 0
    capsys.readouterr()
    data_before = _tree(data)
    outcomes = []
    for seed in (1, 2, 3):
        old = json.loads((run / "run.json").read_text())
        process = subprocess.Popen([sys.executable, "-m", "edge_ad.cli", *command(seed), "--overwrite"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(RNG.uniform(1.5, 6.0))                  # import, begin, epochs, calibration or the final writes
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        state = _loads_or_refused(run)
        now = json.loads((run / "run.json").read_text())   # always whole JSON: written by rename
        if state == "loaded":
            assert now["status"] == "complete" and now["seed"] in (old["seed"], seed)
            assert (now["run_id"] == old["run_id"]) == (now["seed"] == old["seed"])
            outcomes.append("old" if now["run_id"] == old["run_id"] else "new")
        else:
            assert "has not finished training" in state and now["run_id"] != old["run_id"] and now["seed"] == seed
            assert main([*command(seed), "--resume"]) == 0     # the partial new run continues to a complete one
            capsys.readouterr()
            assert _loads_or_refused(run) == "loaded" and json.loads((run / "run.json").read_text())["seed"] == seed
            outcomes.append("resumed")
    assert main([*command(json.loads((run / "run.json").read_text())["seed"]), "--resume"]) == 0
    # stale temporaries cleaned; report/ is the run report `edge-ad train` writes at the end
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "metrics.json", "report", "run.json"]
    assert _tree(data) == data_before
    print("outcomes", outcomes)


from fakes import FullDisk as _FullDisk  # noqa: E402 - the one test double for a full disk

# Full disk ---------------------------------------------------------------------------------------------------



@pytest.mark.parametrize("target", ["checkpoint.pt", "run.json", "metrics.json"])
def test_full_disk_at_random_byte_counts_keeps_every_file_valid(data, tmp_path, monkeypatch, target) -> None:
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), out=str(run), epochs=1, batch_size=4, model_kwargs=TINY))
    size = (run / target).stat().st_size
    real = fit_module._open_for_write
    for room in sorted(RNG.sample(range(0, size), 2)) + [0]:
        monkeypatch.setattr(fit_module, "_open_for_write",
                            lambda path, room=room: _FullDisk(path, room) if path.name.startswith(f".{target}.")
                            else real(path))
        with pytest.raises(DiskFullError, match=f"no space left on {run.resolve()}"):
            train(TrainConfig(data=str(data), out=str(run), epochs=2, batch_size=4, resume=True, model_kwargs=TINY))
        assert not [p.name for p in run.iterdir() if p.name.endswith(".partial")]
        json.loads((run / "run.json").read_text())
        state = _loads_or_refused(run)
        assert state == "loaded" or "has not finished training" in state
    monkeypatch.setattr(fit_module, "_open_for_write", real)
    train(TrainConfig(data=str(data), out=str(run), epochs=2, batch_size=4, resume=True, model_kwargs=TINY))
    assert _loads_or_refused(run) == "loaded"


# Tampered runs -----------------------------------------------------------------------------------------------

def _mutations() -> list[tuple[str, object]]:
    values = [float("nan"), float("inf"), -float("inf"), "0.5", None, [], {}, True, 1e308]
    out: list[tuple[str, object]] = []
    for field in ("image_threshold", "pixel_threshold", "image_norm", "pixel_norm", "normal_images"):
        out += [(f"calibration.{field}", v) for v in RNG.sample(values, 3)]
    for key in ("model", "config", "geometry", "calibration", "checkpoint_sha256", "status", "data", "run_id"):
        out.append((f"delete {key}", None))
    out += [("status", v) for v in ("weird", "training", None, 3)]
    out += [("model", v) for v in ("mkd", "no-such-model", 7, ["simplenet"])]
    out += [("geometry", v) for v in ({"resize": [72, 72]}, {"resize": "ab", "crop": "ab"}, {"resize": [8, 8], "crop": [64, 64]})]
    out += [("config", v) for v in ({"image_size": "big"}, [], {"no_such_option": 1})]
    out += [("data", v) for v in (None, [], 5, "")]
    out += [("checkpoint_sha256", "%064x" % RNG.getrandbits(256)), ("metrics", "text")]
    out += [("text", t) for t in ("", "{", "[]", "null", '{"status": "complete"}', "\x00" * 10)]
    out += [("checkpoint", c) for c in ("truncate", "garbage", "delete", "other-run")]
    return out


MUTATIONS = _mutations()


@pytest.fixture(scope="module")
def complete_runs(data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("a", 0), ("b", 1)):
        train(TrainConfig(data=str(data), out=str(root / name), epochs=1, batch_size=4, seed=seed, model_kwargs=TINY))
    return {"a": root / "a", "b": root / "b"}


def _apply(run: Path, other: Path, what: str, value) -> None:
    info_path, checkpoint = run / "run.json", run / "checkpoint.pt"
    info = json.loads(info_path.read_text())
    if what == "text":
        info_path.write_text(value)
    elif what == "checkpoint":
        blob = checkpoint.read_bytes()
        if value == "truncate":
            checkpoint.write_bytes(blob[: len(blob) // 3])
        elif value == "garbage":
            checkpoint.write_bytes(bytes(RNG.getrandbits(8) for _ in range(4096)))
        elif value == "delete":
            checkpoint.unlink()
        else:
            shutil.copy2(other / "checkpoint.pt", checkpoint)
    else:
        if what.startswith("delete "):
            info.pop(what[7:], None)
        elif what.startswith("calibration."):
            info["calibration"][what.split(".", 1)[1]] = value
        else:
            info[what] = value
        info_path.write_text(json.dumps(info))


@pytest.mark.parametrize("what,value", MUTATIONS, ids=[f"{w}={v!r}"[:60] for w, v in MUTATIONS])
def test_tampered_run_loads_or_is_refused_with_a_message(complete_runs, tmp_path, capsys, what, value) -> None:
    run = tmp_path / "run"
    shutil.copytree(complete_runs["a"], run)
    _apply(run, complete_runs["b"], what, value)
    before = _tree(tmp_path)
    state = _loads_or_refused(run)
    code = main(["eval", str(run), "--batch-size", "4"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if state == "loaded":
        assert code == 0
    else:
        assert code == 2 and err.strip().splitlines()[-1].startswith("edge-ad eval: error:")
        assert _tree(tmp_path) == before                  # a refused run is left as it was


# Test splits -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["good only", "defects only", "one defect, no masks", "good only, empty masks folder"])
def test_every_test_split_shape_gives_a_complete_run(data, tmp_path, shape) -> None:
    category = tmp_path / "category"
    shutil.copytree(data, category)
    test, truth = category / "test", category / "ground_truth"
    defects = sorted(d.name for d in test.iterdir() if d.name != "good")
    if shape.startswith("good only"):
        for d in defects:
            shutil.rmtree(test / d)
            shutil.rmtree(truth / d)
        if shape == "good only":
            truth.rmdir()
    elif shape == "defects only":
        shutil.rmtree(test / "good")
    else:
        for d in defects[1:]:
            shutil.rmtree(test / d)
        shutil.rmtree(truth)
    result = train(TrainConfig(data=str(category), out=str(tmp_path / "run"), epochs=1, batch_size=4, model_kwargs=TINY))
    assert all(result[k] is None or 0.0 <= result[k] <= 1.0 for k in ("image_auroc", "pixel_auroc", "aupro"))
    assert all(k in result.get("absent", {}) for k in ("image_auroc", "pixel_auroc", "aupro") if result[k] is None)
    assert _loads_or_refused(tmp_path / "run") == "loaded"
