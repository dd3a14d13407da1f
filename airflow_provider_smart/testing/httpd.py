"""The HTTP/1.1 layer: a threading server with keep-alive, request bodies (Content-Length or chunked),
Content-Length on every answer, zero-copy file bodies and "cut the connection mid-file" faults.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from airflow_provider_smart import log_redaction
from airflow_provider_smart.testing.common import Request, Response, outcome_response

if TYPE_CHECKING:
    from airflow_provider_smart.testing.sandbox import SmartSandbox

log = logging.getLogger(__name__)
log.addFilter(log_redaction.RedactingFilter())  # the access log: pre-signed URLs and query tokens stay out

_MAX_BODY = 10 * 1024 * 1024


class SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sandbox: SmartSandbox) -> None:
        self.sandbox = sandbox
        self.connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conn_lock:
            if add:
                self.connections.add(conn)
            else:
                self.connections.discard(conn)

    def close_connections(self) -> None:
        with self._conn_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SmartSandbox/0.1"
    server: SandboxHTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = do_GET

    def _handle(self) -> None:
        sandbox = self.server.sandbox
        split = urlsplit(self.path)
        headers: dict[str, str] = {}
        for name in self.headers:
            key = name.lower()
            if key not in headers:
                headers[key] = ", ".join(self.headers.get_all(name) or [])
        request = Request(self.command, unquote(split.path), split.query, headers)
        try:
            request.body = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            response = outcome_response(400 if "chunk" in str(exc) else 413, "invalid", str(exc))
            route = "other"
        else:
            try:
                route, response = sandbox._dispatch(request)
            except Exception:
                log.exception("sandbox handler failed for %s %s", self.command, self.path)
                route, response = "other", outcome_response(500, "exception", "internal sandbox error")
        if response.data_route:
            fault = sandbox._faults.take(route, request.path, cut=True)
            if fault is not None:
                if fault.delay:
                    time.sleep(fault.delay)
                response.cut_after = fault.after_bytes
        sandbox._log_request(request, route, response.status)
        try:
            self._send(response)
        except OSError:  # the client went away mid-answer
            self.close_connection = True

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024).split(b";")[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    raise ValueError("malformed chunked request body") from None
                if size == 0:
                    while self.rfile.readline(1024).strip():
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > _MAX_BODY:
                    raise ValueError("request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        if not length.isdigit():
            raise ValueError("malformed chunked/Content-Length framing")
        if int(length) > _MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(int(length))

    def _send(self, response: Response) -> None:
        handle = None
        if response.file is not None:
            try:  # an open handle keeps the bytes readable even if a DELETE removes the file meanwhile
                handle = response.file.open("rb")
            except OSError:
                response = outcome_response(404, "not-found", "the export file no longer exists")
        try:
            size = os.fstat(handle.fileno()).st_size if handle is not None else len(response.body)
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(size))
            if response.close:
                self.send_header("Connection", "close")
            if response.close or response.cut_after is not None:
                self.close_connection = True  # a cut keeps the normal headers, then hangs up
            self.end_headers()
            if self.command == "HEAD":
                return
            limit = size if response.cut_after is None else min(size, response.cut_after)
            if handle is None:
                self.wfile.write(response.body[:limit])
            elif limit:
                self.connection.sendfile(handle, 0, limit)
        finally:
            if handle is not None:
                handle.close()
