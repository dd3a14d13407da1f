"""A threading HTTP(S) server on 127.0.0.1 for tests: keep-alive, quiet, counting the connections it accepts.

Tests that need a server answering in a way the sandbox does not (sizes around buffer boundaries, a body
cut short, a stall) subclass :class:`QuietHandler` and run it in a :class:`CountingServer`; with an
``ssl.SSLContext`` it speaks https (see :func:`airflow_provider_smart.testing.tls.make_tls`).
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: connection reuse is what these servers observe

    def log_message(self, format: str, *args: Any) -> None:
        pass


class CountingServer(ThreadingHTTPServer):
    """``connections``: TCP connections accepted so far; ``release``: set when the server stops, for
    handlers that hold a response open until the test is over."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.context = context
        self.connections = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        with self.lock:
            self.connections += 1
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True)
        return sock, address

    @property
    def base(self) -> str:
        scheme = "https" if self.context else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"

    @contextlib.contextmanager
    def running(self) -> Iterator[CountingServer]:
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.release.set()
            self.shutdown()
            self.server_close()


@contextlib.contextmanager
def static_files(root: str | Any) -> Iterator[str]:
    """``root`` served read-only over http on 127.0.0.1, as a public bucket serves its objects; yields the
    origin (``http://127.0.0.1:<port>``). For a JWK Set published to a local folder."""
    import functools
    from http.server import SimpleHTTPRequestHandler

    class Files(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Files, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
