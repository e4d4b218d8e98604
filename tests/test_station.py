"""A station file (edge-ad stream --config station.toml): named cameras with their own bundles, operating
points, ROIs and tilings, run in one process; each bundle loaded once and batched across its cameras;
credentials from the environment, never written back; a bad file names its line.

Two real bundles (the conftest's tiny SimpleNet trained on two synthetic categories), video files, and
one real RTSP H.264 camera (tests/servers) where GStreamer's RTSP server can run.
"""

from __future__ import annotations

import json
import textwrap
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from servers import free_port, unavailable
from servers.rtsp import RtspCamera, gst_python, h264_video

import edge_ad
from edge_ad.cli import main
from edge_ad.stream.station import Station
from edge_ad.stream.station_file import StationFileError, load_station_file

SECRET = "s3cr:t@p/w%d"                      # every character a URL must escape


@pytest.fixture(scope="module")
def bundles(tiny_bundle, tiny_trained) -> tuple[Path, Path]:
    return Path(tiny_bundle), Path(tiny_trained("simplenet")["bundle"])


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "belt.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (160, 120))
    rng = np.random.default_rng(5)
    for _ in range(12):
        writer.write(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    writer.release()
    return path


def frames_of(video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    cap.release()
    return frames


def station_file(folder: Path, text: str) -> Path:
    path = folder / "station.toml"
    path.write_text(textwrap.dedent(text))
    return path


def events_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def rtsp_camera(tmp_path_factory):
    python, why = gst_python()
    if python is None:
        unavailable(why)
    path, why = h264_video(tmp_path_factory.mktemp("rtsp") / "cam.mp4", seconds=60)
    if path is None:
        unavailable(why)
    with RtspCamera(python, path) as camera:
        yield camera


def test_cameras_of_two_bundles_and_an_rtsp_camera_run_in_one_station(bundles, video, rtsp_camera, tmp_path,
                                                                      capsys, monkeypatch) -> None:
    monkeypatch.setenv("CAM_PASS", SECRET)
    path = station_file(tmp_path, f"""
        [station]
        name = "line3"
        max_frames = 30        # per bundle: the file's 12 frames, then the RTSP camera's

        [station.retry]
        initial = 0.1
        max = 0.4
        timeout = 3

        [outputs]
        events = "out/events.jsonl"
        events_frames = "all"

        [[camera]]
        name = "top"
        source = "{video}"
        bundle = "{bundles[0]}"

        [[camera]]
        name = "entry"
        source = "{rtsp_camera.url}?rtsp_transport=tcp"
        user = "operator"
        password_env = "CAM_PASS"
        bundle = "{bundles[0]}"

        [[camera]]
        name = "side"
        source = "{video}"
        bundle = "{bundles[1]}"
        video = "out/side.mp4"
        """)
    assert main(["stream", "--config", str(path), "--backend", "onnxruntime-cpu"]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out[:out.out.index("\n}\n") + 2])
    assert summary["station"] == "line3" and set(summary["sources"]) == {"top", "entry", "side"}
    assert all(s["frames"] > 0 for s in summary["sources"].values())
    groups = {tuple(g["cameras"]): g for g in summary["groups"]}
    assert set(groups) == {("top", "entry"), ("side",)} and groups[("top", "entry")]["batch"] == 2
    events = events_of(tmp_path / "out" / "events.jsonl")
    assert events[0]["event"] == "station" and events[-1]["event"] == "summary"
    assert sorted(tuple(e["sources"]) for e in events if e["event"] == "start") == [("side",), ("top", "entry")]
    assert len([e for e in events if e["event"] == "group_summary"]) == 2
    frames = [e for e in events if e["event"] in ("frame", "anomaly")]
    assert {e["source"] for e in frames} == {"top", "entry", "side"}
    assert (tmp_path / "out" / "side.mp4").stat().st_size > 0 and not list((tmp_path / "out").glob("side.*.mp4"))
    everything = out.out + out.err + (tmp_path / "out" / "events.jsonl").read_text()
    assert "s3cr" not in everything and "operator" not in everything    # credentials never written back


def test_each_bundle_is_loaded_once_and_batched_across_its_cameras(bundles, video, tmp_path) -> None:
    path = station_file(tmp_path, f"""
        [station]
        max_frames = 6
        [[camera]]
        name = "a"
        source = "{video}"
        bundle = "{bundles[0]}"
        [[camera]]
        name = "b"
        source = "{video}"
        bundle = "{bundles[1]}"
        [[camera]]
        name = "c"
        source = "{video}"
        bundle = "{bundles[0].parent}/./{bundles[0].name}"
        """)
    port = free_port()
    path.write_text(path.read_text() + f"[outputs]\nmetrics_port = {port}\n")
    station = Station(load_station_file(path)).open()
    try:
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert all(f'edge_ad_frames_processed_total{{source="{name}"}}' in metrics for name in "abc")
        by_cameras = {tuple(c.name for c in g.cameras): g for g in station.groups}
        assert set(by_cameras) == {("a", "c"), ("b",)}
        assert by_cameras[("a", "c")].stream.batch == 2 and by_cameras[("b",)].stream.batch == 1
        assert by_cameras[("a", "c")].stream.detector is not by_cameras[("b",)].stream.detector
        summary = station.run()
    finally:
        station.close()
    frames = {name: s["frames"] for name, s in summary["sources"].items()}
    assert frames["a"] + frames["c"] == 6 and frames["b"] == 6               # max_frames counts per bundle


def test_each_camera_keeps_its_own_operating_point_roi_and_tiling(bundles, video, tmp_path) -> None:
    """Three cameras on one model: the scores are the model's for each camera's own view, the verdicts at
    each camera's own threshold."""
    path = station_file(tmp_path, f"""
        [outputs]
        events = "events.jsonl"
        events_frames = "all"
        [[camera]]
        name = "never"
        source = "{video}"
        bundle = "{bundles[0]}"
        threshold = 1e9
        [[camera]]
        name = "always"
        source = "{video}"
        bundle = "{bundles[0]}"
        threshold = -1e9
        tiles = "2x2"
        [[camera]]
        name = "roi"
        source = "{video}"
        bundle = "{bundles[0]}"
        roi = [10, 20, 100, 80]
        """)
    assert main(["stream", "--config", str(path), "--backend", "onnxruntime-cpu"]) == 0
    rows = [e for e in events_of(tmp_path / "events.jsonl") if e["event"] in ("frame", "anomaly")]
    per = {name: sorted((e["frame"], e["score"], e["anomalous"]) for e in rows if e["source"] == name)
           for name in ("never", "always", "roi")}
    frames = frames_of(video)
    detector = edge_ad.load(bundles[0], backend="onnxruntime-cpu")
    want = {"never": detector.predict(frames), "always": detector.predict(frames, tiles=(2, 2)),
            "roi": detector.predict(frames, roi=(10, 20, 100, 80))}
    for name, results in want.items():
        assert [f for f, _, _ in per[name]] == list(range(len(frames)))
        assert np.allclose([s for _, s, _ in per[name]], [r.score for r in results], rtol=1e-4), name
    assert not any(a for _, _, a in per["never"]) and all(a for _, _, a in per["always"])
    assert [a for _, _, a in per["roi"]] == [r.is_anomalous for r in want["roi"]]    # the bundle's own threshold


@pytest.mark.parametrize("body, line, message", [
    ('[station]\nname = "x"\nduration = \n', 3, "not valid TOML"),
    ('[[camera]]\nname = "a"\nsource = "{video}"\nbundle = "{bundle}"\nexposur = 3\n', 5, "unknown key 'exposur'"),
    ('[[camera]]\nname = "a"\nsource = "{video}"\nbundle = "{bundle}"\n\n[[camera]]\nname = "a"\nsource = "{video}"\n'
     'bundle = "{bundle}"\n', 7, "'a' is used twice (also at line 2)"),
    ('[[camera]]\nname = "a"\nsource = "rtsp://cam/s"\nuser = "u"\npassword_env = "EDGE_AD_TEST_UNSET"\n'
     'bundle = "{bundle}"\n', 5, "EDGE_AD_TEST_UNSET, which is not set"),
    ('[[camera]]\nname = "a"\nsource = "{video}"\nbundle = "{bundle}"\nthreshold = 1\nsensitivity = 0.5\n', 6,
     "threshold or sensitivity, not both"),
    ('[[camera]]\nname = "a"\nsource = "{video}"\nbundle = "{bundle}"\nroi = [0, 0, -5, 10]\n', 5, "roi:"),
    ('[[camera]]\nname = "a"\nsource = "{video}"\nbundle = "{bundle}"\nfps = "fast"\n', 5, "fps must be a number"),
    ('[outputs]\nmqtt = "http://broker"\n\n[[camera]]\nname = "a"\nsource = "{video}"\nbundle = "{bundle}"\n', 2,
     "give mqtt://HOST"),
    ('[[camera]]\nname = "a"\nsource = 0\nuser = "u"\nbundle = "{bundle}"\n', 4, "goes with a URL source"),
    ('[[camera]]\nname = "a b"\nsource = "{video}"\nbundle = "{bundle}"\n', 2, "camera name 'a b'"),
    ('[[camera]]\nname = "a"\nsource = "{video}"\nbundle = "missing-bundle"\n', 4, "is not a folder"),
    ('[[camera]]\nname = "a"\nbundle = "{bundle}"\n', 1, "has no source"),
    ('[station]\nname = "x"\n', None, "no camera"),
    ('[station.retry]\ninitial = 5\nmax = 1\n\n[[camera]]\nname = "a"\nsource = "{video}"\nbundle = "{bundle}"\n', 2,
     "cap >= initial"),
])
def test_a_bad_station_file_names_its_line(bundles, video, tmp_path, body, line, message) -> None:
    path = station_file(tmp_path, body.format(video=video, bundle=bundles[0]))
    with pytest.raises(StationFileError) as caught:
        load_station_file(path, environ={})
    assert message in str(caught.value) and caught.value.line == line
    assert str(caught.value).startswith(f"{path}, line {line}:" if line else f"{path}:")


def test_the_command_reports_a_bad_file_in_one_line(bundles, video, tmp_path, capsys) -> None:
    path = station_file(tmp_path, f'[[camera]]\nname = "a"\nsource = "{video}"\nbundle = "{bundles[0]}"\nwidth = 0\n')
    assert main(["stream", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}, line 5: camera width must be" in err[0]


def test_flags_the_file_owns_are_refused_beside_it(bundles, video, tmp_path, capsys) -> None:
    path = station_file(tmp_path, f'[[camera]]\nname = "a"\nsource = "{video}"\nbundle = "{bundles[0]}"\n')
    assert main(["stream", "--config", str(path), "--events", "e.jsonl", "--threshold", "2"]) == 2
    assert "--threshold, --events: with --config the station file says this" in capsys.readouterr().err
    assert main(["stream", str(bundles[0])]) == 2
    assert "at least one --source (or a station file" in capsys.readouterr().err


def test_credentials_go_into_the_url_percent_encoded_and_nowhere_else(bundles, tmp_path) -> None:
    path = station_file(tmp_path, f"""
        [outputs]
        mqtt = "mqtt://broker.local"
        mqtt_user_env = "MQ_USER"
        mqtt_password_env = "MQ_PASS"
        webhook = "https://mes.local/api"
        webhook_token_env = "MES_TOKEN"
        [[camera]]
        name = "a"
        source = "rtsp://10.0.0.5:554/stream1?channel=1"
        user = "admin"
        password_env = "CAM_PASS"
        transport = "udp"
        bundle = "{bundles[0]}"
        """)
    env = {"CAM_PASS": SECRET, "MQ_USER": "line", "MQ_PASS": "mq-secret", "MES_TOKEN": "tok"}
    config = load_station_file(path, environ=env)
    camera = config.cameras[0]
    assert camera.spec == "rtsp://admin:s3cr%3At%40p%2Fw%25d@10.0.0.5:554/stream1?channel=1"
    assert camera.shown == "rtsp://10.0.0.5:554/stream1?channel=1" and camera.transport == "udp"
    assert config.outputs.mqtt == "mqtt://line:mq-secret@broker.local"
    assert config.outputs.webhook_headers == {"Authorization": "Bearer tok"}
    assert SECRET not in repr(config) and "mq-secret" not in repr(config.outputs)


def test_a_station_that_inspects_nothing_exits_3(bundles, tmp_path, capsys) -> None:
    path = station_file(tmp_path, f"""
        [station.retry]
        initial = 0.05
        max = 0.05
        budget = 0
        timeout = 1
        [[camera]]
        name = "gone"
        source = "rtsp://127.0.0.1:{free_port()}/cam"
        bundle = "{bundles[0]}"
        [[camera]]
        name = "gone-too"
        source = "rtsp://127.0.0.1:{free_port()}/cam"
        bundle = "{bundles[1]}"
        """)
    assert main(["stream", "--config", str(path), "--backend", "onnxruntime-cpu"]) == 3
    assert "every source failed" in capsys.readouterr().err
