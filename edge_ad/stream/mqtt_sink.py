"""The MQTT sink: one message per anomalous frame, published to the line's broker (paho-mqtt, the `mqtt` extra).

The queue, the worker thread, the back-off and the counts are `QueuedSink`'s (outbox.py); the message
format is in docs/outputs.md. Here: the broker URL and topic, and one publish done and confirmed.
"""

from __future__ import annotations

import os
import socket
import string
import time
from urllib.parse import unquote, urlsplit

from edge_ad.logs import redact_source_url
from edge_ad.stream.capture import Reconnect
from edge_ad.stream.outbox import QueuedSink
from edge_ad.stream.sinks import safe_name

DEFAULT_TOPIC = "edge_ad/{source}/anomaly"
PORTS = {"mqtt": 1883, "mqtts": 8883}
LOOP_STEP_S = 0.05              # the network loop's wait while a connection or an acknowledgement is awaited


class MqttSink(QueuedSink):
    """Publishes each anomalous frame's message to `topic` on the broker at `url`:
    `mqtt://[user:password@]host[:port]` (port 1883), or `mqtts://` for TLS with the system's CAs (port
    8883; written against paho's API, not covered by the tests). `{source}` in the topic becomes the
    source's name made safe for one topic level (`safe_name`: `cam 1` -> `cam_1-<hash>`).

    QoS 1 by default: the broker acknowledges each message, so each is delivered at least once (a
    duplicate is possible after a lost acknowledgement; `seq` tells). The worker thread owns the paho
    client and drives its network loop (no paho thread); after any failure the client is dropped and a
    new one connects, so no message waits in paho's own, unbounded, queue: only in this sink's bounded one."""

    kind = "mqtt"

    def __init__(self, url: str, *, topic: str = DEFAULT_TOPIC, qos: int = 1, retain: bool = False,
                 client_id: str | None = None, keepalive: int = 30, queue_size: int = 1000,
                 retry: Reconnect | None = None, flush_timeout: float = 5.0) -> None:
        self._mqtt = _paho()
        self.host, self.port, self.tls, self._auth = parse_mqtt_url(url)
        self.topic = check_topic(topic)
        if qos not in (0, 1, 2) or isinstance(qos, bool):
            raise ValueError(f"MQTT qos must be 0, 1 or 2, got {qos!r}")
        if isinstance(keepalive, bool) or not isinstance(keepalive, int) or not 5 <= keepalive <= 65535:
            raise ValueError(f"MQTT keepalive must be 5..65535 seconds, got {keepalive!r}")
        self.qos, self.retain, self.keepalive = qos, bool(retain), keepalive
        self.client_id = client_id or f"edge_ad-{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self._client = None
        self._topics: dict[str, str] = {}
        super().__init__(redact_source_url(url), queue_size=queue_size, retry=retry, flush_timeout=flush_timeout)

    def topic_for(self, source: str) -> str:
        """The topic of `source`'s messages."""
        if source not in self._topics:
            self._topics[source] = self.topic.format(source=safe_name(source))
        return self._topics[source]

    def _send(self, message: dict, payload: bytes) -> None:
        mqtt = self._mqtt
        client = self._client or self._connect()
        info = client.publish(self.topic_for(message["source"]), payload, qos=self.qos, retain=self.retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish failed: {mqtt.error_string(info.rc)}")
        deadline = time.monotonic() + self.retry.timeout
        while not info.is_published():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the broker did not acknowledge the message within {self.retry.timeout:g} s")
            self._loop(client)

    def _connect(self):
        """A new client, connected (CONNACK received) within the time-out; raises why not."""
        mqtt = self._mqtt
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                             protocol=mqtt.MQTTv311)
        client.connect_timeout = self.retry.timeout
        if self._auth is not None:
            client.username_pw_set(*self._auth)
        if self.tls:
            client.tls_set()
        refused: list = []
        client.on_connect = lambda _c, _u, _flags, code, _props: refused.append(code) if code.is_failure else None
        client.connect(self.host, self.port, self.keepalive)           # OSError when nothing listens
        deadline = time.monotonic() + self.retry.timeout
        while not client.is_connected():
            if refused:
                raise ConnectionError(f"the broker refused the connection: {refused[0]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer from the broker within {self.retry.timeout:g} s")
            self._loop(client)
        self._client = client
        return client

    def _loop(self, client) -> None:
        code = client.loop(LOOP_STEP_S)
        if code != self._mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"connection lost: {self._mqtt.error_string(code)}")

    def _idle(self) -> None:
        """Keep the connection alive (paho sends the pings from its loop); a lost one is dropped."""
        if self._client is not None:
            try:
                self._loop(self._client)
            except ConnectionError:
                self.connected = False
                self._disconnect()

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if client.is_connected():
                client.disconnect()
                client.loop(LOOP_STEP_S)                     # writes the DISCONNECT packet
        except Exception:  # noqa: BLE001 - the connection is being dropped anyway
            pass
        sock = client.socket()
        if sock is not None:
            sock.close()                                 # paho's own socket pair goes with the client


def parse_mqtt_url(url: str) -> tuple[str, int, bool, tuple[str, str | None] | None]:
    """(host, port, tls, (user, password) or None) of `mqtt://[user:password@]host[:port]` (or mqtts://)."""
    shown = redact_source_url(str(url))
    parts = urlsplit(str(url))
    scheme = parts.scheme.lower()
    if scheme not in PORTS or not parts.hostname:
        raise ValueError(f"MQTT broker {shown!r}: give mqtt://HOST[:PORT] (or mqtts:// for TLS)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"MQTT broker {shown!r}: the URL names the broker only; give the topic apart "
                         "(topic=... / --mqtt-topic)")
    try:
        port = parts.port or PORTS[scheme]
    except ValueError:
        raise ValueError(f"MQTT broker {shown!r}: the port must be 1..65535") from None
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password) if parts.password is not None else None)
    return parts.hostname, port, scheme == "mqtts", auth


def check_topic(topic: str) -> str:
    """`topic` when it is a topic one can publish to, with `{source}` as its only placeholder."""
    if not isinstance(topic, str) or not topic or "\0" in topic:
        raise ValueError(f"MQTT topic must be a non-empty string, got {topic!r}")
    if "+" in topic or "#" in topic:
        raise ValueError(f"MQTT topic {topic!r}: + and # are subscription wildcards; a message is published to "
                         "one topic, e.g. edge_ad/{source}/anomaly")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(topic) if name is not None}
    except ValueError as err:
        raise ValueError(f"MQTT topic {topic!r}: {err} (write {{{{ and }}}} for literal braces)") from None
    if fields - {"source"}:
        raise ValueError(f"MQTT topic {topic!r}: the only placeholder is {{source}}, got "
                         f"{', '.join(sorted(f'{{{f}}}' for f in fields - {'source'}))}")
    if len(topic.format(source="x" * 100).encode()) > 65535:
        raise ValueError("MQTT topic is too long (at most 65535 bytes)")
    return topic


def _paho():
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise RuntimeError("the MQTT sink needs paho-mqtt: pip install 'edge_ad[mqtt]' (or pip install "
                           "paho-mqtt)") from None
    return mqtt
