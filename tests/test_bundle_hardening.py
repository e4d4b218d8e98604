"""Issue 14, the bundle's part: Triton names that leave the repository, non-finite calibration,
overwrites that readers, kills and a second writer could see half-done, meta.json's schema, files no
checksum covers, ONNX Runtime's own errors, and folders made 0700.

A toy bundle (a three-node ONNX graph with one initializer, written by the real `write_bundle` and
run by the real ONNX Runtime) keeps these fast; `tiny_bundle` (a trained SimpleNet) covers the CLI.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

import edge_ad
from edge_ad.bundle import Bundle, BundleError, read_bundle, write_bundle
from edge_ad.cli import main
from edge_ad.runtime.onnxruntime import OrtBackend

SIDE = 16


def toy_graph(side: int = SIDE, scale: float = 1.0, dtype: int = TensorProto.UINT8) -> onnx.ModelProto:
    """uint8 N x side x side x 3 -> the channel mean times `scale`, N x 1 x side x side."""
    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("ReduceMean", ["t"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Mul", ["m", "scale"], ["raw_map"])]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("images", dtype, ["batch", side, side, 3])],
        [helper.make_tensor_value_info("raw_map", TensorProto.FLOAT, ["batch", 1, side, side])],
        initializer=[numpy_helper.from_array(np.full(64, scale, np.float32)[:1], "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def toy_meta(side: int = SIDE, **changes) -> dict:
    meta = {
        "model": "toy", "config": {},
        "input": {"name": "images", "dtype": "uint8", "layout": "NHWC", "color": "RGB", "height": side, "width": side},
        "outputs": [{"name": "raw_map", "dtype": "float32", "shape": ["batch", 1, side, side]}],
        "geometry": {"resize": [side, side], "crop": [side, side]},
        "heatmap": {"output_size": [side, side], "smooth": "gaussian", "sigma": 1.0, "window": None,
                    "align_corners": False, "score_from": "raw"},
        "calibration": {"image_threshold": 100.0, "image_norm": [0.0, 255.0], "pixel_threshold": 100.0,
                        "pixel_norm": [0.0, 255.0], "normal_images": 4},
        "metrics": None, "engines": {},
    }
    meta.update(changes)
    return meta


def toy_fill(scale: float = 1.0, side: int = SIDE):
    def fill(folder: Path) -> None:
        onnx.save(toy_graph(side, scale), str(folder / "model.onnx"))
    return fill


def toy(out: Path, *, scale: float = 1.0, overwrite: bool = False, **changes) -> Path:
    return write_bundle(out, toy_meta(**changes), toy_fill(scale), overwrite=overwrite).path


def edit_meta(bundle: Path, change) -> None:
    """Rewrite meta.json as a hand or a tool would (through the link, NaN tokens allowed)."""
    meta = json.loads((bundle / "meta.json").read_text())
    change(meta)
    (bundle / "meta.json").write_text(json.dumps(meta))


def relist(bundle: Path, name: str) -> None:
    data = (bundle / name).read_bytes()
    edit_meta(bundle, lambda m: m["files"].__setitem__(name, {"sha256": hashlib.sha256(data).hexdigest(),
                                                               "bytes": len(data)}))


def tree(folder: Path) -> dict[str, str]:
    """Every entry under `folder`: file digests and link targets, to prove nothing changed."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        out[rel] = ("link:" + os.readlink(path) if path.is_symlink() else
                    hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir")
    return out


@pytest.fixture
def bundle(tmp_path) -> Path:
    return toy(tmp_path / "bundle")


# -------------------------------------------------------------------- 2. Triton stays in its repository


@pytest.mark.parametrize("name", ["../victim", "ABS", "a/b", "..", ".", "x\ny", 'q"uote', "", "-rf", "n" * 65])
def test_triton_export_refuses_a_model_name_that_is_not_a_plain_identifier(bundle, tmp_path, capsys, name) -> None:
    victim = tmp_path / "victim_onnx"
    victim.mkdir()
    (victim / "keep.txt").write_text("someone else's model")
    name = str(tmp_path / "victim") if name == "ABS" else name
    edit_meta(bundle, lambda m: m.__setitem__("model", name))
    before = tree(tmp_path)
    assert main(["export", str(bundle), "--triton", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert "meta.json field model" in err and "Traceback" not in err
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("repo")} == before


def test_write_repository_checks_names_even_for_a_bundle_it_did_not_read(bundle, tmp_path) -> None:
    from edge_ad_export.triton_repository import write_repository

    meta = read_bundle(bundle).meta
    for field, value in (("model", "../victim"), ("input", {**meta["input"], "name": 'images" } ] output [ {'})):
        forged = Bundle(bundle, {**meta, field: value})
        with pytest.raises(BundleError, match=f"meta.json field {field}"):
            write_repository(forged, tmp_path / "repo")
    assert not (tmp_path / "victim_onnx").exists()


def test_config_pbtxt_is_printed_by_protobuf_so_names_cannot_inject_fields(bundle) -> None:
    from edge_ad_export.triton_repository import model_config

    text = model_config('evil" platform: "x\n', "onnxruntime_onnx", read_bundle(bundle), max_batch=4,
                        preferred=[2, 4], delay_us=100, instances=1)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == 'evil" platform: "x\n' and config.platform == "onnxruntime_onnx"
    assert list(config.input[0].dims) == [SIDE, SIDE, 3] and config.input[0].name == "images"


def test_triton_model_folders_are_swapped_whole_and_follow_the_umask(bundle, tmp_path) -> None:
    from edge_ad_export.triton_repository import write_repository

    repo = tmp_path / "repo"
    (repo / ".toy_onnx.abcdefgh.partial").mkdir(parents=True)            # a killed export's temporary
    (repo / "toy_onnx").mkdir()
    (repo / "toy_onnx" / "stale.txt").write_text("from an older export")
    old = os.umask(0o022)
    try:
        (model,) = write_repository(read_bundle(bundle), repo, overwrite=True)   # a folder it did not write
    finally:
        os.umask(old)
    assert sorted(p.name for p in model.iterdir()) == [".edge_ad-triton.json", "1", "config.pbtxt"]
    assert not (repo / ".toy_onnx.abcdefgh.partial").exists()
    assert model.stat().st_mode & 0o777 == 0o755


def test_triton_refuses_to_replace_a_model_folder_that_is_a_link(bundle, tmp_path) -> None:
    from edge_ad_export.triton_repository import write_repository

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "toy_onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="is a link"):
        write_repository(read_bundle(bundle), tmp_path / "repo")
    assert tree(outside) == {"keep.txt": hashlib.sha256(b"x").hexdigest()}


# ------------------------------------------------------------------------ 4. non-finite calibration


BAD_CALIBRATION = [("image_threshold", math.nan), ("image_threshold", math.inf), ("pixel_threshold", -math.inf),
                   ("image_threshold", "0.5"), ("image_norm", [0.0, math.nan]), ("pixel_norm", [math.inf, 1.0]),
                   ("image_norm", [2.0, 2.0]), ("pixel_norm", [3.0, 1.0]), ("image_norm", [1.0]),
                   ("image_threshold", None)]


@pytest.mark.parametrize("field,value", BAD_CALIBRATION)
def test_load_refuses_non_finite_or_empty_calibration_naming_the_field(bundle, field, value) -> None:
    edit_meta(bundle, lambda m: m["calibration"].__setitem__(field, value))
    with pytest.raises(BundleError, match=rf"bundle: meta.json field calibration\.{field}"):
        edge_ad.load(bundle, backend="onnxruntime-cpu")


@pytest.mark.parametrize("field,value", BAD_CALIBRATION)
def test_export_refuses_non_finite_calibration_before_writing(tmp_path, field, value) -> None:
    from edge_ad.runtime.preprocess import Geometry
    from edge_ad_export.exporter import export_model

    calibration = {**toy_meta()["calibration"], field: value}
    with pytest.raises(BundleError, match=rf"calibration\.{field}"):
        export_model(None, tmp_path / "out", name="simplenet", geometry=Geometry((72, 72), (64, 64)),
                     calibration=calibration, images=np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(BundleError, match=rf"calibration\.{field}"):
        toy(tmp_path / "toy", calibration=calibration)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------- 6. atomic, exclusive overwrites


def _scale(bundle: Path | Bundle) -> float:
    """Which export a reader got: the scale in the graph it read (each export has its own)."""
    b = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
    model = onnx.load(str(b.file("model.onnx")))
    return float(numpy_helper.to_array(model.graph.initializer[0])[0])


def _calibrated(i: int) -> dict:
    return {**toy_meta()["calibration"], "normal_images": i}


def test_readers_never_fail_while_the_bundle_is_overwritten(bundle, monkeypatch) -> None:
    failures, reads, done = [], [0], threading.Event()
    toy(bundle, scale=0.0, overwrite=True, calibration=_calibrated(0))

    def reader() -> None:
        while not done.is_set():
            try:
                b = read_bundle(bundle)
                assert b.meta["calibration"]["normal_images"] == _scale(b)          # meta and graph agree
                reads[0] += 1
            except Exception as err:  # noqa: BLE001 - any failure is the defect
                failures.append(repr(err))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 25):
            toy(bundle, scale=float(i), overwrite=True, calibration=_calibrated(i))
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert reads[0] > 0 and _scale(bundle) == 24.0
    assert len(list((bundle / ".versions").iterdir())) == 26              # replaced < 60 s ago: kept for readers
    monkeypatch.setattr("edge_ad.bundle.VERSION_GRACE_S", 0.0)
    toy(bundle, scale=25.0, overwrite=True, calibration=_calibrated(25))
    assert sorted(p.name for p in (bundle / ".versions").iterdir()) == ["v26", "v27"]      # current + previous


_KILL = """
import os, signal, shutil, sys
import glob
if glob.glob({root!r} + "/edge_ad/_kernels*.so"):      # the tests run in a copy with its own kernels: use its code
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ScikitBuildRedirectingFinder"]
    sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from test_bundle_hardening import toy
calls = [0]
def dying(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == {k}:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
os.replace, os.rename, os.symlink, shutil.rmtree = (dying(f) for f in (os.replace, os.rename, os.symlink, shutil.rmtree))
toy(__import__("pathlib").Path({out!r}), scale=7.0, overwrite=True)
print("finished")
"""


def kill_export_at(out: Path, k: int) -> bool:
    """Export over `out` in a subprocess killed (SIGKILL) at its k-th rename, link or removal;
    True when it finished before that."""
    here = Path(__file__).resolve().parent
    code = _KILL.format(tests=str(here), root=str(here.parent), k=k, out=str(out))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, -9), done.stderr
    return done.returncode == 0


def test_a_kill_at_any_step_of_an_overwrite_leaves_a_whole_bundle_and_the_next_export_cleans_up(tmp_path) -> None:
    out = tmp_path / "bundle"
    for k in range(1, 40):
        toy(out, scale=1.0, overwrite=True)
        finished = kill_export_at(out, k)
        assert _scale(out) in ((7.0,) if finished else (1.0, 7.0)), k          # the old or the new, whole
        if finished:
            break
    else:
        pytest.fail("the export never finished")
    toy(out, scale=2.0, overwrite=True)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "bundle"]
    assert leftovers == [] and _scale(out) == 2.0


def test_a_second_writer_gets_a_clear_error_and_the_first_one_wins(bundle) -> None:
    started, results = threading.Event(), {}

    def slow(folder: Path) -> None:
        started.set()
        time.sleep(1.0)
        toy_fill(3.0)(folder)

    def first() -> None:
        results["first"] = write_bundle(bundle, toy_meta(), slow, overwrite=True)

    thread = threading.Thread(target=first)
    thread.start()
    started.wait(10)
    with pytest.raises(BundleError, match="another export is writing .*bundle right now"):
        toy(bundle, scale=4.0, overwrite=True)
    thread.join()
    assert _scale(bundle) == 3.0


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_first_exports_at_once_one_wins_the_other_is_refused_or_becomes_the_next_version(tmp_path,
                                                                                             overwrite) -> None:
    out, barrier, outcomes = tmp_path / "bundle", threading.Barrier(2), {}

    def export(scale: float) -> None:
        def fill(folder: Path) -> None:
            barrier.wait(10)                           # both are filling before either commits
            toy_fill(scale)(folder)
        try:
            write_bundle(out, toy_meta(), fill, overwrite=overwrite)
            outcomes[scale] = "written"
        except BundleError as err:
            outcomes[scale] = str(err)

    threads = [threading.Thread(target=export, args=(float(s),)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    written = [s for s, o in outcomes.items() if o == "written"]
    if overwrite:
        assert len(written) == 2 and _scale(out) in (1.0, 2.0)
        assert sorted(p.name for p in (out / ".versions").iterdir()) == ["v1", "v2"]
    else:
        assert len(written) == 1 and _scale(out) == written[0]
        assert "was created by another export while this one ran" in outcomes[3.0 - written[0]]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_overwrite_refuses_a_folder_that_is_not_a_bundle(tmp_path) -> None:
    photos = tmp_path / "photos"
    (photos / "day1").mkdir(parents=True)
    (photos / "day1" / "a.jpg").write_bytes(b"jpeg")
    before = tree(photos)
    with pytest.raises(BundleError, match="is not a bundle .*refusing to overwrite"):
        toy(photos, overwrite=True)
    assert tree(photos) == before
    with pytest.raises(BundleError, match="already exists"):
        toy(photos)


def test_a_plain_directory_bundle_reads_and_converts_on_overwrite_keeping_foreign_files(bundle, tmp_path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(bundle, plain)                      # follows the links: a plain copy, as older edge_ad wrote
    shutil.rmtree(plain / ".versions")
    shutil.rmtree(plain / ".current")
    (plain / "notes.txt").write_text("the operator's notes")
    assert not (plain / "meta.json").is_symlink() and _scale(plain) == 1.0
    toy(plain, scale=5.0, overwrite=True)
    assert (plain / "meta.json").is_symlink() and _scale(plain) == 5.0
    assert (plain / "notes.txt").read_text() == "the operator's notes"
    edge_ad.load(plain, backend="onnxruntime-cpu").predict(np.zeros((20, 30, 3), np.uint8))


def test_a_copy_that_follows_links_and_one_that_keeps_them_both_read(bundle, tmp_path) -> None:
    shutil.copytree(bundle, tmp_path / "followed")
    shutil.copytree(bundle, tmp_path / "kept", symlinks=True)
    for copy in ("followed", "kept"):
        assert _scale(tmp_path / copy) == 1.0


def test_bundle_folders_follow_the_umask_not_0700(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        out = toy(tmp_path / "bundle")
        toy(out, scale=2.0, overwrite=True)
    finally:
        os.umask(old)
    for folder in (out, out / ".versions", out / ".versions" / "v2"):
        assert folder.stat().st_mode & 0o777 == 0o755, folder


# -------------------------------------------------------------------------- meta.json's schema


SCHEMA = [
    (lambda m: m.__setitem__("input", {**m["input"], "height": 32}), r"geometry\.crop"),
    (lambda m: m["geometry"].__setitem__("crop", [17, 16]), r"geometry\.crop"),
    (lambda m: m["geometry"].__setitem__("resize", [0, 16]), r"geometry\.resize\[0\]"),
    (lambda m: m["heatmap"].__setitem__("output_size", [100000, 100000]), r"heatmap\.output_size\[0\]"),
    (lambda m: m["heatmap"].__setitem__("sigma", math.nan), r"heatmap\.sigma"),
    (lambda m: m["heatmap"].__setitem__("sigma", 0.0), r"heatmap\.sigma"),
    (lambda m: m["geometry"].__setitem__("crop", [16, 17]), r"geometry\.crop"),
    (lambda m: m["heatmap"].__setitem__("smooth", "box"), r"heatmap\.window"),
    (lambda m: m["heatmap"].__setitem__("align_corners", 0), r"heatmap\.align_corners"),
    (lambda m: m["outputs"][0].__setitem__("shape", ["batch", 1, 100000, 100000]), r"outputs\[0\]\.shape"),
    (lambda m: m.__setitem__("outputs", []), r"field outputs"),
    (lambda m: m["input"].__setitem__("dtype", "float32"), r"input\.dtype"),
    (lambda m: m.pop("files"), r"field files is missing"),
    (lambda m: m["files"].__setitem__("x.onnx", m["files"].pop("model.onnx")), r"files does not list model\.onnx"),
    (lambda m: m.__setitem__("fp16", {"model.onnx": "../x.onnx"}), r"fp16"),
    (lambda m: m.__setitem__("engines", {"../../x.engine": {}}), r"engines"),
    (lambda m: m.__setitem__("pipeline", {"kind": "latent_ddim", "graphs": {"encoder": "/etc/passwd"}}),
     r"pipeline\.graphs\.encoder"),
    (lambda m: m.__setitem__("graph_inputs", {"a/b": {"shape": [1], "seed": 0}}), r"graph_inputs"),
    (lambda m: m.__setitem__("model", 7), r"field model"),
    (lambda m: m.__setitem__("calibration", "high"), r"field calibration"),
]


@pytest.mark.parametrize("change,field", SCHEMA)
def test_meta_schema_is_checked_before_anything_else_and_names_bundle_and_field(bundle, change, field) -> None:
    edit_meta(bundle, change)
    with pytest.raises(BundleError, match=rf"^{bundle}: .*{field}.*(re-export|recalibrate|calibrate)"):
        read_bundle(bundle)


def test_meta_json_that_is_not_json_or_not_an_object_is_refused(bundle) -> None:
    real = (bundle / "meta.json").resolve()
    for text in ("[1, 2]", "{", "\xff", "[" * 100000 + "]" * 100000, '{"a": 1' + "9" * 5000 + "}"):
        real.write_bytes(text.encode("latin-1"))
        with pytest.raises(BundleError, match="meta.json"):
            read_bundle(bundle)


def test_external_data_must_be_listed(tmp_path) -> None:
    def fill(folder: Path) -> None:
        onnx.save(toy_graph(scale=3.0), str(folder / "model.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)

    out = write_bundle(tmp_path / "bundle", toy_meta(), fill).path
    detector = edge_ad.load(out, backend="onnxruntime-cpu")                # listed: checked and loaded
    assert detector.predict(np.full((SIDE, SIDE, 3), 10, np.uint8)).score == pytest.approx(30.0)
    edit_meta(out, lambda m: m["files"].pop("weights.bin"))
    with pytest.raises(BundleError, match="weights.bin is not listed .*external data"):
        read_bundle(out)


def test_unlisted_files_opened_by_name_are_refused(bundle) -> None:
    (bundle / ".current" / "checkpoint.pt").write_bytes(b"planted")
    with pytest.raises(BundleError, match="checkpoint.pt is not listed"):
        read_bundle(bundle)


def test_meta_json_linked_out_of_the_bundle_is_refused(tmp_path) -> None:
    out = toy(tmp_path / "bundle")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(out, elsewhere)
    (out / "meta.json").unlink()
    (out / "meta.json").symlink_to(elsewhere / "meta.json")
    with pytest.raises(BundleError, match="meta.json is a link to .*outside the bundle"):
        read_bundle(out)


def test_a_damaged_graph_is_a_bundle_error_naming_the_file(bundle) -> None:
    for data in (b"not a model at all", (bundle / "model.onnx").read_bytes()[:200], b""):
        model = (bundle / "model.onnx").resolve()
        model.write_bytes(data)
        relist(bundle, "model.onnx")
        with pytest.raises(BundleError, match=r"cannot load .*model\.onnx.*re-export"):
            edge_ad.load(bundle, backend="onnxruntime-cpu")


def test_the_graph_input_is_checked_against_meta(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(toy_graph(side=SIDE), str(path))
    with pytest.raises(BundleError, match=r"promises uint8 \[batch, 32, 32, 3\]"):
        OrtBackend(path, device="cpu", input_hw=(32, 32))
    onnx.save(toy_graph(dtype=TensorProto.FLOAT), str(path))
    with pytest.raises(BundleError, match=r"takes tensor\(float\)"):
        OrtBackend(path, device="cpu")


def test_nan_metrics_are_written_as_null_so_meta_json_stays_strict(tmp_path) -> None:
    out = toy(tmp_path / "bundle", metrics={"image_auroc": math.nan, "aupro": 0.5})

    def refuse(token: str):
        raise AssertionError(f"meta.json holds {token}")

    meta = json.loads((out / "meta.json").read_text(), parse_constant=refuse)
    assert meta["metrics"] == {"image_auroc": None, "aupro": 0.5}


def test_cli_says_which_field_of_a_trained_bundle_is_wrong(tiny_bundle, tmp_path, capsys) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    edit_meta(copy, lambda m: m["calibration"].__setitem__("image_threshold", math.nan))
    assert main(["export", str(copy), "--triton", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert "calibration.image_threshold is nan" in err and "Traceback" not in err
    assert not (tmp_path / "repo").exists()


def test_reading_and_running_a_bundle_with_external_data_needs_no_torch(tmp_path, run_without_torch) -> None:
    def fill(folder: Path) -> None:
        onnx.save(toy_graph(scale=2.0), str(folder / "model.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)

    out = write_bundle(tmp_path / "bundle", toy_meta(), fill).path
    printed = run_without_torch(f"""
        import numpy as np, edge_ad
        detector = edge_ad.load({str(out)!r}, backend="onnxruntime-cpu")
        print(detector.predict(np.full(({SIDE}, {SIDE}, 3), 10, np.uint8)).score)
    """)
    assert float(printed.split()[-1]) == pytest.approx(20.0)



def test_external_data_without_the_onnx_package_says_what_to_install(tmp_path, monkeypatch) -> None:
    """A runtime-only install has no `onnx`: a bundle with external weights is refused with the fix,
    and a bundle without them never needs the package."""
    def fill(folder: Path) -> None:
        onnx.save(toy_graph(scale=3.0), str(folder / "model.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)

    external = write_bundle(tmp_path / "external", toy_meta(), fill).path
    plain = write_bundle(tmp_path / "plain", toy_meta(), lambda f: onnx.save(toy_graph(scale=3.0), str(f / "model.onnx"))).path
    monkeypatch.setitem(sys.modules, "onnx", None)                  # `import onnx` raises ImportError
    with pytest.raises(BundleError, match="needs the onnx package.*pip install onnx"):
        edge_ad.load(external, backend="onnxruntime-cpu")
    assert edge_ad.load(plain, backend="onnxruntime-cpu").predict(np.full((SIDE, SIDE, 3), 10, np.uint8)).score \
        == pytest.approx(30.0)


# Each limit of meta.json's schema, at the limit (read) and one step past it (refused by field name).
LIMITS = [
    ("heatmap.sigma", lambda m, v: m["heatmap"].__setitem__("sigma", v), 128.0, 128.25),
    ("heatmap.window", lambda m, v: m["heatmap"].update(smooth="box", window=v), 1024, 1025),
    ("heatmap.output_size", lambda m, v: m["heatmap"].__setitem__("output_size", [v, 4]), 8192, 8193),
    ("config.image_size", lambda m, v: m["config"].__setitem__("image_size", v), 16, 15),
    ("config.layers", lambda m, v: m["config"].__setitem__("layers", v), 1 << 16, (1 << 16) + 1),
    ("config.lr", lambda m, v: m["config"].__setitem__("lr", v), 1e12, 1.5e12),
    ("config.name", lambda m, v: m["config"].__setitem__("name", v), "n" * 256, "n" * 257),
]


@pytest.mark.parametrize("field, change, at, past", LIMITS, ids=[f"{f}={p}" for f, _, _, p in LIMITS])
def test_schema_limits_are_inclusive(bundle, field, change, at, past) -> None:
    edit_meta(bundle, lambda m: change(m, at))
    read_bundle(bundle)
    edit_meta(bundle, lambda m: change(m, past))
    with pytest.raises(BundleError, match=re.escape(field)):
        read_bundle(bundle)


# ----------------------------------------------------- format version, calibration writes, lenient history


def test_a_bundle_that_is_not_cropped_is_format_2_so_a_format_1_reader_refuses_it(tmp_path) -> None:
    """A runtime that reads only format 1 ignores geometry.fit and would crop a letterboxed model's
    frames: such bundles are format 2 (that runtime refuses them), cropped ones stay format 1."""
    side = [SIDE, SIDE]
    cropped = read_bundle(toy(tmp_path / "crop")).meta
    letterboxed = read_bundle(toy(tmp_path / "lb", geometry={"resize": side, "crop": side, "fit": "letterbox"})).meta
    squashed = read_bundle(toy(tmp_path / "sq", geometry={"resize": side, "crop": side, "fit": "squash"})).meta
    assert cropped["format_version"] == 1
    assert letterboxed["format_version"] == 2 and squashed["format_version"] == 2


def test_a_format_from_a_newer_edge_ad_asks_for_an_upgrade(bundle) -> None:
    edit_meta(bundle, lambda m: m.__setitem__("format_version", 3))
    with pytest.raises(BundleError, match=r"format 3 .*reads formats 1, 2: upgrade edge_ad"):
        read_bundle(bundle)
    edit_meta(bundle, lambda m: m.__setitem__("format_version", True))
    with pytest.raises(BundleError, match="re-export it"):
        read_bundle(bundle)


def _new_calibration(threshold: float) -> dict:
    return {**toy_meta()["calibration"], "image_threshold": threshold, "method": "mean+3std"}


def test_a_calibration_scored_on_a_model_an_export_replaced_is_refused(bundle) -> None:
    from edge_ad.bundle import replace_calibration

    scored = read_bundle(bundle).meta["files"]
    toy(bundle, scale=7.0, overwrite=True)                       # an export lands while calibrate scores
    with pytest.raises(BundleError, match="re-exported while calibrating.*run calibrate again"):
        replace_calibration(bundle, _new_calibration(50.0), replaced_at="2025-01-01T00:00:00+00:00",
                            scored_files=scored)
    assert read_bundle(bundle).meta["calibration"]["image_threshold"] == 100.0
    now = read_bundle(bundle).meta["files"]
    replace_calibration(bundle, _new_calibration(50.0), replaced_at="2025-01-01T00:00:00+00:00", scored_files=now)
    assert read_bundle(bundle).meta["calibration"]["image_threshold"] == 50.0


def test_a_write_protected_meta_json_is_refused_not_replaced(bundle) -> None:
    from edge_ad.bundle import check_writable, replace_calibration

    meta = Path(os.path.realpath(bundle / "meta.json"))
    meta.chmod(0o444)
    before = meta.read_bytes()
    for attempt in (lambda: check_writable(bundle),
                    lambda: replace_calibration(bundle, _new_calibration(50.0), replaced_at="2025-01-01T00:00:00Z")):
        with pytest.raises(BundleError, match="write-protected.*chmod u\\+w.*calibrate a copy"):
            attempt()
    assert meta.read_bytes() == before and meta.stat().st_mode & 0o777 == 0o444


def test_rewriting_meta_json_keeps_its_mode(bundle) -> None:
    from edge_ad.bundle import add_file

    meta = Path(os.path.realpath(bundle / "meta.json"))
    meta.chmod(0o640)
    add_file(read_bundle(bundle), "engines/toy.engine", b"engine", lambda m: None)
    assert Path(os.path.realpath(bundle / "meta.json")).stat().st_mode & 0o777 == 0o640


def test_history_and_provenance_a_later_version_adds_are_read_by_type_only(bundle) -> None:
    from edge_ad.bundle import validate_meta

    meta = read_bundle(bundle).meta
    later = {**meta["calibration"], "method": "conformal-v2", "operating_point": {"f1": 0.9, "mcc": 0.7, "auroc": None},
             "view": {"roi": [0, 0, 8, 8], "tiles": [2, 2], "overlap": 0.1}}
    validate_meta({**meta, "calibration": later, "calibration_history": [later]}, str(bundle))
    for broken, field in (({"operating_point": {"mcc": "high"}}, r"\.operating_point\.mcc must be a number"),
                          ({"method": "a b"}, r"\.method must be a method name"),
                          ({"view": {"tiles": [0, 2]}}, r"\.view\.tiles\[0\] must be an integer"),
                          ({"view": {"roi": [1, 2, 3]}}, r"\.view\.roi must be \[x, y, w, h\]")):
        history = [{**meta["calibration"], **broken}]
        with pytest.raises(BundleError, match=r"calibration_history\[0\]" + field):
            validate_meta({**meta, "calibration_history": history}, str(bundle))
