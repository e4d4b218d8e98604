"""The station file: one TOML file describing a station's named cameras and where their results go.

    edge-ad stream --config station.toml

Read by `load_station_file` into a checked `StationConfig`; every mistake is a `StationFileError`
whose message starts with the file and the line of the key at fault (TOML syntax errors: the line
and column tomllib gives). Relative paths (bundles, video files, image folders, outputs) are taken
from the station file's own folder. Credentials come from environment variables the file names
(`password_env = "CAM1_PASS"`), are put into the URL the source opens, and appear nowhere else:
sources are named by the camera's `name`, and every URL shown is redacted. The format is in
docs/cameras.md ("A station file").
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from edge_ad.logs import escape_controls, redact_source_url
from edge_ad.regions import DEFAULT_OVERLAP, check_overlap, parse_roi, parse_tiles
from edge_ad.stream.camera_settings import CameraSettings
from edge_ad.stream.capture import Reconnect, rtsp_transport
from edge_ad.stream.station_lines import KeyLines

__all__ = ["CameraConfig", "OutputsConfig", "StationConfig", "StationFileError", "load_station_file"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_NUMBER = (int, float)
SETTING_KEYS = ("width", "height", "fps", "exposure", "bit_depth", "decode", "codec")
CAMERA_KEYS = {"name": str, "source": (str, int), "user": str, "user_env": str, "password_env": str, "transport": str,
               "bundle": str, "threshold": _NUMBER, "sensitivity": _NUMBER, "roi": (str, list), "tiles": (str, list),
               "overlap": _NUMBER, "video": str, "width": int, "height": int, "fps": _NUMBER,
               "exposure": (int, float, str), "bit_depth": int, "decode": str, "codec": str}
STATION_KEYS = {"name": str, "backend": str, "batch": int, "duration": _NUMBER, "max_frames": int,
                "idle_timeout": _NUMBER, "realtime": bool, "loop": bool, "max_pixels": int, "retry": dict}
RETRY_KEYS = {"initial": _NUMBER, "max": _NUMBER, "budget": int, "timeout": _NUMBER}
OUTPUT_KEYS = {"events": str, "events_frames": str, "fsync": bool, "snapshots": str, "snapshot_budget_mb": _NUMBER,
               "mqtt": str, "mqtt_user": str, "mqtt_user_env": str, "mqtt_password_env": str, "mqtt_topic": str,
               "webhook": str, "webhook_token_env": str, "metrics_port": int, "metrics_host": str,
               "video_fps": _NUMBER}
TOP_KEYS = ("station", "outputs", "camera")


class StationFileError(ValueError):
    """A station file that cannot be used; the message names the file and the line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class CameraConfig:
    """One camera: `spec` is what the source opens (credentials inside: never show it), `shown` the
    same redacted. `line` is the line of its [[camera]] header, `lines` each key's line."""

    name: str
    spec: str | int = field(repr=False)
    shown: str
    bundle: Path
    threshold: float | None = None
    sensitivity: float | None = None
    roi: tuple[int, int, int, int] | None = None
    tiles: tuple[int, int] | None = None
    overlap: float = DEFAULT_OVERLAP
    settings: CameraSettings = field(default_factory=CameraSettings)
    transport: str | None = None
    video: Path | None = None
    line: int | None = None
    lines: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class OutputsConfig:
    """The station's outputs, for every camera (docs/outputs.md for the MQTT and webhook messages)."""

    events: Path | None = None
    events_frames: str = "anomalous"
    fsync: bool = False
    snapshots: Path | None = None
    snapshot_budget_mb: float = 500.0
    mqtt: str | None = field(default=None, repr=False)     # with the credentials inside: never show it
    mqtt_topic: str | None = None
    webhook: str | None = field(default=None, repr=False)  # may hold user:password too
    webhook_headers: dict = field(default_factory=dict, repr=False)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    video_fps: float = 15.0
    lines: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class StationConfig:
    path: Path
    name: str
    cameras: list[CameraConfig]
    outputs: OutputsConfig
    backend: str = "auto"
    batch: int | None = None
    duration: float | None = None
    max_frames: int | None = None
    idle_timeout: float | None = None
    realtime: bool = False
    loop: bool = False
    max_pixels: int | None = None
    retry: Reconnect = field(default_factory=Reconnect)
    lines: dict = field(default_factory=dict, compare=False, repr=False)

    def where(self, line: int | None) -> str:
        """"station.toml, line 12: " (or "station.toml: " without a line), to start a message."""
        return f"{self.path}, line {line}: " if line else f"{self.path}: "


def load_station_file(path: str | Path, environ: dict | None = None) -> StationConfig:
    """Read and check the station file at `path`; StationFileError naming the line of any mistake.
    `environ` (default os.environ) holds the variables the file names for credentials."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise StationFileError(f"station file not found: {path}") from None
    except IsADirectoryError:
        raise StationFileError(f"station file {path} is a folder; give the .toml file") from None
    except UnicodeDecodeError as err:
        raise StationFileError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        match = re.search(r"at line (\d+)", str(err))
        line = int(match.group(1)) if match else None
        raise StationFileError(f"{path}{f', line {line}' if line else ''}: not valid TOML: {err}", line) from None
    return _Reader(path, text, os.environ if environ is None else environ).station(data)


class _Reader:
    """Checks the parsed file, table by table, raising StationFileError at the line of the key at fault."""

    def __init__(self, path: Path, text: str, environ) -> None:
        self.path, self.folder, self.environ = path, path.resolve().parent, environ
        self.lines = KeyLines(text)

    def fail(self, message: str, table: str, index: int | None = None, key: str | None = None):
        line = self.lines.line(table, index, key)
        where = f"{self.path}, line {line}" if line else str(self.path)
        raise StationFileError(f"{where}: {escape_controls(message)}", line)

    def station(self, data: dict) -> StationConfig:
        for key in data:
            if key not in TOP_KEYS:
                self.fail(f"unknown table or key {key!r} at the top; the file has [station], [outputs] and "
                          "[[camera]] tables", "", None, key)
        if not isinstance(data.get("camera"), list) or not data["camera"]:
            self.fail("no camera: add at least one [[camera]] table (name, source, bundle)", "")
        station = self.table(data, "station", STATION_KEYS)
        outputs = self.outputs(self.table(data, "outputs", OUTPUT_KEYS))
        cameras = [self.camera(entry, k) for k, entry in enumerate(data["camera"])]
        self.distinct(cameras)
        options = {key: station[key] for key in ("batch", "max_frames", "max_pixels") if key in station}
        for key in ("batch", "max_frames", "max_pixels"):
            if key in options and options[key] < 1:
                self.fail(f"{key} must be at least 1, got {options[key]}", "station", None, key)
        for key in ("duration", "idle_timeout"):
            if key in station:
                options[key] = self.positive(station[key], "station", None, key)
        name = station.get("name", self.path.stem)
        if not isinstance(name, str) or not name.strip() or not name.isprintable():
            self.fail("name must be a one-line, non-empty name", "station", None, "name")
        return StationConfig(path=self.path, name=name, cameras=cameras, outputs=outputs,
                             backend=station.get("backend", "auto"), realtime=station.get("realtime", False),
                             loop=station.get("loop", False), retry=self.retry(station.get("retry", {})),
                             lines={"station": self.lines.line("station", None, None)}, **options)

    def table(self, data: dict, name: str, known: dict, index: int | None = None, where: str | None = None) -> dict:
        """data[name] (a table; {} when absent; `data` itself for the `index`-th of an array of tables) with
        its keys and their types checked. `where`: the table's full name for the line (default `name`)."""
        where = where or name
        table = data.get(name, {}) if index is None else data
        if not isinstance(table, dict):
            self.fail(f"{name} must be a table ([{where}])", where.rpartition(".")[0], None, name)
        for key, value in table.items():
            if key not in known:
                self.fail(f"unknown key {key!r} in [{where}]{_nth(index)}; the keys are {', '.join(known)}",
                          where, index, key)
            kinds = known[key] if isinstance(known[key], tuple) else (known[key],)
            if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
                self.fail(f"{key} must be {_kind_names(kinds)}, got {_toml_kind(value)}", where, index, key)
        return table

    def positive(self, value, table: str, index: int | None, key: str) -> float:
        if not math.isfinite(float(value)) or value <= 0:
            self.fail(f"{key} must be a number above 0, got {value}", table, index, key)
        return float(value)

    def retry(self, values: dict) -> Reconnect:
        self.table({"retry": values}, "retry", RETRY_KEYS, where="station.retry")
        try:
            return Reconnect(initial=float(values.get("initial", 0.5)), cap=float(values.get("max", 30.0)),
                             budget=values.get("budget"), timeout=float(values.get("timeout", 5.0)))
        except ValueError as err:
            self.fail(str(err), "station.retry", None, next(iter(values), None))

    def outputs(self, values: dict) -> OutputsConfig:
        out: dict = {}
        for key in ("events", "snapshots"):
            if key in values:
                out[key] = self.file(values[key], "outputs", None, key)
        if values.get("events_frames", "anomalous") not in ("anomalous", "all"):
            self.fail("events_frames must be 'anomalous' or 'all'", "outputs", None, "events_frames")
        for key in ("events_frames", "fsync", "mqtt_topic", "metrics_host"):
            if key in values:
                out[key] = values[key]
        for key in ("snapshot_budget_mb", "video_fps"):
            if key in values:
                out[key] = self.positive(values[key], "outputs", None, key)
        if "metrics_port" in values and not 1 <= values["metrics_port"] <= 65535:
            self.fail("metrics_port must be 1..65535", "outputs", None, "metrics_port")
        out["metrics_port"] = values.get("metrics_port")
        if "mqtt" in values:
            out["mqtt"] = self.mqtt(values)
        elif any(k in values for k in ("mqtt_topic", "mqtt_user", "mqtt_user_env", "mqtt_password_env")):
            key = next(k for k in ("mqtt_topic", "mqtt_user", "mqtt_user_env", "mqtt_password_env") if k in values)
            self.fail(f"{key} needs mqtt = \"mqtt://HOST\" in [outputs]", "outputs", None, key)
        if "webhook" in values:
            out.update(self.webhook(values))
        elif "webhook_token_env" in values:
            self.fail("webhook_token_env needs webhook = \"https://...\" in [outputs]", "outputs", None,
                      "webhook_token_env")
        self.check_outputs(out)
        return OutputsConfig(lines={k: self.lines.line("outputs", None, k) for k in values}, **out)

    def check_outputs(self, out: dict) -> None:
        """The MQTT URL and topic, and the webhook URL, checked now (they are opened at the start)."""
        from edge_ad.stream.mqtt_sink import check_topic, parse_mqtt_url
        from edge_ad.stream.webhook_sink import parse_webhook_url

        for key, check in (("mqtt", parse_mqtt_url), ("mqtt_topic", check_topic), ("webhook", parse_webhook_url)):
            if out.get(key) is not None:
                try:
                    check(out[key])
                except ValueError as err:
                    self.fail(str(err), "outputs", None, key)

    def mqtt(self, values: dict) -> str:
        url = values["mqtt"]
        user = self.secret(values, "mqtt_user", "mqtt_user_env", "outputs", None)
        password = self.env(values, "mqtt_password_env", "outputs", None)
        return self.with_credentials(url, user, password, "outputs", None, "mqtt")

    def webhook(self, values: dict) -> dict:
        headers = {}
        if "webhook_token_env" in values:
            headers["Authorization"] = f"Bearer {self.env(values, 'webhook_token_env', 'outputs', None)}"
        return {"webhook": values["webhook"], "webhook_headers": headers}

    def camera(self, entry, index: int) -> CameraConfig:
        if not isinstance(entry, dict):
            self.fail("each camera must be a [[camera]] table", "camera", index)
        self.table(entry, "camera", CAMERA_KEYS, index)
        for key in ("name", "source", "bundle"):
            if key not in entry:
                self.fail(f"camera{_nth(index)} has no {key}", "camera", index)
        name = entry["name"]
        if not _NAME.fullmatch(name):
            self.fail(f"camera name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (it names the camera in "
                      "events, MQTT topics and metrics)", "camera", index, "name")
        spec, shown, transport = self.source(entry, index)
        settings = self.settings(entry, index)
        view = self.view(entry, index)
        operating = self.operating_point(entry, index)
        bundle = self.file(entry["bundle"], "camera", index, "bundle")
        if not bundle.is_dir():
            self.fail(f"camera {name!r}: bundle {bundle} is not a folder (a bundle written by edge-ad export)",
                      "camera", index, "bundle")
        video = self.file(entry["video"], "camera", index, "video") if "video" in entry else None
        return CameraConfig(name=name, spec=spec, shown=shown, bundle=bundle, settings=settings, transport=transport,
                            video=video, line=self.lines.line("camera", index, None),
                            lines={k: self.lines.line("camera", index, k) for k in entry}, **view, **operating)

    def source(self, entry: dict, index: int) -> tuple[str | int, str, str | None]:
        """(what to open, what to show, the RTSP transport) of a camera's source."""
        source = entry["source"]
        if isinstance(source, int) or source.strip().isdigit():
            index_value = int(source)
            if not 0 <= index_value <= 255:
                self.fail(f"camera index {index_value} is out of range: 0 to 255 (/dev/videoN)", "camera", index,
                          "source")
            for key in ("user", "user_env", "password_env", "transport"):
                if key in entry:
                    self.fail(f"{key} goes with a URL source, not a camera index", "camera", index, key)
            return index_value, f"camera {index_value}", None
        if not source.strip() or not source.isprintable():
            self.fail("source must be a camera index, a URL or a path on one line", "camera", index, "source")
        if not _URL.match(source):
            for key in ("user", "user_env", "password_env", "transport"):
                if key in entry:
                    self.fail(f"{key} goes with a URL source (rtsp://...), not a file", "camera", index, key)
            path = self.file(source, "camera", index, "source")
            if not path.exists():
                self.fail(f"source {path} does not exist (a video file, an image folder, a URL or a camera index)",
                          "camera", index, "source")
            return str(path), path.name, None
        user = self.secret(entry, "user", "user_env", "camera", index)
        password = self.env(entry, "password_env", "camera", index)
        url = self.with_credentials(source, user, password, "camera", index, "source")
        transport = entry.get("transport")
        try:
            rtsp_transport(url, transport)
        except ValueError as err:
            self.fail(str(err), "camera", index, "transport" if transport else "source")
        return url, redact_source_url(escape_controls(source)), transport

    def secret(self, values: dict, key: str, env_key: str, table: str, index: int | None) -> str | None:
        """A user name given in the file (`key`) or by an environment variable (`env_key`)."""
        if key in values and env_key in values:
            self.fail(f"give {key} or {env_key}, not both", table, index, env_key)
        if env_key in values:
            return self.env(values, env_key, table, index)
        return values.get(key)

    def env(self, values: dict, key: str, table: str, index: int | None) -> str | None:
        """The value of the environment variable named by values[key] (None when the key is absent)."""
        if key not in values:
            return None
        name = values[key]
        if not _ENV.fullmatch(name):
            self.fail(f"{key} = {name!r} is not an environment variable name", table, index, key)
        value = self.environ.get(name)
        if not value:
            self.fail(f"{key} names {name}, which is {'empty' if value == '' else 'not set'} in the environment; "
                      f"set it before starting (export {name}=...)", table, index, key)
        return value

    def with_credentials(self, url: str, user: str | None, password: str | None, table: str, index: int | None,
                         key: str) -> str:
        """`url` with user:password put in (percent-encoded); the URL's own userinfo is kept without them."""
        if password is not None and user is None:
            self.fail("a password needs a user (user = \"...\" or user_env)", table, index, key)
        parts = urlsplit(url)
        if user is None:
            return url
        if parts.username is not None:
            self.fail("the URL has a user already; give the user in the URL or in user/user_env, not both",
                      table, index, key)
        userinfo = quote(user, safe="!$&'()*+,;=") + (":" + quote(password, safe="!$&'()*+,;=") if password else "")
        return urlunsplit((parts.scheme, f"{userinfo}@{parts.netloc}", parts.path, parts.query, parts.fragment))

    def settings(self, entry: dict, index: int) -> CameraSettings:
        values = {key: entry[key] for key in SETTING_KEYS if key in entry}
        for key, value in values.items():
            try:
                CameraSettings.from_mapping({key: value})
            except ValueError as err:
                self.fail(str(err), "camera", index, key)
        return CameraSettings.from_mapping(values)

    def view(self, entry: dict, index: int) -> dict:
        view: dict = {}
        try:
            if "roi" in entry:
                view["roi"] = parse_roi(entry["roi"])
        except ValueError as err:
            self.fail(f"roi: {err}", "camera", index, "roi")
        try:
            if "tiles" in entry:
                tiles = parse_tiles(entry["tiles"] if isinstance(entry["tiles"], str) else tuple(entry["tiles"]))
                view["tiles"] = None if tiles == (1, 1) else tiles
        except (ValueError, TypeError) as err:
            self.fail(f"tiles: {err}", "camera", index, "tiles")
        try:
            if "overlap" in entry:
                view["overlap"] = check_overlap(float(entry["overlap"]))
        except ValueError as err:
            self.fail(f"overlap: {err}", "camera", index, "overlap")
        return view

    def operating_point(self, entry: dict, index: int) -> dict:
        if "threshold" in entry and "sensitivity" in entry:
            self.fail("give threshold or sensitivity, not both", "camera", index, "sensitivity")
        if "threshold" in entry and not math.isfinite(float(entry["threshold"])):
            self.fail("threshold must be a finite number", "camera", index, "threshold")
        if "sensitivity" in entry and not 0.0 <= float(entry["sensitivity"]) <= 1.0:
            self.fail("sensitivity must be from 0 to 1 (0.5: the bundle's calibrated threshold)", "camera", index,
                      "sensitivity")
        return {key: float(entry[key]) for key in ("threshold", "sensitivity") if key in entry}

    def file(self, text: str, table: str, index: int | None, key: str) -> Path:
        """A path from the file: `~` expanded, relative to the station file's folder."""
        if not text.strip() or not text.isprintable():
            self.fail(f"{key} must be a path on one line", table, index, key)
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.folder / path

    def distinct(self, cameras: list[CameraConfig]) -> None:
        """Camera names and video files used once each."""
        seen: dict[str, CameraConfig] = {}
        videos: dict[Path, CameraConfig] = {}
        for k, camera in enumerate(cameras):
            if camera.name in seen:
                first = seen[camera.name].lines["name"]
                self.fail(f"camera name {camera.name!r} is used twice (also at line {first}); give each camera its "
                          "own name", "camera", k, "name")
            seen[camera.name] = camera
            if camera.video is not None:
                if camera.video in videos:
                    self.fail(f"video {camera.video} is also camera {videos[camera.video].name!r}'s; give each camera "
                              "its own file", "camera", k, "video")
                videos[camera.video] = camera


def _nth(index: int | None) -> str:
    return f" #{index + 1}" if index is not None else ""


def _kind_names(kinds: tuple) -> str:
    if int in kinds and float in kinds:
        kinds = tuple(k for k in kinds if k is not int)
    names = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", list: "an array",
             dict: "a table"}
    return " or ".join(dict.fromkeys(names[k] for k in kinds))


def _toml_kind(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return {str: "a string", int: "a whole number", float: "a number", list: "an array", dict: "a table"}.get(
        type(value), type(value).__name__)
