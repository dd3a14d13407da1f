"""Finished downloads return their connection to the pool: N files over C threads open about C connections.

Real HTTP(S) on 127.0.0.1: a small keep-alive HTTP/1.1 server counts the TCP connections it accepts.
Over https that is also one TLS handshake per connection, so reuse matters even more there.
"""

from __future__ import annotations

import gzip
import ssl
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_smart.bulk import (
    BulkDownloadError,
    BulkExportClient,
    DownloadOptions,
    ExportManifest,
    RetryPolicy,
    stream,
)
from airflow_provider_smart.bulk.stream import GZIP_MAX_OUT, CorruptBody, IncompleteBody, open_body
from airflow_provider_smart.testing.local_http import CountingServer, QuietHandler

LINE = b'{"resourceType":"Observation","id":"%d","status":"final","code":{"text":"reuse test"}}\n'
FILES = 12
LINES = 3000  # ~270 kB per file: more than one read buffer


def ndjson(index: int) -> bytes:
    return b"".join(LINE % (index * LINES + i) for i in range(LINES))


class Handler(QuietHandler):
    server: ReuseServer

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        index = int(name.split(".")[1])
        with self.server.lock:
            self.server.in_flight += 1
            self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
            self.server.requested.add(index)
            self.server.order.append(index)
        try:
            self._send(index)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    def _send(self, index: int) -> None:
        body = ndjson(index)
        mode = self.server.mode
        if mode == "busy" and index == 0 and self.server.short_left > 0:
            with self.server.lock:
                self.server.short_left -= 1
            self.send_response(503)
            self.send_header("Retry-After", "2")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+ndjson")
        if mode == "gzip":
            body = gzip.compress(body, compresslevel=1)
            self.send_header("Content-Encoding", "gzip")
        if mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            step = 50_000
            for start in range(0, len(body), step):
                piece = body[start : start + step]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if mode == "stall":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:100_000])
            self.wfile.flush()
            self.server.release.wait(10)  # then nothing until the test is over
            return
        if mode == "short" and self.server.short_left > 0:
            with self.server.lock:
                self.server.short_left -= 1
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True  # the body ends early: the client must not reuse this socket
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ReuseServer(CountingServer):
    def __init__(self, mode: str, context: ssl.SSLContext | None = None) -> None:
        super().__init__(Handler, context)
        self.mode = mode
        self.short_left = 0
        self.in_flight = self.most_in_flight = 0
        self.requested: set[int] = set()
        self.order: list[int] = []


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    from airflow_provider_smart.testing.tls import make_tls

    files = make_tls(tmp_path_factory.mktemp("tls"))
    return files.server_context(), files.ca


def serve(mode: str, context: ssl.SSLContext | None = None) -> Iterator[ReuseServer]:
    server = ReuseServer(mode, context)
    with server.running():
        yield server


def manifest(server: CountingServer, files: int = FILES) -> ExportManifest:
    output = [
        # zero-padded: files are numbered in URL order (see plan_files), which is then manifest order too
        {"type": "Observation", "url": f"{server.base}/files/Observation.{i:03d}.ndjson", "count": LINES}
        for i in range(files)
    ]
    data = {"transactionTime": "2024-01-01T00:00:00Z", "request": "x", "requiresAccessToken": False}
    return ExportManifest.from_json({**data, "output": output, "error": []}, server.base)


def client_for(
    server: CountingServer, ca: Path | None = None, *, attempts: int = 5, timeout: float = 60
) -> BulkExportClient:
    session = requests.Session()
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override session.verify when trust_env is on
    session.trust_env = False
    if ca is not None:
        session.verify = str(ca)
    retry = RetryPolicy(attempts=attempts, backoff_base=0.01, backoff_max=0.01)
    return BulkExportClient(session, server.base + "/fhir", retry=retry, timeout=timeout)


def check_files(destination: Path, files: int = FILES) -> None:
    for i in range(files):
        # saved as Observation.<n>.ndjson, n counting from 1 in URL order (see plan_files)
        assert (destination / f"Observation.{i + 1}.ndjson").read_bytes() == ndjson(i)


@pytest.mark.parametrize("mode", ["identity", "chunked", "gzip"])
@pytest.mark.parametrize("concurrency", [1, 3])
def test_http_downloads_reuse_connections(mode: str, concurrency: int, tmp_path: Path) -> None:
    for server in serve(mode):
        report = client_for(server).download(
            manifest(server), tmp_path, DownloadOptions(max_concurrent_downloads=concurrency)
        )
        assert report.lines == FILES * LINES
        check_files(tmp_path)
        assert server.connections <= concurrency, f"{server.connections} connections for {FILES} files"


@pytest.mark.parametrize("mode", ["identity", "gzip"])
def test_https_downloads_reuse_connections(mode: str, tls: tuple[ssl.SSLContext, Path], tmp_path: Path) -> None:
    context, ca = tls
    for server in serve(mode, context):
        client_for(server, ca).download(manifest(server), tmp_path, DownloadOptions(max_concurrent_downloads=3))
        check_files(tmp_path)
        assert server.connections <= 3, f"{server.connections} TLS connections for {FILES} files"


def test_landing_a_file_does_not_hold_a_download_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync and rename of a finished file happen after its download slot is given back: the next
    file streams in meanwhile (a slow disk does not idle the network), and no more bodies than
    ``max_concurrent_downloads`` are ever in flight."""
    import airflow_provider_smart.bulk.download as download_module

    real_replace = download_module.replace
    overlapped: list[bool] = []

    def slow_replace(part: Path, final: Path) -> None:
        if final.name == "Observation.1.ndjson":  # the first file lands only once the next one is requested
            deadline = time.monotonic() + 10
            while 1 not in server.requested and time.monotonic() < deadline:
                time.sleep(0.01)
            overlapped.append(1 in server.requested)
        real_replace(part, final)

    monkeypatch.setattr(download_module, "replace", slow_replace)
    for server in serve("identity"):
        client_for(server).download(manifest(server, 6), tmp_path, DownloadOptions(max_concurrent_downloads=1))
        check_files(tmp_path, 6)
        assert overlapped == [True], "the second download waited for the first file's rename"
        assert server.most_in_flight == 1
        assert server.connections == 1


def test_a_file_waiting_to_retry_does_not_hold_a_download_slot(tmp_path: Path) -> None:
    """One file answered 503 + Retry-After waits without its slot: the other files download meanwhile."""
    for server in serve("busy"):
        server.short_left = 1
        session = requests.Session()
        session.trust_env = False
        retry = RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=5)
        client = BulkExportClient(session, server.base + "/fhir", retry=retry)
        report = client.download(manifest(server, 3), tmp_path, DownloadOptions(max_concurrent_downloads=1))
        check_files(tmp_path, 3)
        assert [f.attempts for f in sorted(report.files, key=lambda f: f.path)] == [2, 1, 1]
        # file 0 is fetched last, after its wait (which of files 0 and 1 takes the slot first is up to the threads)
        assert server.order.count(0) == 2 and server.order[-1] == 0, server.order
        assert server.most_in_flight == 1


def test_a_short_body_is_retried_on_a_new_connection(tmp_path: Path) -> None:
    for server in serve("short"):
        server.short_left = 2
        report = client_for(server).download(manifest(server, 4), tmp_path, DownloadOptions(max_concurrent_downloads=1))
        check_files(tmp_path, 4)
        assert sum(f.attempts for f in report.files) == 4 + 2
        # the two cut connections are never reused; the good ones are: 1 + 2 replacements at most
        assert 2 <= server.connections <= 3


def test_a_short_body_that_stays_short_fails(tmp_path: Path) -> None:
    for server in serve("short"):
        server.short_left = 100
        client = client_for(server, attempts=1)
        with pytest.raises(BulkDownloadError, match="ended after"):
            client.download(manifest(server, 1), tmp_path)


def test_the_read_timeout_still_applies_to_every_read(tmp_path: Path) -> None:
    for server in serve("stall"):
        client = client_for(server, attempts=0, timeout=0.3)
        with pytest.raises(BulkDownloadError, match=r"broke mid-file \(TimeoutError\)"):
            client.download(manifest(server, 1), tmp_path)


# -- the body reader on its own ---------------------------------------------------------------------


class GzipBodies(QuietHandler):
    bodies: dict[str, bytes] = {}

    def do_GET(self) -> None:
        body = self.bodies[self.path]
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def gzip_server() -> Iterator[str]:
    with CountingServer(GzipBodies).running() as server:
        yield server.base


def read_all(url: str) -> tuple[bytes, Any]:
    response = requests.get(url, stream=True, headers={"Accept-Encoding": "gzip"}, timeout=10)
    body = open_body(response)
    data = b"".join(bytes(chunk) for chunk in body)
    return data, body


@pytest.fixture(params=["zlib-ng", "zlib"])
def inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both inflaters: zlib-ng (the dependency), and the standard library's zlib it falls back to."""
    if request.param == "zlib":
        monkeypatch.setattr(stream, "inflate_module", lambda: zlib)
    else:
        assert stream.inflate_module().__name__ == "zlib_ng.zlib_ng"  # installed, and the one in use
    return str(request.param)


def test_gzip_members_truncation_and_corruption(gzip_server: str, inflater: str) -> None:
    data = ndjson(1)
    whole = gzip.compress(data)
    GzipBodies.bodies.update(
        {
            "/whole": whole,
            "/members": gzip.compress(data[:1000]) + gzip.compress(data[1000:]),
            "/no-trailer": whole[:-8],  # the CRC and length never came: not a complete file
            "/corrupt": whole[:-8] + b"\0\0\0\0" + whole[-4:],  # a wrong CRC-32
        }
    )
    for path in ("/whole", "/members"):
        got, body = read_all(gzip_server + path)
        assert got == data and body.mode == "gzip"
        body.check_complete()
        body.close()
    got, body = read_all(gzip_server + "/no-trailer")
    with pytest.raises(IncompleteBody, match="without its trailer"):
        body.check_complete()
    body.close()
    with pytest.raises(CorruptBody, match="corrupt"):  # not retried: the same bytes would come again
        read_all(gzip_server + "/corrupt")


def test_a_gzip_bomb_is_decoded_in_bounded_pieces(gzip_server: str, inflater: str) -> None:
    # 64 MiB of one byte compresses ~1000:1: each piece handed on stays small however far it inflates.
    GzipBodies.bodies["/bomb"] = gzip.compress(b"\n" * (64 << 20), compresslevel=9)
    response = requests.get(gzip_server + "/bomb", stream=True, headers={"Accept-Encoding": "gzip"}, timeout=10)
    with open_body(response) as body:
        sizes = [len(chunk) for chunk in body]
        body.check_complete()
    assert sum(sizes) == 64 << 20 and max(sizes) <= GZIP_MAX_OUT
