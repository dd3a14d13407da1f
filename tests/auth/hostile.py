"""Small purpose-built HTTP(S) servers on 127.0.0.1 that misbehave on cue (redirect, drip, lie...).

A route is a function ``(handler) -> None`` that writes the whole answer; every request is recorded
(method, path, headers, body) so a test can prove what a server did, or did not, receive.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Route = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.server.owner.requests.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": self.body}
        )
        path = self.path.split("?", 1)[0]
        route = self.server.owner.routes.get(path) or self.server.owner.routes.get("*")
        if route is None:
            self.send_json(404, {"error": "not_found"})
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError):
            route(self)

    do_GET = do_POST = do_DELETE = _handle

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def redirect(self, status: int, location: str) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def drip(self, data: bytes, interval: float, *, stop: threading.Event, headers_too: bool = False) -> None:
        """Send ``data`` one byte per ``interval`` (the status line and headers too when ``headers_too``)."""
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
        if not headers_too:
            self.wfile.write(head)
            self.wfile.flush()
            payload = data
        else:
            payload = head + data
        for i in range(len(payload)):
            if stop.is_set():
                return
            self.wfile.write(payload[i : i + 1])
            self.wfile.flush()
            time.sleep(interval)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: HostileServer


class HostileServer:
    """``with HostileServer({"/token": route}) as srv: srv.url``; pass ``tls=(cert, key)`` for https."""

    def __init__(self, routes: dict[str, Route] | None = None, *, tls: tuple[Path, Path] | None = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.requests: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.owner = self
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(chain, key) for https://127.0.0.1: the chain file is both the server's chain and the clients' CA bundle."""
    from airflow_provider_smart.testing.tls import make_tls

    files = make_tls(directory)
    return files.chain, files.key


def tokens_from_threads(auth: Any, threads: int = 8) -> list[str]:
    """The access tokens ``threads`` threads get from ``auth`` when they all ask at the same instant."""
    barrier = threading.Barrier(threads)
    tokens: list[str] = []

    def worker() -> None:
        barrier.wait()
        tokens.append(auth.get_token().access_token)

    started = [threading.Thread(target=worker) for _ in range(threads)]
    for t in started:
        t.start()
    for t in started:
        t.join()
    return tokens
