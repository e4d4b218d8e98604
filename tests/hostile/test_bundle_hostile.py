"""Hostile bundles, generated (seeded): meta.json mutated field by field, names built to leave the
bundle or the Triton repository, tampered and truncated files, links out, and exports killed at random
moments. The invariants of issue 14, for every case:

- the bundle loads and runs, or is refused with a BundleError that names it (never another exception);
- the CLI answers with one line and status 2 (never a traceback);
- nothing outside the output paths changes (the bundle, the Triton repository);
- after a kill, the bundle on disk is whole (the old or the new one), and the next export cleans up.

The bundles are toys (tests/test_bundle_hardening.py: a real ONNX graph, the real writer and ONNX
Runtime), so a few hundred cases run in well under a minute.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge_ad
from edge_ad.bundle import BundleError, read_bundle
from edge_ad.cli import main
from edge_ad.runtime.engines import DeviceKey, EngineSpec, store_engine
from test_bundle_hardening import SIDE, edit_meta, kill_export_at, relist, toy, toy_fill, toy_meta, tree

SEED = 1414
VALUES = [math.nan, math.inf, -math.inf, -1, 0, 1, 3, 2**63, -2**31, 1e308, 0.5, "", "../victim", "/etc/passwd",
          "a\nb", 'q"uote', "a/b", "..", None, True, False, [], {}, [1], [0, 0], ["batch"], "x" * 5000, "NaN",
          {"a": 1}, [1, 2, 3, 4, 5, 6, 7], 8192, 100000,
          # plausible values, so that many mutants load and must then run
          0.0, 2.5, 255.0, -1e6, 1e-3, 16, 32, 8, "smoothed", "raw", "none", "box", "gaussian", [16, 16], [32, 32],
          [8, 8], [1, 1], [0.0, 1.0], [-5.0, 500.0], "images", "toy", "float16", "uint8"]
NAMES = ["../victim", "/tmp/edge_ad_victim", "a/b", "..", ".", "", "x\ny", 'a"b', "a\\b", "a b", "\x00", "~root",
         "${HOME}", "%2e%2e", "üüü", "x" * 300, "-rf", "a:b", "con.onnx/..", "./model.onnx"]
FRAME = np.random.default_rng(0).integers(0, 256, (SIDE + 4, SIDE + 8, 3), dtype=np.uint8)


def _leaves(value, path=()) -> list[tuple]:
    """The path of every field of meta.json (dict keys and list indexes), leaves and branches."""
    out = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _leaves(item, (*path, i))
    return out


def _mutate(meta: dict, rng: random.Random) -> str:
    """Change one field of `meta` in place (set, delete or wrap in a list); returns what was done."""
    path = rng.choice(_leaves(meta))
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    op = rng.choice(["set", "set", "set", "delete", "wrap"])
    if op == "delete":
        parent.pop(path[-1])
    elif op == "wrap":
        parent[path[-1]] = [parent[path[-1]]]
    else:
        parent[path[-1]] = copy.deepcopy(rng.choice(VALUES))
        op = f"set {parent[path[-1]]!r:.40}"
    return f"{'.'.join(map(str, path))}: {op}"


def _cases(count: int) -> list[int]:
    return list(range(count))


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    cv2.imwrite(str(folder / "frame.png"), FRAME)
    return folder


def _load_or_refuse(bundle: Path) -> str:
    """'ran' when the bundle loads and predicts; 'refused' with a BundleError naming it; anything else fails."""
    try:
        detector = edge_ad.load(bundle, backend="onnxruntime-cpu")
        result = detector.predict(FRAME)
    except BundleError as err:
        assert str(bundle) in str(err) or "meta.json" in str(err), err
        return "refused"
    assert result.heatmap.shape == FRAME.shape[:2]
    return "ran"


def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, text
    if code == 2:
        error_lines = [line for line in captured.err.splitlines() if "error" in line]
        assert len(error_lines) == 1, captured.err
    return code, text


@pytest.mark.parametrize("case", _cases(160))
def test_a_mutated_meta_loads_and_runs_or_is_refused_with_a_message(tmp_path, capsys, source_folder, case) -> None:
    rng = random.Random(SEED * 1000 + case)
    bundle = toy(tmp_path / "bundle")
    done = []
    edit_meta(bundle, lambda meta: done.extend(_mutate(meta, rng) for _ in range(rng.choice([1, 1, 2, 3]))))
    outcome = _load_or_refuse(bundle)
    before = tree(tmp_path)
    if case % 4 == 0:
        code, _ = _cli(["export", str(bundle), "--triton", str(tmp_path / "repo")], capsys)
        assert code in (0, 2), done
        assert code == 2 or outcome == "ran", done
    elif case % 4 == 1:
        code, _ = _cli(["stream", str(bundle), "--source", str(source_folder)], capsys)
        assert code == 2 if outcome == "refused" else code in (0, 3), (done, code)
    after = tree(tmp_path)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert all(k.startswith("repo") for k in changed), (done, sorted(changed))


FIELDS = {
    "model": lambda m, v: m.__setitem__("model", v),
    "input.name": lambda m, v: m["input"].__setitem__("name", v),
    "outputs[0].name": lambda m, v: m["outputs"][0].__setitem__("name", v),
    "fp16": lambda m, v: m.__setitem__("fp16", {"model.onnx": v}),
    "engines": lambda m, v: m["engines"].__setitem__(v, next(iter(m["engines"].values()))),
    "device.compute_capability": lambda m, v: next(iter(m["engines"].values()))["device"].__setitem__(
        "compute_capability", v),
    "device.tensorrt": lambda m, v: next(iter(m["engines"].values()))["device"].__setitem__("tensorrt", v),
    "device.platform": lambda m, v: next(iter(m["engines"].values()))["device"].__setitem__("platform", v),
    "graph_inputs": lambda m, v: m.__setitem__("graph_inputs", {v: {"shape": [1], "dtype": "float32",
                                                                    "distribution": "standard_normal", "seed": 0}}),
    "pipeline.graphs.encoder": lambda m, v: m.__setitem__("pipeline", {
        "kind": "latent_ddim", "graphs": {p: v if p == "encoder" else "model.onnx" for p in
                                          ("encoder", "denoiser", "decoder", "segmentation")},
        "steps": 1, "timesteps": 10, "beta_start": 0.1, "beta_end": 0.2, "latent_shape": [1], "seed": 0}),
}


@pytest.fixture(scope="module")
def engine_bundle(tmp_path_factory) -> Path:
    """A toy bundle carrying a (fake) TensorRT engine and an FP16 twin, so engine names can be mangled."""
    def fill(folder: Path) -> None:
        toy_fill()(folder)
        (folder / "model.fp16.onnx").write_bytes((folder / "model.onnx").read_bytes())

    from edge_ad.bundle import write_bundle

    out = write_bundle(tmp_path_factory.mktemp("engines") / "bundle", toy_meta(fp16={"model.onnx": "model.fp16.onnx"}),
                       fill).path
    store_engine(read_bundle(out), EngineSpec("model.fp16.onnx"), DeviceKey("NVIDIA H100", "9.0", "10.3.0", "x86_64"),
                 b"plan", {})
    return out


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("name", NAMES)
def test_names_that_become_paths_or_config_fields_are_refused(engine_bundle, tmp_path, capsys, field, name) -> None:
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(engine_bundle, bundle, symlinks=True)
    victim = tmp_path / "victim_onnx"
    victim.mkdir()
    (victim / "config.pbtxt").write_text("someone else's model")
    edit_meta(bundle, lambda meta: FIELDS[field](meta, name))
    before = tree(tmp_path)
    with pytest.raises(BundleError, match=str(bundle)):
        read_bundle(bundle)
    code, text = _cli(["export", str(bundle), "--triton", str(tmp_path / "repo")], capsys)
    assert code == 2 and "meta.json" in text
    assert tree(tmp_path) == before                       # the repository was not even created


@pytest.mark.parametrize("case", _cases(40))
def test_tampered_files_load_or_are_refused_naming_the_file(engine_bundle, tmp_path, case) -> None:
    import shutil

    rng = random.Random(SEED + case)
    bundle = tmp_path / "bundle"
    shutil.copytree(engine_bundle, bundle, symlinks=True)
    name = rng.choice(sorted(read_bundle(bundle).meta["files"]))
    real = (bundle / name).resolve()
    data = bytearray(real.read_bytes())
    how = rng.choice(["flip", "truncate", "append", "empty"])
    if how == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        data = data[:rng.randrange(len(data))]
    elif how == "append":
        data += os.urandom(rng.randint(1, 64))
    else:
        data = bytearray()
    real.write_bytes(bytes(data))
    if rng.random() < 0.5:
        with pytest.raises(BundleError, match=r"checksum mismatch|bytes, meta\.json says"):
            read_bundle(bundle)
    else:
        relist(bundle, name)                         # a tamperer who also fixes the checksum
        assert _load_or_refuse(bundle) in ("ran", "refused")


def test_links_out_of_the_bundle_are_refused(tmp_path) -> None:
    import shutil

    bundle = toy(tmp_path / "bundle")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(bundle / ".current", elsewhere)
    for entry, target in ((".current", elsewhere), ("meta.json", elsewhere / "meta.json")):
        link = bundle / entry
        saved = os.readlink(link)
        link.unlink()
        link.symlink_to(target)
        with pytest.raises(BundleError, match="outside the bundle"):
            read_bundle(bundle)
        link.unlink()
        link.symlink_to(saved)
    model = (bundle / ".current" / "model.onnx")
    model.unlink()
    model.symlink_to(elsewhere / "model.onnx")
    with pytest.raises(BundleError, match="points outside the bundle directory"):
        read_bundle(bundle)


_SLOW_EXPORT = """
import sys, time
import glob
if glob.glob({root!r} + "/edge_ad/_kernels*.so"):      # the tests run in a copy with its own kernels: use its code
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ScikitBuildRedirectingFinder"]
    sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_bundle_hardening import toy_fill, toy_meta
from edge_ad.bundle import write_bundle
def fill(folder):
    for i in range(20):
        (folder / f"part{{i}}.bin").write_bytes(b"x" * 100000)
        time.sleep(0.01)
    toy_fill(9.0)(folder)
print("ready", flush=True)
write_bundle(Path({out!r}), toy_meta(), fill, overwrite=True)
print("done", flush=True)
"""


@pytest.mark.parametrize("case", _cases(6))
def test_exports_killed_at_random_moments_leave_a_whole_bundle(tmp_path, case) -> None:
    rng = random.Random(SEED + 100 + case)
    out = tmp_path / "bundle"
    first = case % 2 == 0                                       # a first export, or an overwrite
    if not first:
        toy(out, scale=1.0)
    here = Path(__file__).resolve().parents[1]
    code = _SLOW_EXPORT.format(tests=str(here), root=str(here.parent), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(rng.uniform(0.0, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    if os.path.lexists(out):
        assert _load_or_refuse(out) == "ran"
    else:
        assert first
    toy(out, scale=2.0, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert _load_or_refuse(out) == "ran"


@pytest.mark.parametrize("k", random.Random(SEED).sample(range(1, 12), 5))
def test_a_first_export_killed_at_a_random_step_leaves_no_half_bundle(tmp_path, k) -> None:
    out = tmp_path / "bundle"
    finished = kill_export_at(out, k)
    assert finished or not os.path.lexists(out) or _load_or_refuse(out) == "ran"
    toy(out, scale=2.0, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
