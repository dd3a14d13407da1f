"""Bytes after the end of a body (a stray pipelined response in the same TLS record, or the same TCP
segment) are never read as the next request's answer: the record reader and http.client's path agree,
and a connection with anything unread after a body is closed, not pooled."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from airflow_provider_smart.bulk import BulkExportClient, DownloadOptions, ExportManifest, RetryPolicy
from airflow_provider_smart.testing.local_http import CountingServer, QuietHandler


def lines(tag: str, n: int) -> bytes:
    return b"".join(b'{"resourceType":"Patient","id":"%s-%06d"}\n' % (tag.encode(), i) for i in range(n))


STRAY = lines("stray", 3)


class Pipelining(QuietHandler):
    """``/<name>/<lines>``: the file, immediately followed, in the same write (so the same TLS record for a
    small file), by junk up to the client's 8 KiB read buffer, then a complete second response nobody asked
    for, whose body looks like a valid file. The junk is read into the buffer the first response discards;
    the stray response stays in the TLS layer's buffer, where a check of the socket does not see it."""

    def do_GET(self) -> None:
        name, count = self.path.strip("/").split("/")
        body = lines(name, int(count))
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        stray = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(STRAY), STRAY)
        junk = b"\n" * (-len(answer) % 8192)
        self.wfile.write(answer + junk + stray)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from airflow_provider_smart.testing.tls import make_tls

    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=["https", "http"])  # http: a guard (urllib3 sees the bytes on the socket and drops it)
def server(request: Any, tls_files: Any) -> Iterator[CountingServer]:
    context = tls_files.server_context() if request.param == "https" else None
    with CountingServer(Pipelining, context).running() as server:
        yield server


@pytest.mark.parametrize("count", [2, 3_000, 40_000])  # one chunk; the record reader's path; several chunks
def test_a_stray_response_after_a_body_is_never_the_next_files_body(
    server: CountingServer, tls_files: Any, tmp_path: Any, count: int
) -> None:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(tls_files.ca)
    entries = [{"type": "Patient", "url": f"{server.base}/f{n}/{count}"} for n in range(4)]  # no count to catch it
    data = {"transactionTime": "t", "request": "x", "requiresAccessToken": False, "error": []}
    manifest = ExportManifest.from_json({**data, "output": entries}, server.base)
    client = BulkExportClient(session, server.base, retry=RetryPolicy(attempts=0))
    client.download(manifest, tmp_path, DownloadOptions(max_concurrent_downloads=1))
    for n in range(4):
        assert (tmp_path / f"Patient.{n + 1}.ndjson").read_bytes() == lines(f"f{n}", count), n
