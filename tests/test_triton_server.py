"""The Triton client against a real Triton Inference Server (tests/servers/triton.py: tritonserver 2.51
from the nvidia-pytriton wheel, on the loopback, serving the repository `edge-ad export --triton`
wrote, each model under its exported config.pbtxt with the Python backend running its ONNX graph).

Proven here: the served config is the exported one; `backend="triton"` and `edge-ad stream --backend
triton` give the local ONNX Runtime results (scores and heat maps; SPR with the bundle's seeded noise);
a server that is killed and comes back is waited for like a camera (states, back-off, the gap counted,
no frame lost) and a retry budget ends in an error that names the server; a model not loaded, or one
that does not match the bundle, is refused naming both; several `edge-ad stream` processes share the
server and Triton's own statistics and metrics show its dynamic batcher merging their requests.
Skipped (never in CI) only where the server cannot run here; the reason is given.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import pytest

import edge_ad
from edge_ad.bundle import read_bundle
from edge_ad.cli import main
from edge_ad.runtime.triton_client import TritonBackend
from edge_ad.runtime.triton_link import ServerGone
from edge_ad.runtime.triton_served import ModelNotServed, ServedModelMismatch
from edge_ad.stream import IterableSource, Reconnect
from servers import unavailable
from servers.triton import TritonServer, TritonUnavailable, ensure_env, serve_repository

ROOT = Path(__file__).resolve().parents[1]
# Same graph, same ONNX Runtime release in the server and here: the results are bit-identical (measured);
# the bound leaves room for a float re-association and still catches any other graph, seed or scaling.
RTOL, ATOL = 1e-6, 1e-7


@pytest.fixture(scope="module")
def bundles(tiny_bundle, tiny_trained) -> dict[str, Path]:
    return {"simplenet": tiny_bundle, "spr": tiny_trained("spr")["bundle"]}


@pytest.fixture(scope="module")
def server(bundles, tmp_path_factory) -> TritonServer:
    """One server for the module: both bundles exported by the CLI, served, started."""
    try:
        env = ensure_env(onnxruntime.__version__)
    except TritonUnavailable as err:
        unavailable(str(err))
    root = tmp_path_factory.mktemp("triton")
    for bundle in bundles.values():
        assert main(["export", str(bundle), "--triton", str(root / "exported")]) == 0
    models = serve_repository(root / "exported", root / "served")
    assert models == ["simplenet_onnx", "spr_onnx"]
    triton = TritonServer(env, root / "served", root, models)
    try:
        triton.start()
    except TritonUnavailable as err:
        unavailable(str(err))
    yield triton
    triton.stop()


def _frames(n: int, seed: int = 0, size: tuple[int, int] = (90, 120)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def _same_results(got: list, want: list) -> None:
    np.testing.assert_allclose([r.score for r in got], [r.score for r in want], rtol=RTOL, atol=ATOL)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.heatmap, b.heatmap, rtol=RTOL, atol=ATOL)
        assert a.is_anomalous == b.is_anomalous and np.array_equal(a.mask, b.mask)


def test_the_server_serves_the_exported_config(server) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    client = server.client()
    try:
        for name in server.models:
            exported = text_format.Parse((server.repository.parent / "exported" / name / "config.pbtxt").read_text(),
                                         model_config_pb2.ModelConfig())
            served = client.get_model_config(name).config
            assert exported.platform == "onnxruntime_onnx" and served.backend == "python"
            for field in ("name", "max_batch_size", "input", "output", "dynamic_batching", "version_policy"):
                assert getattr(served, field) == getattr(exported, field), field
            assert [g.count for g in served.instance_group] == [g.count for g in exported.instance_group]
    finally:
        client.close()


@pytest.mark.parametrize("model", ["simplenet", "spr"])
def test_triton_gives_the_local_onnxruntime_results(server, bundles, model) -> None:
    """Scores, heat maps and masks of frames of another size, in one batch larger than the model's
    max_batch_size (the Detector splits it), and one frame alone."""
    remote = edge_ad.load(bundles[model], backend="triton", triton_url=server.url)
    local = edge_ad.load(bundles[model], backend="onnxruntime-cpu")
    assert remote.max_batch == 8 and remote.backend.model == f"{model}_onnx"
    frames = _frames(11, seed=1)
    _same_results(remote.predict(frames), local.predict(frames))
    _same_results([remote.predict(frames[0])], [local.predict(frames[0])])
    remote.close()


def test_spr_is_served_with_the_bundles_seeded_noise(server, bundles) -> None:
    """The served graph holds SPR's noise at the bundle's seed: another seed gives other scores here, and
    is refused for the server (it cannot change the frozen noise)."""
    remote = edge_ad.load(bundles["spr"], backend="triton", triton_url=server.url)
    frames = _frames(4, seed=2)
    other = edge_ad.load(bundles["spr"], backend="onnxruntime-cpu", seed=12345).scores(frames)
    assert not np.allclose(remote.scores(frames), other, rtol=1e-3)
    with pytest.raises(ValueError, match="noise seed"):
        edge_ad.load(bundles["spr"], backend="triton", triton_url=server.url, seed=12345)


def _write_frames(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    return folder


def _scores(events: Path) -> dict[tuple[str, int], float]:
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    return {(e["source"], e["frame"]): e["score"] for e in lines if e["event"] in ("frame", "anomaly")}


def test_edge_ad_stream_on_triton_gives_the_local_scores(server, bundles, tmp_path, capsys) -> None:
    folder = _write_frames(tmp_path / "frames", _frames(6, seed=3))
    common = ["stream", str(bundles["simplenet"]), "--source", str(folder), "--events-frames", "all"]
    assert main([*common, "--backend", "triton", "--triton-url", server.url, "--events", str(tmp_path / "t.jsonl")]) == 0
    out = capsys.readouterr().out
    assert f"triton {server.url} model simplenet_onnx: connected, 0 reconnects" in out
    assert main([*common, "--backend", "onnxruntime-cpu", "--events", str(tmp_path / "o.jsonl")]) == 0
    remote, local = _scores(tmp_path / "t.jsonl"), _scores(tmp_path / "o.jsonl")
    assert len(remote) == 6 and remote.keys() == local.keys()
    np.testing.assert_allclose([remote[k] for k in sorted(remote)], [local[k] for k in sorted(local)],
                               rtol=RTOL, atol=ATOL)


def _restart_later(server: TritonServer, after: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(after), server.start()), daemon=True)
    thread.start()
    return thread


def test_a_killed_server_is_waited_for_like_a_camera_and_no_frame_is_lost(server, bundles) -> None:
    detector = edge_ad.load(bundles["simplenet"], backend="triton", triton_url=server.url)
    detector.backend.reconnect = Reconnect(initial=0.1, factor=2.0, cap=0.4)
    frames = _frames(12, seed=4)
    restarted: list[threading.Thread] = []

    def camera():
        for i, frame in enumerate(frames):
            if i == 4:                              # the server crashes mid-stream and is back 1.5 s later
                server.kill()
                restarted.append(_restart_later(server, 1.5))
            yield frame

    class Events:                                   # what the stream forwards to its sinks
        seen: list[dict] = []

        def write(self, item) -> None:
            pass

        def event(self, event: dict) -> None:
            self.seen.append(event)

        def close(self) -> None:
            pass

    events = Events()
    items = list(detector.stream(IterableSource(camera(), "cam"), batch=1, sinks=[events]))
    restarted[0].join(60)
    assert [i.frame.index for i in items] == list(range(12))
    _same_results([i.result for i in items], edge_ad.load(bundles["simplenet"], backend="onnxruntime-cpu").predict(frames))
    link = detector.backend.link_summary()
    assert link["state"] == "connected" and link["reconnects"] == 1 and link["retried_requests"] >= 1
    assert link["gap_seconds"] >= 1.0 and link["gaps"][0]["attempts"] >= 3          # backed off, several tries
    states = [e["state"] for e in events.seen if e["event"] == "backend"]   # the events file gets them too
    assert states == ["connected", "reconnecting", "connected"]


def test_a_retry_budget_ends_in_an_error_naming_the_server_and_a_stop_ends_the_wait(server, bundles) -> None:
    detector = edge_ad.load(bundles["simplenet"], backend="triton", triton_url=server.url)
    frame = _frames(1, seed=5)[0]
    want = detector.predict(frame).score
    server.kill()
    try:
        detector.backend.reconnect = Reconnect(initial=0.05, cap=0.1, budget=2)
        with pytest.raises(ServerGone, match=rf"triton {server.url}/simplenet_onnx: no usable server after 3 attempts"):
            detector.predict(frame)
        assert detector.backend.link_summary()["state"] == "failed"
        detector.backend.reconnect = Reconnect(initial=0.05, cap=0.1)        # never gives up ...
        waiting: list[BaseException] = []
        thread = threading.Thread(target=lambda: _catch(waiting, detector.predict, frame))
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive()
        detector.backend.interrupt()                                       # ... until the stream stops
        thread.join(5)
        assert not thread.is_alive() and isinstance(waiting[0], ServerGone) and "stopped" in str(waiting[0])
    finally:
        server.start()
    again = edge_ad.load(bundles["simplenet"], backend="triton", triton_url=server.url)
    assert again.predict(frame).score == pytest.approx(want, rel=RTOL)


def test_edge_ad_stream_ends_with_the_reason_when_the_server_stays_away(server, bundles, tmp_path) -> None:
    """Past --retry-budget the frames fail, and after several failed batches the stream stops with the
    reason and exit status 3: never a silent stop, never a crash."""
    video = _video(tmp_path / "cam.avi", _frames(10, seed=6, size=(64, 64)))
    events = tmp_path / "events.jsonl"
    command = [sys.executable, "-m", "edge_ad.cli", "stream", str(bundles["simplenet"]), "--source", str(video),
               "--loop", "--duration", "60", "--backend", "triton", "--triton-url", server.url, "--retry-budget", "1",
               "--retry-initial", "0.05", "--retry-max", "0.1", "--events", str(events), "--events-frames", "all"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while not (events.is_file() and len(_scores(events)) >= 5) and time.monotonic() < end:
            time.sleep(0.1)
        server.kill()
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        server.start()
    assert process.returncode == 3, err[-2000:]
    assert "no usable server after 2 attempts (retry budget 1)" in err                 # logged when it ran out
    assert f"triton {server.url}/simplenet_onnx: still no usable server (retry budget 1 spent)" in err.splitlines()[-1]
    assert f"triton {server.url} model simplenet_onnx: failed" in out


def test_a_server_too_slow_for_the_request_timeout_is_backed_off_and_meets_the_budget(server, bundles) -> None:
    """It answers every probe but no request in time: the tries still back off and end in the budget,
    never a tight loop of resent requests."""
    backend = TritonBackend(read_bundle(bundles["simplenet"]), url=server.url,
                            reconnect=Reconnect(initial=0.1, cap=0.2, budget=2))
    backend.timeout = 1e-4                                    # every request's time-out, not the probes'
    started = time.monotonic()
    with pytest.raises(ServerGone, match="no usable server after 3 attempts"):
        backend.infer(np.zeros((1, 64, 64, 3), np.uint8))
    assert time.monotonic() - started >= 0.3                  # waited 0.1 + 0.2 s between the tries
    link = backend.link_summary()
    assert link["state"] == "failed" and link["reconnects"] == 3 and "Deadline" in link["errors"][-1]
    backend.close()


def _catch(errors: list, call, *args) -> None:
    try:
        call(*args)
    except BaseException as err:  # noqa: BLE001 - handed to the test
        errors.append(err)


def test_a_model_not_loaded_is_named_with_the_bundle(server, bundles) -> None:
    server.unload("spr_onnx")
    client = server.client()
    try:
        with pytest.raises(ModelNotServed) as caught:
            edge_ad.load(bundles["spr"], backend="triton", triton_url=server.url)
        message = str(caught.value)
        assert f"server at {server.url}" in message and str(bundles["spr"]) in message
        assert "'spr_onnx' is in its repository but UNAVAILABLE" in message and "'spr_trt' is not in its" in message
        with pytest.raises(ModelNotServed, match="'nothing_onnx' is not in its repository"):
            TritonBackend(read_bundle(bundles["spr"]), url=server.url, model="nothing_onnx")
    finally:
        client.load_model("spr_onnx")
        client.close()
    assert edge_ad.load(bundles["spr"], backend="triton", triton_url=server.url).backend.model == "spr_onnx"


def test_a_model_that_does_not_match_the_bundle_is_named_with_it(server, bundles) -> None:
    """SPR's bundle against SimpleNet's model: same tensor names, another map size."""
    with pytest.raises(ServedModelMismatch) as caught:
        TritonBackend(read_bundle(bundles["spr"]), url=server.url, model="simplenet_onnx")
    message = str(caught.value)
    assert f"'simplenet_onnx' on the Triton server at {server.url}" in message and str(bundles["spr"]) in message
    assert "output 'raw_map' is TYPE_FP32 [1, 8, 8], the bundle needs TYPE_FP32 [1, 64, 64]" in message


def _video(path: Path, frames: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def _batch_counts(server: TritonServer, model: str) -> tuple[dict[int, int], float, float]:
    metrics = server.metrics()
    label = f'{{model="{model}",version="1"}}'
    return (server.batch_executions(model), metrics[f"nv_inference_count{label}"],
            metrics[f"nv_inference_exec_count{label}"])


def test_several_stream_processes_share_the_server_and_triton_batches_them(server, bundles, tmp_path) -> None:
    """Three `edge-ad stream` processes, one camera each, one frame per request (--batch 1): every
    execution of more than one frame is Triton's dynamic batcher merging requests of different processes."""
    before, count0, exec0 = _batch_counts(server, "simplenet_onnx")
    runs = []
    for k in range(3):
        video = _video(tmp_path / f"cam{k}.avi", _frames(20, seed=10 + k, size=(64, 64)))
        events = tmp_path / f"cam{k}.jsonl"
        command = [sys.executable, "-m", "edge_ad.cli", "--log-level", "WARNING", "stream", str(bundles["simplenet"]),
                   "--source", str(video), "--loop", "--duration", "4", "--batch", "1", "--backend", "triton",
                   "--triton-url", server.url, "--events", str(events), "--events-frames", "all"]
        runs.append((subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                     events))
    frames = 0
    for process, events in runs:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        frames += len(_scores(events))
    after, count1, exec1 = _batch_counts(server, "simplenet_onnx")
    executed = {size: n - before.get(size, 0) for size, n in after.items() if n > before.get(size, 0)}
    assert sum(size * n for size, n in executed.items()) == frames == count1 - count0      # every frame, once
    assert max(executed) >= 2, executed                                   # requests of several processes merged
    assert (count1 - count0) / (exec1 - exec0) > 1.0                      # the metrics endpoint says the same
