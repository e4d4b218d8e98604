"""Secrets of many spellings in many places, generated (seeded), must never reach an output.

Each secret is a fresh random string built from the characters real credentials hold ('@', ':', '/',
'%', '+', '=', ...); it is put into a camera URL's userinfo, a query or fragment parameter, a GStreamer
property, a header, a JSON or dict field, a command-line flag or an SDK's exception message, under one
of many credential names (access_token, X-Amz-Signature, user-pw, PHPSESSID, ...). The assertion is
always the same: the secret, and every 4+-character piece of it after the last separator, appears in
no output -- `redact` itself, the text and JSON logs (message, extra fields, tracebacks), the events
file, the stream summary, the Prometheus page and the CLI's error line.
"""

from __future__ import annotations

import io
import json
import logging
import random
import string
import urllib.request

import numpy as np
import pytest

import edge_ad
from edge_ad import logs
from edge_ad.cli import main
from edge_ad.logs import redact

SEED = 14
NAMES = ["password", "PASSWORD", "Passwd", "pwd", "pass", "passphrase", "access_token", "AccessToken", "id_token",
         "refresh_token", "token", "api_key", "apiKey", "API-KEY", "x-api-key", "apikey", "secret", "client_secret",
         "auth", "authToken", "Authorization", "signature", "Signature", "X-Amz-Signature", "X-Amz-Credential",
         "X-Amz-Security-Token", "X-Goog-Signature", "sig", "credential", "credentials", "session", "sessionid",
         "PHPSESSID", "JSESSIONID", "cookie", "jwt", "user-pw", "proxy-pw", "user-id", "proxy-id", "private_key",
         "AWSAccessKeyId", "sas_token", "otp", "sid", "USER-ID", "Proxy-Pw"]
CONTEXTS = [
    "rtsp://cam.local:554/stream?{name}={secret}",
    "rtsp://cam.local:554/stream?channel=1&{name}={secret}&subtype=0",
    "https://cam.local/snap.jpg?a=b#{name}={secret}",
    "http://cam.local/live;{name}={secret};x=1",
    "rtspsrc location=rtsp://cam.local/s {name}={secret} latency=0 ! rtph264depay ! avdec_h264",
    'souphttpsrc location=http://cam.local/mjpg {name}="{secret}" ! jpegdec',
    '{{"source": "cam", "{name}": "{secret}", "frames": 3}}',
    "{{'source': 'cam', '{name}': '{secret}'}}",
    "{name}: {secret}",
    "camera SDK error 0x80004005: open failed ({name}={secret})",
    "GigE Vision: {name} = {secret} rejected by device",
    "--{name} {secret} --fps 25",
]
URL_SAFE = string.ascii_letters + string.digits + "-._~%+!$*,;:@/?="        # what survives in a query value
QUOTED = string.ascii_letters + string.digits + "-._~%+!$*,;:@/?=&#()[]{}<> "


def _secret(rng: random.Random, alphabet: str) -> str:
    """A credential-like random string: letters and digits with the given specials mixed in."""
    core = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(10, 20)))
    extra = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
    return "S" + "".join(rng.sample(core + extra, len(core + extra))) + "Z"


def _pieces(secret: str) -> list[str]:
    """The secret and its alphanumeric runs of 6+ characters: none may leak, even partly."""
    runs = [r for r in "".join(c if c.isalnum() else " " for c in secret).split() if len(r) >= 6]
    return [secret, *runs]


def _assert_hidden(text: str, secret: str, where: str) -> None:
    for piece in _pieces(secret):
        assert piece not in text, f"{piece!r} of secret {secret!r} leaked into {where}: {text!r}"


def _cases(count: int) -> list[tuple[str, str]]:
    rng = random.Random(SEED)
    cases = []
    for i in range(count):
        name, context = NAMES[i % len(NAMES)], rng.choice(CONTEXTS)
        quoted = "\"{secret}\"" in context or "'{secret}'" in context
        alphabet = QUOTED if quoted else URL_SAFE.replace("&", "").replace(";", "")
        if context.startswith("--") or " = " in context or ": {secret}" in context or "location=" in context \
                or "({name}" in context:
            alphabet = URL_SAFE.replace("&", "")                             # up to whitespace
        if "#" in context or context.startswith("rtsp") or context.startswith("http"):
            alphabet = alphabet.replace("#", "").replace("&", "").replace(";", "")
        secret = _secret(rng, alphabet.replace(" ", "") if not quoted else alphabet.replace('"', "").replace("'", ""))
        cases.append((context.format(name=name, secret=secret), secret))
    return cases


@pytest.mark.parametrize("text,secret", _cases(240))
def test_credential_parameters_of_every_spelling_are_redacted(text, secret) -> None:
    _assert_hidden(redact(text), secret, "redact()")


def _userinfo_cases(count: int) -> list[tuple[str, str, str]]:
    rng = random.Random(SEED + 1)
    specials = "@:/?#%!$&'()*+,;="
    cases = []
    for _ in range(count):
        user = _secret(rng, "._-")
        password = _secret(rng, specials)
        scheme = rng.choice(["rtsp", "rtsps", "http", "https", "rtmp", "srt", "gige+tcp"])
        host = rng.choice(["10.0.0.21", "cam.local:554", "[fe80::1]:8554"])
        url = f"{scheme}://{user}:{password}@{host}/{rng.choice(['h264', 'live/ch1', 'cam@2/main'])}"
        cases.append((rng.choice(["{url}", "cannot open {url}: 401", "source '{url}' failed", "[{url}]"])
                      .format(url=url), user, password))
    return cases


@pytest.mark.parametrize("text,user,password", _userinfo_cases(60))
def test_all_of_the_userinfo_goes_even_when_the_password_holds_at_signs(text, user, password) -> None:
    out = redact(text)
    _assert_hidden(out, password, "redact()")
    _assert_hidden(out, user, "redact()")


@pytest.mark.parametrize("text,secret", [
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo",
     "eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo"),
    ("Authorization: Basic YWRtaW46aHVudGVyMg==", "YWRtaW46aHVudGVyMg=="),
    ("header 'Authorization: Digest abcdef0123456789'", "abcdef0123456789"),
    ("admin:hunter2-XYZ@10.0.0.5:554/stream", "hunter2-XYZ"),
    ("ffmpeg -i rtsp://a:b@h -headers 'Cookie: sessionid=Q1w2E3r4T5y6'", "Q1w2E3r4T5y6"),
    ('{"password": "pa\\"ss\\"word-123"}', 'ss\\"word-123'),
])
def test_headers_bare_userinfo_and_escaped_quotes(text, secret) -> None:
    _assert_hidden(redact(text), secret, "redact()")


@pytest.mark.parametrize("text", ["frames=10 fps=25.0 state=connected source=cam1", "rtsp://cam.local:554/h264",
                                  "/data/line3.mp4", "stream.mp4 frame 10: ANOMALY score 0.75",
                                  '{"source": "cam1", "frame": 3, "score": 1.5}'])
def test_text_without_secrets_is_unchanged(text) -> None:
    assert redact(text) == text


def test_redaction_keeps_a_json_line_valid() -> None:
    for text, _ in _cases(240):
        if text.startswith('{"'):
            json.loads(redact(text))
    line = json.dumps({"source": "rtsp://u:p@h/x?token=T0k3nT0k3n", "keyframe": 12, "session": {"id": [1, 2]},
                       "error": 'login failed: password="x y" user-id=admin'})
    assert json.loads(redact(line))["error"] == 'login failed: password="***" user-id=***'


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_logs_carry_no_secret_in_message_fields_or_traceback(fmt) -> None:
    stream = io.StringIO()
    handler = logs.configure(fmt, "INFO", stream=stream)
    cases = _cases(40)
    try:
        log = logging.getLogger("edge_ad.test.redaction")
        for text, _ in cases:
            log.warning("source %s failed", text, extra={"source": text})
            try:
                raise ConnectionError(f"SDK: {text}")
            except ConnectionError:
                log.exception("reconnecting %s", text)
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    for _, secret in cases:
        _assert_hidden(out, secret, f"the {fmt} log")


def test_stream_outputs_hide_an_sdk_exceptions_secrets(tmp_path, tiny_bundle, caplog) -> None:
    """A camera SDK raising with credentials in its message, and a source named by a URL with a token:
    the events file, the summary, the log and the Prometheus page must not show either secret."""
    from edge_ad.stream import EventsSink, IterableSource
    from edge_ad.stream.prometheus import MetricsServer

    secret_url, secret_sdk = "T0kenFromUrl123", "Hunt3rFromSdk456"

    def camera():
        yield np.zeros((64, 64, 3), np.uint8)
        raise RuntimeError(f"GigE open failed: rtsp://admin:{secret_sdk}@10.0.0.9/ch1 (user-pw={secret_sdk})")

    detector = edge_ad.load(tiny_bundle, backend="onnxruntime-cpu")
    source = IterableSource(camera(), f"https://cam.local/stream?access_token={secret_url}")
    stream = detector.stream([source], sinks=[EventsSink(tmp_path / "events.jsonl")])
    metrics = MetricsServer(stream, 0)
    try:
        with caplog.at_level(logging.INFO):
            for _ in stream:
                pass
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10).read().decode()
    finally:
        metrics.close()
    outputs = {"events": (tmp_path / "events.jsonl").read_text(), "summary": json.dumps(stream.summary()),
               "log": caplog.text, "metrics": page}
    assert "GigE open failed" in outputs["summary"]                 # the error is kept, redacted
    for where, text in outputs.items():
        for secret in (secret_url, secret_sdk):
            _assert_hidden(text, secret, where)


@pytest.mark.parametrize("source", ["/nonexistent/cam?access_token=T0kenT0ken99", "rtsp://admin:P@ss@w0rd99@/",
                                    "missing.mp4 user-pw=Sup3rS3cret99"])
def test_cli_error_line_hides_secrets(tiny_bundle, capsys, source) -> None:
    code = main(["stream", str(tiny_bundle), "--source", source, "--retry-budget", "0", "--duration", "2"])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text and code in (0, 1, 2, 3, 4), (code, text)
    for secret in ("T0kenT0ken99", "w0rd99", "Sup3rS3cret99"):
        _assert_hidden(text, secret, "the CLI's output")
