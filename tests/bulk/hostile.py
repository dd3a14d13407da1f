"""A small, deliberately misbehaving Bulk Data server for tests (loopback only).

Unlike the sandbox it does exactly what a test scripts, byte for byte: a file body may be cut mid-line
with no Content-Length, served as HTML with 200, gzip-truncated; the manifest is produced by a callable
on every read (so it can reorder files, list one twice, carry a bogus ``transactionTime``...); DELETE
answers whatever status the test sets. No auth: clients talk to it with a plain session and
``requiresAccessToken: false``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Body:
    """One file answer. ``framing``: ``length`` (Content-Length), ``close`` (delimited by closing the
    connection, no Content-Length, not chunked) or ``chunked``."""

    data: bytes
    status: int = 200
    content_type: str = "application/fhir+ndjson"
    framing: str = "length"
    headers: dict[str, str] = field(default_factory=dict)
    pause_at: int | None = None  # send this many bytes, then wait for ``resume`` before the rest
    resume: threading.Event | None = None
    paused: threading.Event | None = None  # set once the first part is out


class HostileBulkServer:
    """``files[name]``: a :class:`Body`, a list of them (one per request, the last repeats) or a callable."""

    Body = Body

    def __init__(self) -> None:
        self.files: dict[str, Any] = {}
        self.manifest: Callable[[HostileBulkServer], dict[str, Any]] = lambda s: s.default_manifest()
        self.transaction_time: Any = "2024-05-01T00:00:00Z"
        self.delete_status = 202
        self.status_polls_before_ready = 0
        self.gone: set[str] = set()  # status ids that answer 404 (expired or deleted exports)
        self.current = "1"  # the status id whose manifest is being read
        self.requests: list[tuple[str, str]] = []
        self.kickoffs = 0
        self.manifest_reads = 0
        self._served: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- helpers for tests -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/fhir"

    @property
    def status_url(self) -> str:
        return f"{self.url}/status/{self.current}"

    def file_url(self, name: str) -> str:
        return f"{self.url}/files/{name}"

    def entry(self, name: str, rtype: str = "Patient", count: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"type": rtype, "url": self.file_url(name)}
        if count is not None:
            data["count"] = count
        return data

    def default_manifest(self, entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        manifest: dict[str, Any] = {
            "request": f"{self.url}/$export",
            "requiresAccessToken": False,
            "output": entries if entries is not None else [self.entry(n) for n in sorted(self.files)],
            "error": [],
        }
        if self.transaction_time is not None:
            manifest["transactionTime"] = self.transaction_time
        return manifest

    def served(self, name: str) -> int:
        return self._served.get(name, 0)

    def count(self, method: str, prefix: str = "") -> int:
        return sum(1 for m, p in self.requests if m == method and p.startswith(prefix))

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> HostileBulkServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- answers ----------------------------------------------------------------------------------
    def _file_body(self, name: str) -> Body | None:
        with self._lock:
            n = self._served.get(name, 0)
            self._served[name] = n + 1
        spec = self.files.get(name)
        if callable(spec):
            return spec(n)  # type: ignore[no-any-return]
        if isinstance(spec, list):
            return spec[min(n, len(spec) - 1)]  # type: ignore[no-any-return]
        return spec  # type: ignore[no-any-return]


def _handler(server: HostileBulkServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            server.requests.append(("GET", path))
            if path.endswith("/$export"):
                server.kickoffs += 1
                self._json(202, None, {"Content-Location": f"{server.url}/status/{server.kickoffs}"})
            elif path.startswith("/fhir/status/"):
                server.current = path.rsplit("/", 1)[-1]
                if server.current in server.gone:
                    self._json(404, {"resourceType": "OperationOutcome", "issue": []})
                    return
                if server.status_polls_before_ready > 0:
                    server.status_polls_before_ready -= 1
                    self._json(202, None, {"X-Progress": "busy", "Retry-After": "1"})
                    return
                server.manifest_reads += 1
                self._json(200, server.manifest(server))
            elif path.startswith("/fhir/files/"):
                body = server._file_body(path.rsplit("/", 1)[-1])
                if body is None:
                    self._json(404, {"resourceType": "OperationOutcome", "issue": []})
                    return
                self._send(body)
            else:
                self._json(404, None)

        def do_DELETE(self) -> None:
            server.requests.append(("DELETE", self.path))
            self._json(server.delete_status, None)

        def _send(self, body: Body) -> None:
            self.send_response(body.status)
            self.send_header("Content-Type", body.content_type)
            for k, v in body.headers.items():
                self.send_header(k, v)
            if body.framing == "length":
                self.send_header("Content-Length", str(len(body.data)))
                self.end_headers()
                if body.pause_at is not None and body.resume is not None:
                    self.wfile.write(body.data[: body.pause_at])
                    self.wfile.flush()
                    if body.paused is not None:
                        body.paused.set()
                    body.resume.wait(10)
                    self.wfile.write(body.data[body.pause_at :])
                else:
                    self.wfile.write(body.data)
            elif body.framing == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(f"{len(body.data):x}\r\n".encode() + body.data + b"\r\n0\r\n\r\n")
            else:  # delimited by closing the connection
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body.data)
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_WR)

    return Handler
