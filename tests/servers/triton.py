"""A real Triton Inference Server for the tests: the `tritonserver` binary (2.51) that the nvidia-pytriton
wheel ships, on loopback ports, serving the repository `edge-ad export BUNDLE --triton DIR` writes.

That build has only the Python backend (no ONNX Runtime, no TensorRT backend), so each exported model
is served by `serve_repository` under its exported config.pbtxt (the same name, inputs, outputs,
max_batch_size, dynamic batching and instance group) with `platform: "onnxruntime_onnx"` swapped for
`backend: "python"`, and a model.py (tests/servers/triton_model.py) that runs the model's own ONNX graph
with ONNX Runtime. What the tests prove against it is the protocol, the names, shapes and batching,
and the client; the exported repository itself is what users deploy on a GPU Triton (docs/triton.md).

The binary's Python stub links Debian's libpython3.11, so the models run under Debian's own
/usr/bin/python3 with packages from a virtualenv made from it once and cached (`ensure_env`:
$EDGE_AD_TRITON_HOME, else ~/.cache/edge_ad/triton-<version>; about 20 s and 300 MB on first use,
pip from the package index). Where that cannot be made here, `TritonUnavailable` says why; the tests
turn it into a skip, or a failure in CI (tests/servers/__init__.py's rule).
"""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from servers import free_port

PYTRITON = "nvidia-pytriton==0.7.0"         # ships tritonserver 2.51 and its Python backend
SYSTEM_PYTHON = "/usr/bin/python3"
MODEL_FILE = Path(__file__).with_name("triton_model.py")
READY = ".edge_ad-ready"


class TritonUnavailable(RuntimeError):
    """This machine cannot run the test Triton server; the message says why and what installs it."""


@dataclass(frozen=True)
class TritonEnv:
    """A prepared server installation: the binary, the backends folder and what the stub needs."""

    venv: Path
    site_packages: Path
    binary: Path
    backends: Path
    libs: Path

    def environment(self, threads: int = 1) -> dict[str, str]:
        """The server's environment: the wheel's libraries, and PATH led by the virtualenv's python3. The
        stub ignores PYTHONPATH; its embedded Python finds `python3` on PATH and, from the virtualenv's
        pyvenv.cfg beside it, takes that site-packages (and not another Python's, such as pyenv's)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LD_"))}
        env.update(PATH=f"{self.venv / 'bin'}:/usr/bin:/bin", LD_LIBRARY_PATH=str(self.libs), PYTHONNOUSERSITE="1",
                   EDGE_AD_TEST_ORT_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        return env


def cache_home() -> Path:
    """Where the server's virtualenv lives: $EDGE_AD_TRITON_HOME, else the user's cache folder."""
    if os.environ.get("EDGE_AD_TRITON_HOME"):
        return Path(os.environ["EDGE_AD_TRITON_HOME"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edge_ad" / f"triton-{PYTRITON.split('==')[1]}"


def _system_python() -> str:
    """Debian's python3 version (e.g. "3.11"); TritonUnavailable when it or its venv module is missing."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise TritonUnavailable(f"the tritonserver of {PYTRITON} is built for Linux x86-64 only, this is "
                                f"{sys.platform} {platform.machine()}")
    if not Path(SYSTEM_PYTHON).is_file():
        raise TritonUnavailable(f"{SYSTEM_PYTHON} is missing: Triton's Python stub needs the system Python "
                                "(Debian: apt-get install python3 python3-venv libpython3-dev)")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        raise TritonUnavailable(f"{SYSTEM_PYTHON} cannot make a virtualenv ({probe.stderr.strip()[-200:]}): "
                                "apt-get install python3-venv")
    return probe.stdout.strip()


def ensure_env(onnxruntime_version: str) -> TritonEnv:
    """The cached server installation, made now when missing (under a lock: one maker at a time)."""
    version = _system_python()
    home = cache_home()
    home.mkdir(parents=True, exist_ok=True)
    wanted = f"{PYTRITON} onnxruntime=={onnxruntime_version} python{version}\n"
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        venv = home / "venv"
        if (venv / READY).is_file() and (venv / READY).read_text() == wanted:
            return _layout(venv, version)
        shutil.rmtree(venv, ignore_errors=True)
        _make_venv(venv, onnxruntime_version)
        env = _layout(venv, version)
        (venv / READY).write_text(wanted)
        return env


def _make_venv(venv: Path, onnxruntime_version: str) -> None:
    """A virtualenv of the system Python with ONNX Runtime, NumPy and the PyTriton wheel (its files only:
    the server binary, not PyTriton's Python dependencies)."""
    steps = ([SYSTEM_PYTHON, "-m", "venv", str(venv)],
             [str(venv / "bin" / "pip"), "install", "-q", f"onnxruntime=={onnxruntime_version}", "numpy<2"],
             [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", PYTRITON])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise TritonUnavailable(f"cannot prepare the Triton test server ({' '.join(step[-3:])} failed: "
                                    f"{(done.stderr or done.stdout).strip()[-300:]})")


def _layout(venv: Path, version: str) -> TritonEnv:
    """The backends folder Triton loads (the Python backend plus the stub for `version`), made once."""
    site = venv / "lib" / f"python{version}" / "site-packages"
    dist = site / "pytriton" / "tritonserver"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonUnavailable(f"{PYTRITON} has no Python backend stub for Python {version}")
    backends = venv / "triton-backends"
    python = backends / "python"
    if not (python / stub.name).is_file():
        python.mkdir(parents=True, exist_ok=True)
        for source in (*(dist / "backends" / "python").glob("*.*"), stub):
            shutil.copy2(source, python / source.name)
    env = TritonEnv(venv, site, dist / "bin" / "tritonserver", backends, site / "nvidia_pytriton.libs")
    missing = subprocess.run(["ldd", str(python / stub.name)], capture_output=True, text=True,
                             env=env.environment()).stdout
    if "not found" in missing:
        lost = [line.split()[0] for line in missing.splitlines() if "not found" in line]
        raise TritonUnavailable(f"Triton's Python stub needs {', '.join(lost)} (Debian: apt-get install "
                                f"libpython{version})")
    return env


def serve_repository(exported: Path, served: Path) -> list[str]:
    """Copy an exported repository's ONNX models into `served` as Python-backend models (module doc);
    returns their names. TensorRT plan models are left out: this server cannot run them."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    names = []
    for config_path in sorted(exported.glob("*/config.pbtxt")):
        config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
        if config.platform != "onnxruntime_onnx":
            continue
        config.ClearField("platform")
        config.backend = "python"
        version = served / config.name / "1"
        version.mkdir(parents=True)
        shutil.copyfile(config_path.parent / "1" / "model.onnx", version / "model.onnx")
        shutil.copyfile(MODEL_FILE, version / "model.py")
        (served / config.name / "config.pbtxt").write_text(text_format.MessageToString(config))
        names.append(config.name)
    return names


class TritonServer:
    """tritonserver on 127.0.0.1 (gRPC on `port`, Prometheus metrics on `metrics_port`), models loaded
    explicitly (the tests unload and load them); `stop()` and `start()` keep the ports, like a server
    that is restarted."""

    def __init__(self, env: TritonEnv, repository: Path, folder: Path, models: list[str], *, threads: int = 1) -> None:
        self.env, self.repository, self.models, self.threads = env, repository, list(models), threads
        self.port, self.metrics_port = free_port(), free_port()
        self.log = folder / f"tritonserver-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(self.env.binary), f"--model-repository={self.repository}",
                f"--backend-directory={self.env.backends}", "--model-control-mode=explicit",
                *(f"--load-model={m}" for m in self.models), "--disable-auto-complete-config",
                "--allow-http=false", "--grpc-address=127.0.0.1", f"--grpc-port={self.port}",
                "--allow-metrics=true", "--allow-gpu-metrics=false", "--metrics-address=127.0.0.1",
                f"--metrics-port={self.metrics_port}", "--exit-timeout-secs=5", "--log-verbose=0",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"]

    @property
    def shm_prefix(self) -> str:
        """The prefix of the Python backend's /dev/shm regions of this server (removed after a kill)."""
        return f"edge_ad_test_triton_{self.port}_"

    def start(self, timeout: float = 90.0) -> "TritonServer":
        """Start and wait until every model is ready; TritonUnavailable (with the log's tail) when it exits."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env.environment(self.threads), start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                self.process = None
                raise TritonUnavailable(f"tritonserver exited at start: {self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise TritonUnavailable(f"tritonserver did not get its models ready in {timeout:g} s: {self.log_tail()}")

    def ready(self) -> bool:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.url)
        try:
            return client.is_server_ready(client_timeout=1.0) and all(
                client.is_model_ready(m, client_timeout=1.0) for m in self.models)
        except Exception:  # noqa: BLE001 - not up yet
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s) and wait until its port is closed."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """Kill the server and its model stubs at once (a crash, a power cut), and remove the shared
        memory they leave behind."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)

    def log_tail(self, chars: int = 1500) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return text[-chars:].strip() or "(no log)"

    def client(self):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url)

    def unload(self, model: str, timeout: float = 30.0) -> None:
        """Unload `model` and wait until the server says it is unloaded (UNAVAILABLE in its index)."""
        client = self.client()
        try:
            client.unload_model(model)
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                index = {m["name"]: m.get("state") for m in client.get_model_repository_index(as_json=True)["models"]}
                if index.get(model) == "UNAVAILABLE":
                    return
                time.sleep(0.1)
        finally:
            client.close()
        raise RuntimeError(f"tritonserver did not unload {model} in {timeout:g} s: {self.log_tail()}")

    def batch_executions(self, model: str) -> dict[int, int]:
        """Triton's own statistics of `model`: batch size -> number of executions of that size."""
        client = self.client()
        try:
            stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        finally:
            client.close()
        return {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in stats.get("batch_stats", [])}

    def metrics(self) -> dict[str, float]:
        """The Prometheus metrics endpoint, parsed: 'name{labels}' -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
