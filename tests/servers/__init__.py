"""Real servers on the loopback for the tests (an RTSP camera, an MQTT broker, a webhook receiver)
and the rule for a server this machine cannot run: skipped with the reason, except in CI (CI is set),
where `.ci/run` installs what they need, so a missing one fails instead of passing unseen."""

from __future__ import annotations

import os
import socket

import pytest


def unavailable(reason: str) -> None:
    """Skip the calling test because `reason`; in CI, fail it (a skipped server test there hides a gap)."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} (CI must run this test: .ci/run installs the Debian packages it needs)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the server binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port` within `timeout` seconds."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
