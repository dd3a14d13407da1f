"""https bodies read a TLS record per call (stream.TlsRecordReader): every byte, in order, at every boundary.

The reader takes over from ``http.client`` after the bytes that came with the headers and hands the last
chunk back to it, so the tests sweep body sizes around the buffered reader's 8 KiB, the chunk size and
the 16 KiB TLS record, over a real TLS connection, and check the connection is kept only for whole bodies.
"""

from __future__ import annotations

import gzip
import random
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from airflow_provider_smart.bulk import BulkExportClient, DownloadOptions, ExportManifest, RetryPolicy, stream
from airflow_provider_smart.bulk.stream import IncompleteBody, open_body
from airflow_provider_smart.testing.local_http import CountingServer, QuietHandler

CHUNK = 20_000  # above the buffered reader's 8 KiB, and not a multiple of a 16 KiB TLS record


def body_of(size: int) -> bytes:
    line = b'{"resourceType":"Observation","id":"%08d"}\n'
    lines = b"".join(line % i for i in range(size // len(line % 0) + 1))
    return lines[:size]


class SizedBodies(QuietHandler):
    def do_GET(self) -> None:
        kind, size = self.path.strip("/").split("/")
        body = body_of(int(size))
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
        if kind == "short":  # half the body, then the connection closes
            self.wfile.write(head + body[: len(body) // 2])
            self.close_connection = True
        elif kind == "stall":  # a part, then nothing until the test is over
            self.wfile.write(head + body[: len(body) // 4])
            self.wfile.flush()
            self.server.release.wait(10)
            self.close_connection = True
        elif kind == "gzip":  # random lines: the compressed body spans several reads too
            rng = random.Random(len(body))
            raw = b"".join(b'{"id":"%032x"}\n' % rng.getrandbits(128) for _ in range(len(body) // 40))
            body = gzip.compress(raw, compresslevel=1)
            head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
            self.wfile.write(head + body)
        elif kind == "garbled" and not self.server.garbled:  # the first try: a record that does not decrypt
            self.server.garbled = True
            self.wfile.write(head + body[: len(body) // 2])
            self.wfile.flush()
            socket.socket.sendall(self.connection, b"\x17\x03\x03\x40\x00" + b"\x99" * 16384)  # under TLS
            self.close_connection = True
        elif kind == "apart":  # headers in a TLS record of their own: nothing of the body is buffered
            self.wfile.write(head)
            self.wfile.write(body)
        else:  # as nginx does: the body's first bytes share a record with the headers
            self.wfile.write(head + body)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from airflow_provider_smart.testing.tls import make_tls

    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(tls_files: Any) -> Iterator[CountingServer]:
    with CountingServer(SizedBodies, tls_files.server_context()).running() as server:
        server.garbled = False  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def session(tls_files: Any) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(tls_files.ca)
    return session


@pytest.fixture
def record_readers(monkeypatch: pytest.MonkeyPatch) -> list[stream.TlsRecordReader]:
    """The record readers made for the bodies (``drained``: it read records, which one chunk's body does not)."""
    made: list[stream.TlsRecordReader] = []
    real = stream.TlsRecordReader.over

    def over(fp: Any, chunk_size: int) -> stream.TlsRecordReader | None:
        reader = real(fp, chunk_size)
        if reader is not None:
            made.append(reader)
        return reader

    monkeypatch.setattr(stream.TlsRecordReader, "over", over)
    return made


def read(session: requests.Session, url: str) -> tuple[bytes, stream.BodyReader]:
    body = open_body(session.get(url, stream=True, timeout=10), CHUNK)
    data = b"".join(bytes(chunk) for chunk in body)
    return data, body


SIZES = [0, 1, 8191, 8192, 8193, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1, 16384 * 7 + 5, 1_000_003]


@pytest.mark.parametrize("kind", ["whole", "apart"])
def test_every_body_size_arrives_whole_over_one_connection(
    server: CountingServer, session, record_readers, kind
) -> None:
    base = server.base
    for size in SIZES:
        data, body = read(session, f"{base}/{kind}/{size}")
        assert data == body_of(size), f"{size}-byte body"
        assert body.complete and body.received == size
        body.close()
    took_over = [reader for reader in record_readers if reader.drained]
    assert len(took_over) == sum(size > CHUNK for size in SIZES)  # the path under test was taken
    assert all(reader.fp.isclosed() for reader in took_over)  # http.client ended every body itself
    assert server.connections == 1  # so every connection went back to the pool


@pytest.mark.parametrize("size", [3 * CHUNK, 1_000_003])
def test_a_tls_body_cut_short_is_incomplete_and_its_connection_dropped(
    server: CountingServer, session, record_readers, size: int
) -> None:
    base = server.base
    data, body = read(session, f"{base}/short/{size}")
    assert data == body_of(size)[: len(data)] and len(data) == size // 2
    with pytest.raises(IncompleteBody, match=f"after {size // 2} of {size} bytes"):
        body.check_complete()
    body.close()
    data, body = read(session, f"{base}/whole/{size}")  # the next body: a new connection, all of it
    assert data == body_of(size) and body.complete
    body.close()
    assert [reader.drained for reader in record_readers] == [True, True] and server.connections == 2


def test_a_small_chunk_size_keeps_http_client_reading(server: CountingServer, session, record_readers) -> None:
    # the buffered reader holds up to 8 KiB after the headers: a smaller chunk could not take it at once
    url = f"{server.base}/whole/100000"
    body = open_body(session.get(url, stream=True, timeout=10), 4096)
    assert b"".join(bytes(chunk) for chunk in body) == body_of(100000) and body.complete
    body.close()
    assert record_readers == []


def test_a_stalled_tls_body_is_cut_by_the_rate_guard(server: CountingServer, session, record_readers) -> None:
    url = f"{server.base}/stall/{10 * CHUNK}"
    body = open_body(session.get(url, stream=True, timeout=30), CHUNK, min_rate=100_000, window=0.5)
    with pytest.raises(IncompleteBody, match="min_download_rate"):  # within the window, not the 30 s timeout
        for _chunk in body:
            pass
    body.close()
    assert [reader.drained for reader in record_readers] == [True]


def test_a_gzip_body_over_tls_is_read_by_records_and_inflated_whole(
    server: CountingServer, session, record_readers
) -> None:
    base = server.base
    response = session.get(f"{base}/gzip/4000000", stream=True, headers={"Accept-Encoding": "gzip"}, timeout=10)
    rng = random.Random(4000000)
    want = b"".join(b'{"id":"%032x"}\n' % rng.getrandbits(128) for _ in range(100000))
    with open_body(response, CHUNK) as body:
        assert b"".join(bytes(chunk) for chunk in body) == want
        assert body.mode == "gzip" and body.complete
    assert [reader.drained for reader in record_readers] == [True]
    assert server.connections == 1


def test_a_tls_record_that_does_not_decrypt_mid_body_is_retried(server: CountingServer, session, tmp_path) -> None:
    size = 47 * 20_000  # 20,000 whole 47-byte lines (940 kB): the file must end with a newline
    url = f"{server.base}/garbled/{size}"
    data = {"transactionTime": "t", "request": "x", "requiresAccessToken": False, "error": []}
    manifest = ExportManifest.from_json({**data, "output": [{"type": "Observation", "url": url}]}, server.base)
    client = BulkExportClient(session, server.base, retry=RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=0.01))
    report = client.download(manifest, tmp_path, DownloadOptions())  # not a failed file: a network hiccup
    assert (tmp_path / "Observation.1.ndjson").read_bytes() == body_of(size)
    assert server.garbled and report.files[0].attempts == 2
