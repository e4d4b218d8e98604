"""Issue 14, hostile replay of the CLI: generated bad arguments for every numeric option, unwritable
outputs, streams where every source fails, and errors that must reach the user as one line (never a
traceback) while a bug still shows its traceback. Real argparse, real files, real ONNX Runtime
(the session's tiny bundle), a few real `python -m edge_ad.cli` processes."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_ad import cli
from edge_ad.cli import EXIT_ERROR, EXIT_STREAM_FAILED, build_parser, main, stream_failure

RNG = random.Random(14)
_NOT_NUMBERS = ["", " ", "abc", "1x", "0x10", "nan", "inf", "-inf", "1e999", "½"]


def _bad_ints(low: int, high: int | None) -> list[str]:
    values = [str(low - 1), str(low - RNG.randint(2, 10**6)), "1.5", "2.0"] + RNG.sample(_NOT_NUMBERS, 4)
    if high is not None:
        values += [str(high + 1), str(high + RNG.randint(2, 10**9))]
    return values


def _bad_floats(high: float | None) -> list[str]:
    values = ["0", "-0.0", "-1", f"-{RNG.uniform(0.001, 1e6):.3f}", "nan", "inf", "-inf", "1e999", "abc", ""]
    if high is not None:
        values.append(str(high * 2 + 1))
    return values


TRAIN = ["train", "--data", "d", "--out", "o"]
STREAM = ["stream", "bundle", "--source", "0"]
EXPORT = ["export", "run"]
CASES = (
    [(TRAIN, "--epochs", v) for v in _bad_ints(1, 1_000_000)]
    + [(TRAIN, "--batch-size", v) for v in _bad_ints(1, 65536)]
    + [(TRAIN, "--image-size", v) for v in _bad_ints(1, 8192)]
    + [(TRAIN, "--resize-size", v) for v in _bad_ints(1, 8192)]
    + [(TRAIN, "--seed", v) for v in _bad_ints(0, 2**63 - 1)]
    + [(["demo"], "--epochs", v) for v in _bad_ints(1, 100000)]
    + [(["eval", "run"], "--batch-size", v) for v in _bad_ints(1, 65536)]
    + [(EXPORT, "--max-batch", v) for v in _bad_ints(1, 1024)]
    + [(EXPORT, "--dla-core", v) for v in _bad_ints(0, 15)]
    + [(STREAM, "--batch", v) for v in _bad_ints(1, 1024)]
    + [(STREAM, "--max-frames", v) for v in _bad_ints(1, None)]
    + [(STREAM, "--retry-budget", v) for v in _bad_ints(0, None)]
    + [(STREAM, "--steps", v) for v in _bad_ints(1, 1000)]
    + [(STREAM, "--noise-seed", v) for v in _bad_ints(0, 2**63 - 1)]
    + [(STREAM, "--max-pixels", v) for v in _bad_ints(1, None)]
    + [(STREAM, "--metrics-port", v) for v in _bad_ints(1, 65535) + ["65536", "70000", "99999999999"]]
    + [(STREAM, "--fps", v) for v in _bad_floats(1000.0)]
    + [(STREAM, "--duration", v) for v in _bad_floats(None)]
    + [(STREAM, "--idle-timeout", v) for v in _bad_floats(None)]
    + [(STREAM, "--retry-initial", v) for v in _bad_floats(86400.0)]
    + [(STREAM, "--retry-max", v) for v in _bad_floats(86400.0)]
    + [(STREAM, "--snapshot-budget-mb", v) for v in _bad_floats(None)]
    + [(STREAM, "--triton-url", v) for v in ["", "localhost", "host:0", "host:70000", ":8001", "host:-1", "h:p"]]
    + [(["stream", "bundle"], "--source", v) for v in ["", "   ", "-1", "-42", "256", str(RNG.randint(257, 10**9)),
                                                       "cam\nforged log line", "a\x1b[31mred", "\t"]]
    + [(TRAIN[:3], "--out", v) for v in ["", " ", "run\nx"]]
    + [(["train", "--out", "o"], "--data", v) for v in ["", " \t"]]
    + [(STREAM, "--video", v) for v in ["", "out\n.mp4"]]
    + [(STREAM, "--events", v) for v in ["", " "]]
)


@pytest.mark.parametrize("command,option,value", CASES, ids=[f"{c[0]}{o}={v!r}" for c, o, v in CASES])
def test_out_of_range_arguments_are_refused_by_name(command, option, value, capsys) -> None:
    assert main([*command, f"{option}={value}"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    [*STREAM, "--metrics-port", "1"], [*STREAM, "--metrics-port", "65535"], ["stream", "b", "--source", "255"],
    ["stream", "b", "--source", "./-1"], ["stream", "b", "--source", "rtsp://cam/s"], [*STREAM, "--retry-budget", "0"],
    [*STREAM, "--fps", "0.5"], [*STREAM, "--duration", "1e-3"], [*TRAIN, "--seed", "0"], [*TRAIN, "--epochs", "1"],
    [*STREAM, "--triton-url", "10.0.0.5:8001"], [*EXPORT, "--dla-core", "0"],
])
def test_values_in_range_are_taken(argv) -> None:
    build_parser().parse_args(argv)


def test_resume_and_overwrite_exclude_each_other(capsys) -> None:
    assert main([*TRAIN, "--resume", "--overwrite"]) == EXIT_ERROR
    assert "not allowed with argument --resume" in capsys.readouterr().err


# --video is checked before anything streams ----------------------------------------------------------------

@pytest.mark.parametrize("video,match", [
    ("{tmp}", "is a folder"),
    ("{tmp}/annotated", "has no file suffix"),
    ("{tmp}/annotated.notacontainer", "cannot write"),
    ("{tmp}/plain-file/annotated.mp4", "File exists|Not a directory"),
])
def test_unwritable_video_fails_before_the_bundle_is_read(video, match, tmp_path, capsys) -> None:
    (tmp_path / "plain-file").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["stream", str(tmp_path / "no-bundle"), "--source", "0", "--video", video.format(tmp=tmp_path),
                 "--events", str(tmp_path / "events.jsonl")])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "edge-ad stream: error:" in err and re.search(match, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before          # no events file, no probe left


# Streams that inspect nothing exit 3 ------------------------------------------------------------------------

SECRETS = ["hunter2", "s3cr3t-Pw", "Zx9!qq"]


def _stream(tiny_bundle, tmp_path, *sources: str, extra: tuple = ()) -> list[str]:
    events = tmp_path / "events.jsonl"
    return ["stream", str(tiny_bundle), "--backend", "onnxruntime-cpu", "--idle-timeout", "10", "--events", str(events),
            *[a for s in sources for a in ("--source", s)], *extra]


def test_every_source_failing_exits_3_with_the_reason(tiny_bundle, tmp_path, capsys) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"{i}.png").write_bytes(bytes(RNG.getrandbits(8) for _ in range(64)))
    refused = [f"rtsp://user:{s}@127.0.0.1:1/live" for s in SECRETS[:2]] + [f"http://127.0.0.1:1/v?password={SECRETS[2]}"]
    code = main(_stream(tiny_bundle, tmp_path, str(junk), *refused, extra=("--retry-budget", "0")))
    out, err = capsys.readouterr()
    assert code == EXIT_STREAM_FAILED
    assert "edge-ad stream: failed:" in err and "every source failed" in err and "Traceback" not in err
    text = out + err + (tmp_path / "events.jsonl").read_text()
    assert not [s for s in SECRETS if s in text]


def test_a_stream_that_runs_exits_0(tiny_bundle, tmp_path, capsys) -> None:
    import cv2
    import numpy as np

    folder = tmp_path / "parts"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((60, 80, 3), 120, np.uint8))
    assert main(_stream(tiny_bundle, tmp_path, str(folder))) == 0


@pytest.mark.parametrize("summary,reason", [
    ({"failed": {"all_sources_failed": True, "all_inference_failed": False, "reason": "every source failed: a: x"},
      "sources": {}}, "every source failed: a: x"),
    ({"failed": {"all_sources_failed": False, "all_inference_failed": True, "reason": ""}, "sources": {}},
     "every inference failed"),
    ({"failed": {"all_sources_failed": False, "all_inference_failed": False, "reason": ""},
      "sources": {"a": {"state": "failed", "frames": 0}}}, None),
    ({"sources": {"a": {"state": "failed", "frames": 0, "errors": ["refused"]},
                  "b": {"state": "failed", "frames": 0, "reason": "no such file"}}}, "every source failed (a: refused; b: no such file)"),
    ({"sources": {"a": {"state": "ended", "frames": 0, "inference_errors": 5}}}, "every inference failed (5 frames)"),
    ({"sources": {"a": {"state": "failed", "frames": 0}, "b": {"state": "ended", "frames": 3}}}, None),
    ({"sources": {}}, None),
])
def test_stream_failure_reads_either_summary_shape(summary, reason) -> None:
    assert stream_failure(summary) == reason


# Expected errors: one line; bugs: a traceback ----------------------------------------------------------------

def test_expected_errors_print_one_line_without_traceback(tiny_bundle, tmp_path, capsys) -> None:
    (tmp_path / "garbage-run").mkdir()
    (tmp_path / "garbage-run" / "run.json").write_text('{"model": "simplenet", "calib')
    (tmp_path / "not-a-bundle").mkdir()
    (tmp_path / "not-a-bundle" / "meta.json").write_text("[]")
    commands = [
        ["export", str(tmp_path / "missing-run"), "--out", str(tmp_path / "b")],
        ["export", str(tmp_path / "garbage-run"), "--out", str(tmp_path / "b")],
        ["eval", str(tmp_path / "missing-run")],
        ["train", "--data", str(tmp_path / "missing-data"), "--out", str(tmp_path / "r")],
        ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--device", "no-such-device"],
        ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--model", "no-such-model"],
        ["stream", str(tmp_path / "missing-bundle"), "--source", "0"],
        ["stream", str(tmp_path / "not-a-bundle"), "--source", "0"],
        ["stream", str(tiny_bundle), "--source", str(tmp_path / "no-such-video.mp4")],
        ["stream", str(tiny_bundle), "--source", "0", "--retry-initial", "5", "--retry-max", "1"],
        ["export", str(tiny_bundle), "--engine", "--batch", "8,1"],
        ["eval", str(Path(tiny_bundle).parent / "run"), "--device", "bogus"],
        ["eval", str(Path(tiny_bundle).parent / "run"), "--device", "cuda:99"],
    ]
    for argv in commands:
        code = main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith(f"edge-ad {argv[0]}: error:")]
        assert code == EXIT_ERROR and len(lines) == 1 and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "b").exists() and not (tmp_path / "r").exists()


def test_a_bug_still_shows_its_traceback(monkeypatch) -> None:
    def broken(args):
        return {}["missing"]

    monkeypatch.setattr(cli, "_info", broken)
    with pytest.raises(KeyError):
        main(["info"])

    def library_failure(args):
        raise RuntimeError("a library's internal error")       # raised outside edge_ad: not an expected error

    monkeypatch.setattr(cli, "_info", library_failure)
    with pytest.raises(RuntimeError):
        main(["info"])


@pytest.mark.parametrize("argv,needle", [
    (["train", "--data", "/nonexistent/category", "--out", "/nonexistent-run-out"], "dataset folder not found"),
    (["stream", "b", "--source", "-3"], "camera index -3 is out of range"),
])
def test_the_real_command_prints_no_traceback(argv, needle, tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "edge_ad.cli", *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == EXIT_ERROR and needle in done.stderr
    assert "Traceback" not in done.stderr and list(Path(tmp_path).iterdir()) == []


def _nan_graph(path: Path) -> None:
    """A real ONNX graph (uint8 N x 64 x 64 x 3 -> N x 1 x 64 x 64): channel mean / itself, NaN for black pixels."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["m"], axes=[3], keepdims=1),
             helper.make_node("Transpose", ["m"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Div", ["t", "t"], ["maps"])]
    graph = helper.make_graph(nodes, "nan", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 64, 64, 3])],
                              [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["N", 1, 64, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def test_every_inference_failing_exits_3(tiny_bundle, tmp_path, monkeypatch, capsys) -> None:
    """A real Detector on a real ONNX Runtime session of a graph that outputs NaN for black frames; the
    loader is given that detector (a hand-made graph has no bundle checksums to pass)."""
    import cv2
    import numpy as np

    import edge_ad
    from edge_ad.bundle import read_bundle
    from edge_ad.runtime.detector import Detector
    from edge_ad.runtime.onnxruntime import OrtBackend

    _nan_graph(tmp_path / "nan.onnx")
    detector = Detector(read_bundle(tiny_bundle), OrtBackend(tmp_path / "nan.onnx", device="cpu"))
    monkeypatch.setattr(edge_ad, "load", lambda *args, **kwargs: detector)
    folder = tmp_path / "black"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.zeros((48, 64, 3), np.uint8))
    code = main(_stream(tiny_bundle, tmp_path, str(folder)))
    out, err = capsys.readouterr()
    assert code == EXIT_STREAM_FAILED and "every inference failed" in err and "not finite" in err
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert not [e for e in events if e.get("event") in ("frame", "anomaly")]       # no frame got a verdict
    assert [e for e in events if e.get("event") == "summary"][-1]["frames"] == 0


def test_a_failing_stream_exits_3_without_torch(tiny_bundle, tmp_path, run_without_torch) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = run_without_torch(f"""
        from edge_ad.cli import main
        print("exit", main(["stream", {str(tiny_bundle)!r}, "--backend", "onnxruntime-cpu", "--source", {str(junk)!r}]))
    """)
    assert out.strip().splitlines()[-1] == f"exit {EXIT_STREAM_FAILED}"
