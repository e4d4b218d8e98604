"""An HTTP endpoint on the loopback for the webhook sink: it records each POST (headers and JSON body) and
answers with the status codes it is given in turn (then 200); and a port that accepts connections and
never answers, as an endpoint that hangs does."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """http://127.0.0.1:PORT/hook; `answers` are the statuses of the first requests, in order."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.requests: list[dict] = []
        self.answers = list(answers or [])
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = owner.answers.pop(0) if owner.answers else 200
                owner.requests.append({"path": self.path, "headers": dict(self.headers), "status": status,
                                       "body": json.loads(body)})
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook", user: str | None = None) -> str:
        return f"http://{user + '@' if user else ''}127.0.0.1:{self.port}{path}"

    @property
    def delivered(self) -> list[dict]:
        """The bodies of the requests answered with a 2xx."""
        return [r["body"] for r in self.requests if 200 <= r["status"] < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Silent:
    """A port that accepts TCP connections (the kernel's backlog) and never reads or answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.sock.close()
