"""`edge-ad bench` (edge_ad/runtime/bench.py): rows for every backend that runs here, the skipped ones
with their reasons, parity against ONNX Runtime on the CPU, accuracy on a test split, the JSON report,
and the same command without torch."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import edge_ad
from edge_ad.cli import main
from edge_ad.runtime.bench import default_backends

QUICK = ["--iters", "3", "--warmup", "1"]


@pytest.fixture
def one_torch_thread():
    """The torch backend on one thread: on a shared 2-core box two OpenMP threads spin against the other
    processes (a 64 px forward then takes a second instead of milliseconds)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bench(*args: str) -> int:
    return main(["bench", *args])


def test_rows_for_every_backend_here_and_the_json(tiny_bundle, tmp_path, capsys, one_torch_thread) -> None:
    out = tmp_path / "out.json"
    assert bench(str(tiny_bundle), "--batches", "1,2", *QUICK, "--json", str(out)) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = {(r["backend"], r["batch"]): r for r in report["rows"] if r["backend"] != "openvino-cpu"}
    assert set(rows) == {(b, n) for b in ("onnxruntime-cpu", "torch-cpu") for n in (1, 2)}
    for (backend, batch), row in rows.items():
        for mode in ("model", "e2e"):
            t = row[mode]
            assert t["fps"] > 0 and t["p50_ms"] <= t["p99_ms"] and t["iters"] == 3
            assert t["fps"] == pytest.approx(batch * 1e3 / t["p50_ms"])
        assert row["precision"] == "fp32"
        parity = row["parity"]
        assert parity["frames"] == 8 and parity["spread"] > 0 and parity["same_order"], (backend, parity)
        paper = row["vs_paper"]                        # SimpleNet's paper: 77 FPS on an RTX 3080 Ti
        assert paper["paper_fps"] == 77.0 and paper["ratio"] == pytest.approx(row["model"]["fps"] / 77.0)
        assert f"{backend:21s} fp32" in printed
    for batch in (1, 2):                               # two sessions of the same graph: exactly the same
        assert rows[("onnxruntime-cpu", batch)]["parity"]["max_abs_diff"] == 0.0
        assert rows[("torch-cpu", batch)]["parity"]["diff_over_spread"] < 1e-3
    skipped = report["skipped"]
    assert "--triton-url" in skipped["triton"] and "no CUDA GPU" in skipped["torch-cuda"]
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt" in skipped["tensorrt"] and "skipped tensorrt:" in printed
    assert not report["failed"] and report["model"] == "simplenet"
    env = report["environment"]
    assert env["cpu"] and env["versions"]["numpy"] == np.__version__ and env["versions"]["onnxruntime"]


def _test_images(category: Path) -> tuple[list[Path], list[int]]:
    paths = sorted(p for p in (category / "test").rglob("*.png"))
    return paths, [int(p.parent.name != "good") for p in paths]


def test_data_gives_the_image_auroc_of_the_backends_scores(tiny_bundle, tmp_path, capsys) -> None:
    from edge_ad.data.synthetic import Counts, make_category
    from edge_ad.metrics import image_auroc

    category = make_category(tmp_path / "data", "conveyor", counts=Counts(train=1, test_good=3, test_per_defect=1),
                             seed=5)
    out = tmp_path / "acc.json"
    assert bench(str(tiny_bundle), "--backends", "onnxruntime-cpu", "--batches", "2", "--iters", "1", "--warmup", "0",
                 "--data", str(category), "--json", str(out)) == 0
    acc = json.loads(out.read_text())["accuracy"]["onnxruntime-cpu"]
    paths, labels = _test_images(Path(category))
    with edge_ad.load(tiny_bundle, backend="onnxruntime-cpu") as det:
        want = image_auroc(np.array(labels), det.scores(paths))
    assert 0.0 <= acc["image_auroc"] <= 1.0 and acc["image_auroc"] == pytest.approx(want, abs=1e-12)
    assert acc["images"] == len(paths) and acc["anomalous"] == sum(labels)
    assert "image AUROC onnxruntime-cpu" in capsys.readouterr().out


def test_a_data_folder_without_a_test_split_is_refused(tiny_bundle, tmp_path, capsys) -> None:
    assert bench(str(tiny_bundle), "--backends", "onnxruntime-cpu", "--data", str(tmp_path)) == 2
    assert "no test/ folder" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_a_named_backend_that_cannot_run_fails_the_command(tiny_bundle, tmp_path, capsys) -> None:
    out = tmp_path / "out.json"
    code = bench(str(tiny_bundle), "--backends", "onnxruntime-cpu,tensorrt", "--batches", "1", "--iters", "1",
                 "--warmup", "0", "--json", str(out))
    err = capsys.readouterr().err
    assert code == 2 and "tensorrt cannot run" in err
    report = json.loads(out.read_text())              # the rows that did run are still written
    assert [r["backend"] for r in report["rows"]] == ["onnxruntime-cpu"]


@pytest.mark.parametrize("args, message", [(["--batches", "1,x"], "--batches"), (["--batches", "0"], "--batches"),
                                           (["--backends", "nope"], "unknown backend"),
                                           (["--backends", "onnxruntime-cpu:int9"], "precision after ':'"),
                                           (["--backends", "nope:fp32"], "unknown backend")])
def test_bad_lists_are_refused_in_one_line(tiny_bundle, capsys, args, message) -> None:
    assert bench(str(tiny_bundle), *args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_precision_after_the_name_is_asked_of_the_backend(tiny_bundle, tmp_path, capsys) -> None:
    """`name:precision`: the row carries both; a precision the backend cannot run is a failed row, not a crash."""
    out = tmp_path / "p.json"
    code = bench(str(tiny_bundle), "--backends", "onnxruntime-cpu:fp32,onnxruntime-cpu:bf16", "--batches", "1",
                 "--iters", "1", "--warmup", "0", "--json", str(out))
    report = json.loads(out.read_text())
    assert [(r["backend"], r["precision"]) for r in report["rows"]] == [("onnxruntime-cpu:fp32", "fp32")]
    assert code == 2 and "not 'bf16'" in report["skipped"]["onnxruntime-cpu:bf16"]


def test_default_backends_fix_the_device_of_each() -> None:
    names = default_backends()
    assert {"onnxruntime-cpu", "onnxruntime-cuda", "torch-cpu", "torch-cuda", "tensorrt", "triton"} <= set(names)
    assert not {"auto", "onnxruntime", "torch"} & set(names)


def test_bench_runs_without_torch(run_without_torch, tiny_bundle, tmp_path) -> None:
    out = tmp_path / "out.json"
    printed = run_without_torch(f"""
        from edge_ad.cli import main
        code = main(["bench", {str(tiny_bundle)!r}, "--batches", "1", "--iters", "2", "--warmup", "0",
                     "--json", {str(out)!r}])
        print("exit", code)
    """)
    assert "exit 0" in printed
    report = json.loads(out.read_text())
    assert [r["backend"] for r in report["rows"] if r["backend"] != "openvino-cpu"] == ["onnxruntime-cpu"]
    assert "torch" in report["skipped"]["torch-cpu"] and "train" in report["skipped"]["torch-cpu"]
    assert report["environment"]["versions"]["onnxruntime"]


def test_a_precision_the_bundle_has_no_graph_for_is_skipped_not_relabelled(tiny_bundle, tmp_path) -> None:
    """`:int8` on a bundle exported without --int8 must not time the FP32 graph under the INT8 label."""
    out = tmp_path / "i.json"
    bench(str(tiny_bundle), "--backends", "onnxruntime-cpu:int8,torch-cpu:int8", "--batches", "1", "--iters", "1",
          "--warmup", "0", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["rows"] == []
    assert "--int8" in report["skipped"]["onnxruntime-cpu:int8"] and "not 'int8'" in report["skipped"]["torch-cpu:int8"]


def test_the_auto_row_reports_the_precision_of_the_backend_it_picked(tiny_bundle) -> None:
    """auto's row label names its pick; a backend that reports no precision gets its default (TensorRT: fp16)."""
    from edge_ad.runtime.bench import precision_of

    class Plain:
        pass

    detector = edge_ad.load(tiny_bundle, "onnxruntime-cpu")
    detector.backend = Plain()
    detector.backend.device_heatmap = False
    assert precision_of("auto (tensorrt)", detector) == "fp16"
    assert precision_of("auto (onnxruntime:int8)", detector) == "int8"
    assert precision_of("auto (onnxruntime)", detector) == "fp32"
