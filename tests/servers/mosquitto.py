"""A real MQTT broker for the tests: mosquitto on a free loopback port with its own configuration file,
stopped and started again on the same port as a broker that goes down does; and a subscriber that
collects what reaches it (it reconnects and subscribes again by itself)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

from servers import free_port, wait_port

CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
"""


def mosquitto_binary() -> tuple[str | None, str]:
    """(the mosquitto executable, "") or (None, why there is none)."""
    found = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                               if Path(p).is_file()), None)
    return (found, "") if found else (None, "the MQTT broker mosquitto is not installed (Debian: mosquitto)")


class Broker:
    """mosquitto listening on 127.0.0.1:`port` (a free one by default); `stop()` kills it, `start()`
    brings it back on the same port."""

    def __init__(self, binary: str, folder: Path, port: int | None = None) -> None:
        self.binary, self.port = binary, port or free_port()
        self.config = folder / f"mosquitto-{self.port}.conf"
        self.config.write_text(CONFIG.format(port=self.port))
        self.log = folder / f"mosquitto-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Broker":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=log)
        if not wait_port(self.port, 15.0):
            self.stop()
            raise RuntimeError(f"mosquitto did not start on port {self.port}; see {self.log}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Subscriber:
    """A paho client subscribed to `topic` on the broker at 127.0.0.1:`port`; `messages` holds
    (topic, decoded JSON) in arrival order. It reconnects (and subscribes again) when the broker returns."""

    def __init__(self, port: int, topic: str = "#") -> None:
        import paho.mqtt.client as mqtt

        self.topic = topic
        self.messages: list[tuple[str, dict]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-subscriber-{port}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, json.loads(msg.payload)))
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("the test subscriber could not subscribe")

    def _on_connect(self, client, _userdata, _flags, code, _props) -> None:
        if not code.is_failure:
            client.subscribe(self.topic, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
