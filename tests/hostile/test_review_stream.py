"""Issue 14, second round (the reviewer's gaps in the stream's part), replayed with generated inputs.

1. Hostile file names (`token=".png`, `sig='x.png`, ...) never cut an events or JSON log line open:
   strings are redacted before serialising, never the serialised text.
2. Source names that merely contain key/pass/token (`keystone_line`, `passage_cam`, `monkey`) keep
   their summary and their log lines; real credential names are still hidden.
3. Percent-encoded names and IP-camera parameters (`loginpas=`, `psw=`, `p=`) are hidden; a network
   source's name hides every query value.
7. `--video` refuses an existing file unless --overwrite-video; a full disk stops the video (said
   once), not the stream; a video that cannot be read back is reported on close.
8. A live stream whose declared frame size is over the pixel limit is refused at connect.
9. Two streams cannot share an events file or a snapshot folder (flock, refused with a message).
10. A huge or non-finite snapshot budget is refused (CLI and sink).
14c. Source names are made unique whatever the inputs; 14d. argparse's echo is escaped and redacted.
Plus neighbours: the reconnect back-off never overflows, JSON log extras stay strict and redacted.

Real components throughout: real files, OpenCV, ONNX Runtime on the tiny bundle, a real MJPEG server
on the loopback, real tmpfs mounts (in a private user+mount namespace) for the full disk.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import shutil
import string
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge_ad
from edge_ad import logs
from edge_ad.cli import main
from edge_ad.logs import redact, redact_source_url, redact_value
from edge_ad.stream import EventsSink, FolderSource, IterableSource, NetworkSource, Reconnect, SnapshotSink, VideoSink
from edge_ad.stream.mjpeg import MjpegServer
from edge_ad.stream.sinks import InUseError


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")


def _strict(line: str) -> dict:
    """json.loads that refuses NaN/Infinity tokens (strict JSON)."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(line, parse_constant=refuse)


def _pieces(secret: str) -> list[str]:
    runs = [r for r in "".join(c if c.isalnum() else " " for c in secret).split() if len(r) >= 6]
    return [secret, *runs]


def _assert_hidden(text: str, secret: str, where: str) -> None:
    for piece in _pieces(secret):
        assert piece not in text, f"{piece!r} of secret {secret!r} leaked into {where}: {text!r}"


def _secret(rng: random.Random) -> str:
    return "S" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(10, 16))) + "Z"


def _png(path: Path, seed: int) -> None:
    ok, data = cv2.imencode(".png", np.random.default_rng(seed).integers(0, 256, (48, 64, 3), np.uint8))
    path.write_bytes(data.tobytes())


class _Logs:
    """Capture edge_ad's logs as text or JSON lines (the real formatters and redaction filter)."""

    def __init__(self, fmt: str) -> None:
        self.fmt, self.buf = fmt, io.StringIO()

    def __enter__(self) -> "_Logs":
        self.level = logging.getLogger().level
        self.handler = logs.configure(self.fmt, "INFO", stream=self.buf)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeHandler(self.handler)
        logging.getLogger().setLevel(self.level)

    @property
    def text(self) -> str:
        return self.buf.getvalue()


# 1. Hostile file names never break a JSON line -------------------------------------------------------------------

_NAME_PIECES = ['token="', "sig='", 'password={"a": [', '"', "'", "\\", 'key=\\"', "}", "]", ",", ": ", "pass: ",
                "%22", "access%5Ftoken%3D", "\u202e", "é", " ", "\n", "\t", "x", "api_key='", '{"', "=", "&p="]


def _hostile_file_names(seed: int, count: int = 10) -> list[str]:
    rng = random.Random(seed)
    names = {'token=".png', "sig='x.png", 'password="a b.png'}
    while len(names) < count:
        names.add("".join(rng.choice(_NAME_PIECES) for _ in range(rng.randint(1, 5))) + rng.choice([".png", ".PNG"]))
    return sorted(names)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_hostile_file_names_keep_every_events_and_log_line_valid(detector, tmp_path, seed, fmt) -> None:
    folder = tmp_path / "line"
    folder.mkdir()
    names = _hostile_file_names(seed)
    for k, name in enumerate(names):
        _png(folder / name, k)
    (folder / 'token="broken.png').write_bytes(b"not a png")        # a skipped file is named in the log too
    events = tmp_path / "events.jsonl"
    with _Logs(fmt) as captured:
        stream = detector.stream(str(folder), sinks=[EventsSink(events, frames="all")])
        items = list(stream)
    assert len(items) == len(names)
    parsed = [_strict(line) for line in events.read_text().splitlines()]        # every line is one valid object
    frames = [e for e in parsed if e["event"] in ("frame", "anomaly")]
    assert len(frames) == len(names) and all(isinstance(e["file"], str) and e["file"] for e in frames)
    summary = parsed[-1]
    assert summary["event"] == "summary" and list(summary["sources"]) == ["line"]
    assert isinstance(summary["sources"]["line"], dict) and summary["sources"]["line"]["frames"] == len(names)
    if fmt == "json":
        for line in captured.text.splitlines():
            _strict(line)
    else:
        assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line) or line.startswith("  | ")
                   for line in captured.text.splitlines())


def test_redact_value_keeps_the_structure_whatever_the_strings_hold() -> None:
    rng = random.Random(1)
    for _ in range(300):
        text = "".join(rng.choice(_NAME_PIECES + ["rtsp://u:p@h/", "?access_token=", "\\u", "\x00"])
                       for _ in range(rng.randint(1, 8)))
        value = {"event": "frame", text: text, "list": [text, {"password": text, "n": 3}], "sources": {text: {"a": 1}}}
        out = redact_value(value)
        assert json.loads(json.dumps(out)) == out
        assert len(out) == len(value) and out["list"][1]["password"] == "***" and out["list"][1]["n"] == 3
        assert all(isinstance(v, dict) for v in out["sources"].values())          # never replaced by ***


# 2. Source names that merely contain a credential word -------------------------------------------------------------

HARMLESS = ["keystone_line", "passage_cam", "monkey", "turnkey-press", "tokenizer_bay", "secretary_desk", "pinhole_cam",
            "authority", "bypass_belt", "key_station", "HotKeyCam", "sigma-line", "session_hall", "cookie_line",
            "compass", "Passport-Scanner", "donkey2", "pin_line", "passenger.door", "signal_tower"]


@pytest.mark.parametrize("name", HARMLESS)
def test_a_source_named_with_a_credential_word_inside_keeps_its_summary_and_log(detector, tmp_path, name) -> None:
    events = tmp_path / "events.jsonl"
    frames = [np.zeros((0, 0), np.uint8), np.full((48, 64, 3), 90, np.uint8)]     # one skipped, one processed
    with _Logs("text") as captured:
        stream = detector.stream(IterableSource(frames, name), sinks=[EventsSink(events, frames="all")])
        list(stream)
    parsed = [_strict(line) for line in events.read_text().splitlines()]
    assert parsed[0]["sources"] == [name]
    summary = parsed[-1]
    assert summary["sources"][name]["frames"] == 1 and summary["sources"][name]["corrupt"] == 1
    assert stream.summary()["sources"][name]["frames"] == 1
    assert f"source {name}: frame 0 skipped: empty or undecodable frame" in captured.text
    assert "***" not in captured.text and "***" not in events.read_text()


def test_a_folder_named_with_a_credential_word_inside_keeps_its_summary(detector, tmp_path) -> None:
    for name in ("keystone_line", "passage_cam", "monkey"):
        folder = tmp_path / name
        folder.mkdir()
        _png(folder / "a.png", 0)
        events = tmp_path / f"{name}.jsonl"
        list(detector.stream(FolderSource(folder, name), sinks=[EventsSink(events)]))
        summary = _strict(events.read_text().splitlines()[-1])
        assert summary["sources"] == {name: summary["sources"][name]} and summary["sources"][name]["frames"] == 1


@pytest.mark.parametrize("text", [f"source {name}: frame 3 skipped" for name in HARMLESS] +
                         [f'{{"sources": {{"{name}": {{"frames": 3}}}}}}' for name in HARMLESS] +
                         ["keyframe=12 pass/fail=ok", "--keyframe 3", "author: Ada"])
def test_words_that_contain_credential_words_are_not_redacted(text) -> None:
    assert redact(text) == text


# 3. Percent-encoded names, IP-camera parameters, source URLs ---------------------------------------------------------

ENCODED = ["access%5Ftoken", "access%255Ftoken", "accessToken", "api%5Fkey", "%61pi_key", "pass%77ord", "x%2Dapi%2Dkey",
           "loginpas", "psw", "pwd", "pas", "LoginPas", "user_pw", "pswd"]
ENCODED_CONTEXTS = [
    "http://cam.local/cgi-bin/snapshot.cgi?loginuse=admin&{name}={secret}",
    "rtsp://cam.local/s?next=https%3A%2F%2Fauth.local%2Fcb%3F{name}%3D{secret}%26state%3D1",
    "rtsp://cam.local/s?next=https%253A%252F%252Fx%252Fy%253F{name}%253D{secret}",
    "GET /videostream.cgi?user=admin&{name}={secret}&rate=0 HTTP/1.1",
    "camera SDK error: open failed ({name}={secret})",
    '{{"url": "http://cam/a.cgi?{name}%3D{secret}"}}',
]


def _encoded_cases(count: int) -> list[tuple[str, str]]:
    rng = random.Random(3)
    out = []
    for i in range(count):
        context, secret = rng.choice(ENCODED_CONTEXTS), _secret(rng)
        name = ENCODED[i % len(ENCODED)]
        if "%3D" in context or "%253D" in context:
            name = name.replace("%", "%25") if "%253D" in context else name
        out.append((context.format(name=name, secret=secret), secret))
    out += [("http://10.0.0.5/snapshot.cgi?usr=admin&p=Q9x8c7v6b5", "Q9x8c7v6b5"),
            ("/cgi-bin/snapshot.cgi?loginuse=admin&loginpas=123456789", "123456789"),
            ("http://cam/a.cgi?chn=1&P=Zz81726354", "Zz81726354")]
    return out


@pytest.mark.parametrize("text,secret", _encoded_cases(60))
def test_percent_encoded_and_ip_camera_parameters_are_redacted(text, secret) -> None:
    _assert_hidden(redact(text), secret, "redact()")
    _assert_hidden(json.dumps(redact_value({"error": text, text: 1})), secret, "redact_value()")


def test_p_is_secret_only_as_a_url_query_parameter() -> None:
    assert redact("p=3 frames, p: 4") == "p=3 frames, p: 4"
    assert redact("http://c/a?p=77&x=1") == "http://c/a?p=***&x=1"


@pytest.mark.parametrize("seed", range(6))
def test_a_network_source_name_hides_every_query_value(seed) -> None:
    rng = random.Random(seed)
    secrets = [_secret(rng) for _ in range(3)]
    names = rng.sample(["q", "k", "pw1", "cred0", "u", "login", "hash", "x", "code2", "v"], 3)
    query = "&".join(f"{n}={s}" for n, s in zip(names, secrets))
    url = f"rtsp://admin:{secrets[0]}@10.0.0.{seed}:554/Streaming/Channels/101?channel=2&subtype=0&{query}#t={secrets[2]}"
    name = NetworkSource(url).name
    for secret in secrets:
        _assert_hidden(name, secret, "the source's name")
    assert name.startswith(f"rtsp://***@10.0.0.{seed}:554/Streaming/Channels/101?channel=2&subtype=0&")
    assert redact_source_url("rtsp://cam/live") == "rtsp://cam/live"


def test_secrets_of_a_failing_network_source_reach_no_output(detector, tmp_path) -> None:
    """A URL whose password sits under an unknown name, percent-encoded, and as `p=`: the events file,
    the JSON log, the summary and the Prometheus-visible names show none of them."""
    secrets = ["Kx91hd82jd7Z", "Pp00192837Z", "Enc0ded9911Z"]
    url = (f"http://127.0.0.1:9/cgi-bin/video.cgi?loginuse=admin&loginpas={secrets[0]}&p={secrets[1]}"
           f"&next=x%3Faccess%5Ftoken%3D{secrets[2]}")
    events = tmp_path / "events.jsonl"
    with _Logs("json") as captured:
        stream = detector.stream(url, sinks=[EventsSink(events)], reconnect=Reconnect(initial=0.05, cap=0.05, budget=1,
                                                                                    timeout=1.0))
        list(stream)
    outputs = {"events": events.read_text(), "log": captured.text, "summary": json.dumps(stream.summary()),
               "names": " ".join(s.name for s in stream.sources)}
    assert stream.summary()["failed"]["all_sources_failed"]
    for where, text in outputs.items():
        for secret in secrets:
            _assert_hidden(text, secret, where)


# 7. --video: existing files, full disks, unreadable results ----------------------------------------------------------

def _folder_of(tmp_path: Path, n: int = 3) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    for k in range(n):
        _png(folder / f"{k}.png", k)
    return folder


@pytest.mark.parametrize("multi", [False, True])
def test_cli_refuses_an_existing_video_unless_overwrite_video(tiny_bundle, tmp_path, capsys, multi) -> None:
    folder = _folder_of(tmp_path)
    sources = ["--source", str(folder)] + (["--source", str(folder / "0.png")] if multi else [])
    video = tmp_path / "out.avi"
    existing = tmp_path / "out.imgs.avi" if multi else video
    existing.write_bytes(b"someone's recording")
    events = tmp_path / "events.jsonl"
    code = main(["stream", str(tiny_bundle), *sources, "--video", str(video), "--events", str(events)])
    err = capsys.readouterr().err
    assert code == 2 and "exists already" in err and "--overwrite-video" in err and "Traceback" not in err
    assert existing.read_bytes() == b"someone's recording" and not events.exists()      # refused before any output
    code = main(["stream", str(tiny_bundle), *sources, "--video", str(video), "--overwrite-video"])
    capsys.readouterr()
    assert code == 0
    cap = cv2.VideoCapture(str(existing))
    assert cap.isOpened() and cap.grab()
    cap.release()


def test_a_video_file_created_by_someone_else_meanwhile_is_not_replaced(detector, tmp_path, caplog) -> None:
    video = tmp_path / "v.avi"
    sink = VideoSink(video, codec="MJPG", overwrite=False)
    sink.plan(["cam"])                                         # checked at start: free
    video.write_bytes(b"theirs")                               # then someone writes it
    list(detector.stream(IterableSource([np.zeros((48, 64, 3), np.uint8)] * 2, "cam"), sinks=[sink]))
    assert video.read_bytes() == b"theirs" and "exists already" in caplog.text


def _private_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _private_tmpfs(), reason="no private tmpfs (unshare -rm + mount) on this machine")
def test_a_full_disk_stops_the_video_not_the_stream_and_a_torn_video_is_reported(tiny_bundle, tmp_path) -> None:
    """Two real tmpfs: on `roomy` (6 MB) the sink watches the free space and stops with "no space left"
    while the stream goes on; on `tiny` (2 MB) the watch is off after the first frame, the disk fills
    under OpenCV (which says nothing), and the check on close reports the unreadable file."""
    roomy, tiny, copy = tmp_path / "roomy", tmp_path / "tiny", tmp_path / "copy"
    roomy.mkdir(), tiny.mkdir(), copy.mkdir()
    script = textwrap.dedent(f"""
        import json, numpy as np, edge_ad
        from edge_ad import logs
        from edge_ad.stream import EventsSink, IterableSource, VideoSink
        logs.configure("text", "INFO")
        det = edge_ad.load({str(tiny_bundle)!r}, backend="onnxruntime-cpu")
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (480, 640, 3), np.uint8) for _ in range(80)]
        watched = VideoSink({str(roomy / 'v.mp4')!r}, space_check_s=0)
        blind = VideoSink({str(tiny / 'v.mp4')!r}, reserve_mb=0, space_check_s=1e9)
        events = EventsSink({str(copy / 'events.jsonl')!r})
        stream = det.stream(IterableSource(frames, "cam"), sinks=[watched, blind, events])
        n = sum(1 for _ in stream)
        print(json.dumps({{"items": n, "stopped": watched.stopped, "frames": watched.frames,
                          "problems": blind.problems, "watched_problems": watched.problems}}))
    """)
    cmd = (f"mount -t tmpfs -o size=6m tmpfs {roomy} && mount -t tmpfs -o size=2m tmpfs {tiny} && "
           f"{sys.executable} -c \"$SCRIPT\"; rc=$?; cp {roomy}/v.mp4 {copy}/ 2>/dev/null; exit $rc")
    run = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=240,
                         env={**os.environ, "SCRIPT": script})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["items"] == 80                                         # the stream went on
    assert result["stopped"].startswith(f"no space left on {roomy}") and 0 < result["frames"]["cam"] < 80
    assert run.stderr.count("no space left on") == 1 and "Traceback" not in run.stderr
    assert result["watched_problems"] == []
    cap = cv2.VideoCapture(str(copy / "v.mp4"))                           # the stopped video is finished, playable
    assert cap.isOpened() and cap.grab()
    cap.release()
    assert result["problems"] and "was the disk full?" in result["problems"][0]
    events = [_strict(line) for line in (copy / "events.jsonl").read_text().splitlines()]
    stopped = [e for e in events if e["event"] == "video_stopped"]
    assert len(stopped) == 1 and "no space left on" in stopped[0]["reason"]


# 8. Live sources: the declared frame size is checked at connect -------------------------------------------------------

def test_a_live_stream_over_the_pixel_limit_is_refused_at_connect(detector, caplog) -> None:
    server = MjpegServer(lambda k: np.full((120, 160, 3), k % 200, np.uint8), fps=20).start()
    try:
        stream = detector.stream(server.url, max_pixels=10_000, duration=20,
                                 reconnect=Reconnect(initial=0.05, cap=0.05, budget=2, timeout=3.0))
        items = list(stream)
    finally:
        server.stop()
    s = stream.summary()["sources"][server.url]
    assert items == [] and s["state"] == "failed" and s["read"] == 0 and s["corrupt"] == 0   # nothing decoded
    assert "160x120 frames, over the limit of 0.01 MP" in s["reason"] and s["too_large"] == 3
    assert stream.summary()["failed"]["all_sources_failed"]
    assert "connected, but the stream has 160x120 frames" in caplog.text


def test_a_live_stream_within_the_limit_still_connects(detector) -> None:
    server = MjpegServer(lambda k: np.full((120, 160, 3), k % 200, np.uint8), fps=20).start()
    try:
        items = list(detector.stream(server.url, max_pixels=19_200, max_frames=3, reconnect=Reconnect(timeout=3.0)))
    finally:
        server.stop()
    assert len(items) == 3


# 9. One writer per events file and per snapshot folder -------------------------------------------------------------

def test_a_second_writer_of_an_events_file_is_refused(detector, tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    first = EventsSink(path)
    first.event({"event": "start", "sources": ["a"]})
    with pytest.raises(InUseError, match="in use by another edge-ad stream"):
        EventsSink(path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from edge_ad.stream import EventsSink
        try:
            EventsSink({str(path)!r})
        except BlockingIOError as err:
            print("refused:", err.strerror); sys.exit(0)
        sys.exit(1)
    """)], stdout=subprocess.PIPE, text=True)
    out, _ = holder.communicate(timeout=60)
    assert holder.returncode == 0 and "in use" in out                 # another process is refused too
    first.event({"event": "summary"})
    first.close()
    again = EventsSink(path)                                           # released on close
    again.close()
    assert [_strict(line)["event"] for line in path.read_text().splitlines()] == ["start", "summary"]


def test_a_second_stream_on_a_snapshot_folder_is_refused_and_touches_nothing(detector, tmp_path) -> None:
    snaps = tmp_path / "snaps"
    first = SnapshotSink(snaps)
    (snaps / "cam").mkdir()
    inflight = snaps / "cam" / ".20240101-000000_f000000001.jpg.partial"    # the first one's file in flight
    inflight.write_bytes(b"x")
    manifest = (snaps / ".edge_ad-snapshots").read_bytes()
    with pytest.raises(InUseError, match="snapshot folder .* is in use"):
        SnapshotSink(snaps)
    assert inflight.exists() and (snaps / ".edge_ad-snapshots").read_bytes() == manifest
    first.close()
    SnapshotSink(snaps).close()


def test_cli_second_stream_on_the_same_events_file_says_so(tiny_bundle, tmp_path, capsys) -> None:
    folder = _folder_of(tmp_path, 1)
    events = tmp_path / "events.jsonl"
    holder = EventsSink(events)
    try:
        code = main(["stream", str(tiny_bundle), "--source", str(folder), "--events", str(events),
                     "--snapshots", str(tmp_path / "snaps")])
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert code == 2 and "in use by another edge-ad stream" in err and "Traceback" not in err
    SnapshotSink(tmp_path / "snaps").close()             # the refused run released the folder it had locked


# 10. Snapshot budgets -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [1e308, float("inf"), float("nan"), 2e9, True, -1, 0])
def test_a_huge_or_non_finite_snapshot_budget_is_refused(tmp_path, budget) -> None:
    with pytest.raises(ValueError, match="snapshot budget"):
        SnapshotSink(tmp_path / "snaps", budget_mb=budget)
    SnapshotSink(tmp_path / "snaps", budget_mb=1e9).close()        # the bound itself is fine, and nothing is locked


@pytest.mark.parametrize("text", ["1e308", "inf", "1e10", "nan", "-5"])
def test_cli_snapshot_budget_out_of_range_is_one_line(tiny_bundle, tmp_path, capsys, text) -> None:
    code = main(["stream", str(tiny_bundle), "--source", str(_folder_of(tmp_path, 1)), "--snapshots",
                 str(tmp_path / "s"), "--snapshot-budget-mb", text])
    err = capsys.readouterr().err
    assert code == 2 and "--snapshot-budget-mb" in err and "out of range" in err and "Traceback" not in err


# 14c. Unique names --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_source_names_are_unique_whatever_the_inputs(detector, seed) -> None:
    rng = random.Random(seed)
    names = [rng.choice(["cam", "cam#2", "cam#3", "cam#2#2", "cam#", "x"]) for _ in range(rng.randint(2, 7))]
    names += ["cam", "cam", "cam#2"]
    rng.shuffle(names)
    stream = detector.stream([IterableSource([], n) for n in names])
    got = [s.name for s in stream.sources]
    assert len(set(got)) == len(got), got
    for n in set(names):                                     # the first holder of a name keeps it
        assert got[names.index(n)] == n


# 14d. argparse's echo, and source names built from hostile text --------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_argparse_never_echoes_a_secret_or_a_control_character(tiny_bundle, capsys, seed) -> None:
    rng = random.Random(seed)
    secret = _secret(rng)
    control = rng.choice(["\n", "\r", "\x1b[2J", "\x07", "\u202e", "\t"])
    at = rng.randrange(1, len(secret))
    spelled = secret[:at] + control + secret[at:]
    url = rng.choice([f"rtsp://admin:{spelled}@10.0.0.1/s", f"http://cam/a.cgi?loginpas={secret}{control}",
                      f"rtsp://admin:{secret}@cam/s{control}"])
    for argv in (["stream", str(tiny_bundle), "--source", url],
                 ["stream", str(tiny_bundle), "--source", "x", f"rtsp://admin:{secret}@h/s"],     # unrecognised
                 ["stream", str(tiny_bundle), "--source", "x", "--triton-url", url]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "error:" in err
        _assert_hidden(err, secret, "argparse's error")
        for piece in (secret[:at], secret[at:]):
            assert len(piece) < 6 or piece not in err, err
        lines = err.splitlines()
        assert all(line.isprintable() for line in lines) and re.match(r"edge-ad( stream)?: error: ", lines[-1])


@pytest.mark.parametrize("control", ["\n", "\r", "\x1b", "\u2028", "\x00"])
def test_a_control_character_inside_a_password_does_not_unhide_it(control) -> None:
    name = IterableSource([], f"rtsp://admin:Pa55w{control}rdSecret99@10.0.0.1/s?x=1").name
    assert "Pa55w" not in name and "rdSecret99" not in name and name.isprintable()
    net = NetworkSource(f"rtsp://admin:Pa55w{control}rdSecret99@10.0.0.1/s?q=Another77Secret").name
    assert "Pa55w" not in net and "rdSecret99" not in net and "Another77Secret" not in net and net.isprintable()


# Neighbours ---------------------------------------------------------------------------------------------------------

def test_the_reconnect_back_off_never_overflows() -> None:
    policy = Reconnect(initial=0.5, factor=2.0, cap=30.0)
    assert [policy.delay(a) for a in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert policy.delay(2000) == 30.0 and policy.delay(10**9) == 30.0       # a camera down for weeks
    assert Reconnect(initial=1.0, factor=1.0, cap=1.0).delay(10**6) == 1.0


def test_json_log_extras_stay_strict_json_and_redacted() -> None:
    with _Logs("json") as captured:
        logging.getLogger("edge_ad.test").warning(
            "score %s", float("nan"),
            extra={"score": float("nan"), "gaps": [{"url": "rtsp://u:Hidden123pw@h/s"}], "keystone_line": 3,
                   "detail": {"password": "Hidden456pw", "n": float("inf")}})
    entry = _strict(captured.text.strip())
    assert entry["score"] is None and entry["keystone_line"] == 3 and entry["detail"]["n"] is None
    assert "Hidden123pw" not in captured.text and "Hidden456pw" not in captured.text


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("control", ["\n", "\r\n", "\x1b", "\t"])
def test_a_line_break_inside_a_logged_password_does_not_unhide_it(fmt, control) -> None:
    """A URL's userinfo is hidden whole whatever control character splits it; a bare `name=value` ends at
    whitespace (line breaks and tabs included: that is where such a value ends), not at other controls."""
    with _Logs(fmt) as captured:
        logging.getLogger("edge_ad.test").error("SDK: cannot open rtsp://admin:Pa55w%srdSecret99@10.0.0.1/s", control,
                                                extra={"detail": "user-pw=Xy\x1bZz0071secret"})
    assert "Pa55w" not in captured.text and "rdSecret99" not in captured.text and "Zz0071secret" not in captured.text
    if fmt == "json":
        _strict(captured.text.strip())
    else:
        assert len(captured.text.strip().splitlines()) == 1


def test_the_cli_error_line_hides_a_secret_split_by_a_line_break() -> None:
    from edge_ad.cli import _one_line

    line = _one_line(ConnectionError("camera SDK:\ncannot open rtsp://admin:Pa55w\nrdSecret99@10.0.0.1/s\nretry later"))
    assert "Pa55w" not in line and "rdSecret99" not in line and "\n" not in line and "cannot open" in line


def test_two_writers_of_one_video_file_are_refused_even_with_overwrite(detector, tmp_path, caplog) -> None:
    video = tmp_path / "v.avi"
    first, second = VideoSink(video, codec="MJPG"), VideoSink(video, codec="MJPG")
    frames = [np.full((48, 64, 3), k * 20, np.uint8) for k in range(4)]
    stream = detector.stream(IterableSource(frames, "cam"), sinks=[first, second])
    list(stream)
    assert second.stopped.startswith(f"video {video} is in use by another edge-ad stream")
    assert caplog.text.count("is in use by another edge-ad stream") == 1          # said once, not per frame
    assert first.frames == {"cam": 4} and first.problems == []
    cap = cv2.VideoCapture(str(video))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    cap.release()


@pytest.mark.parametrize("kwargs", [{"cap": float("inf")}, {"initial": float("nan")}, {"factor": float("inf")},
                                    {"timeout": 0}, {"timeout": float("nan")}, {"initial": True}])
def test_a_non_finite_retry_policy_is_refused(kwargs) -> None:
    with pytest.raises(ValueError, match="bad retry policy"):
        Reconnect(**kwargs)


@pytest.mark.parametrize("make", [lambda p: VideoSink(p / "v.mp4", fps=float("nan")),
                                  lambda p: VideoSink(p / "v.mp4", fps=0),
                                  lambda p: VideoSink(p / "v.mp4", reserve_mb=float("inf")),
                                  lambda p: SnapshotSink(p / "s", queue_size=0),
                                  lambda p: SnapshotSink(p / "s", quality=True)])
def test_other_sink_numbers_are_range_checked(tmp_path, make) -> None:
    with pytest.raises(ValueError):
        make(tmp_path)
