"""No hangs: every wait has a bound the caller chose (issue 8, items 13-15, and 17's bulk parts).

Each test runs a small hostile server on 127.0.0.1. Tests about sockets run in real time (a few
seconds at most); tests about long server-requested waits use the fake clock.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_smart.bulk import (
    BulkDownloadError,
    BulkExportClient,
    BulkExportError,
    DownloadOptions,
    ExportRequest,
    ExportThrottledError,
    ExportTimeoutError,
    RetryPolicy,
)

MANIFEST_HEAD = {"transactionTime": "2024-01-01T00:00:00Z", "request": "x", "requiresAccessToken": False}


def client_for(url: str, *, timeout: float = 0.5, fake: Any = None, **kwargs: Any) -> BulkExportClient:
    """A token-free client of the hostile server; ``kwargs`` are RetryPolicy's, plus ``request_deadline``."""
    deadline = kwargs.pop("request_deadline", None)
    kwargs.setdefault("backoff_base", 0.01)
    clock: Any = time.monotonic
    if fake is not None:
        kwargs["sleep"], clock = fake.sleep, fake.clock
    return BulkExportClient(
        requests.Session(),
        url + "/fhir",
        timeout=timeout,
        request_deadline=deadline,
        retry=RetryPolicy(**kwargs),
        clock=clock,
    )


def manifest(base: str, **extra: Any) -> dict[str, Any]:
    return {**MANIFEST_HEAD, "output": [{"type": "Patient", "url": f"{base}/files/p.ndjson"}], "error": [], **extra}


# -- 13: overall deadlines ------------------------------------------------------------------------


def test_a_status_body_dripped_under_the_read_timeout_is_cut_at_the_request_deadline(hostile_server: Any) -> None:
    def app(h: Any) -> None:
        body = json.dumps(manifest("http://x")).encode()
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.drip(body, 0.2)  # each byte well inside the 0.5 s read timeout; the whole body takes ~40 s

    server = hostile_server(app)
    client = client_for(server.url, timeout=0.5, attempts=1)  # request deadline: 2 x 0.5 s
    started = time.monotonic()
    with pytest.raises(BulkExportError, match=r"kept failing.*DeadlineExceeded"):
        client.poll(server.url + "/status/1")
    assert time.monotonic() - started < 4  # two tries of ~1 s, not 40 s
    assert len(server.hits) == 2


def test_status_headers_dripped_under_the_read_timeout_are_cut_too(hostile_server: Any) -> None:
    def app(h: Any) -> None:
        h.wfile.write(b"HTTP/1.1 202 Accepted\r\n")
        h.drip(b"X-Progress: " + b"." * 200 + b"\r\n\r\n", 0.2)

    server = hostile_server(app)
    client = client_for(server.url, timeout=0.5, attempts=0, request_deadline=1.0)
    started = time.monotonic()
    with pytest.raises(BulkExportError, match="DeadlineExceeded"):
        client.status(server.url + "/status/1")
    assert time.monotonic() - started < 2.5


def test_a_dripped_manifest_page_is_cut_at_the_request_deadline(hostile_server: Any) -> None:
    def app(h: Any) -> None:
        if h.path.endswith("/page2"):
            body = json.dumps(manifest("http://x")).encode()
            h.send_response(200)
            h.end_headers()  # no Content-Length: the body ends when the connection closes
            h.drip(body, 0.2)
            return
        h.reply(200, manifest("http://x", link=[{"relation": "next", "url": f"{server.url}/status/1/page2"}]))

    server = hostile_server(app)
    client = client_for(server.url, timeout=0.5, attempts=0)
    started = time.monotonic()
    with pytest.raises(BulkExportError, match=r"manifest page.*DeadlineExceeded"):
        client.poll(server.url + "/status/1")
    assert time.monotonic() - started < 3


def test_a_download_slower_than_min_download_rate_is_retried_then_failed(hostile_server: Any, tmp_path: Path) -> None:
    line = b'{"resourceType":"Patient","id":"1"}\n'

    def app(h: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/fhir+ndjson")
        h.send_header("Content-Length", str(len(line) * 1000))
        h.end_headers()
        h.drip(line * 1000, 0.05)  # ~20 B/s, each byte well inside the read timeout

    server = hostile_server(app)
    client = client_for(server.url, timeout=0.5, attempts=1)
    options = DownloadOptions(min_download_rate=200, min_rate_window=0.6)
    entries = [{"kind": "output", "type": "Patient", "url": server.url + "/files/p.ndjson", "path": "Patient.1.ndjson"}]
    started = time.monotonic()
    with pytest.raises(BulkDownloadError, match="below min_download_rate") as info:
        client.download_batch(entries, tmp_path, options, requires_access_token=False)
    assert time.monotonic() - started < 4
    assert len(server.hits) == 2  # retried once as transient, then given up
    assert "attempts" in str(info.value)


# -- 14: server-requested waits respect the caller's timeout --------------------------------------


def test_wait_never_sleeps_past_its_timeout_in_a_status_retry_loop(hostile_server: Any, fake_time: Any) -> None:
    def app(h: Any) -> None:
        if len(server.hits) == 1:
            h.reply(202, b"", {"Retry-After": "1", "X-Progress": "10%"})
        else:
            h.reply(503, "busy", {"Retry-After": "10"})

    server = hostile_server(app)
    client = client_for(server.url, fake=fake_time)
    with pytest.raises(ExportTimeoutError) as info:
        client.wait(server.url + "/status/1", timeout=2)
    assert sum(fake_time.sleeps) == pytest.approx(2)  # today: 1 + 10 + 10 + ... (the 503's Retry-After)
    assert info.value.context["status_url"] == server.url + "/status/1"


def test_wait_does_not_poll_before_the_servers_retry_after_just_because_the_timeout_is_near(
    hostile_server: Any, fake_time: Any
) -> None:
    server = hostile_server(lambda h: h.reply(202, b"", {"Retry-After": "10"}))
    client = client_for(server.url, fake=fake_time)
    with pytest.raises(ExportTimeoutError, match="still running"):
        client.wait(server.url + "/status/1", timeout=2)
    assert fake_time.sleeps == [pytest.approx(2)]
    assert len(server.hits) == 1  # no early poll at t=2 s: the server said 10


def test_wait_backoff_makes_one_last_poll_at_the_timeout(hostile_server: Any, fake_time: Any) -> None:
    server = hostile_server(lambda h: h.reply(202, b""))  # no Retry-After: our own backoff
    client = client_for(server.url, fake=fake_time)
    with pytest.raises(ExportTimeoutError):
        client.wait(server.url + "/status/1", timeout=2, poll_interval=30)
    assert sum(fake_time.sleeps) == pytest.approx(2)
    assert len(server.hits) == 2


def test_kick_off_throttled_past_its_timeout_stops_at_the_timeout(hostile_server: Any, fake_time: Any) -> None:
    server = hostile_server(lambda h: h.reply(429, "one export at a time", {"Retry-After": "600"}))
    client = client_for(server.url, fake=fake_time)
    with pytest.raises(ExportTimeoutError, match="asked to wait 600 s"):
        client.kick_off(ExportRequest(), timeout=5)
    assert sum(fake_time.sleeps) == pytest.approx(5)
    assert len(server.hits) == 1


def test_kick_off_refuses_to_sleep_long_in_place_when_told(hostile_server: Any, fake_time: Any) -> None:
    server = hostile_server(lambda h: h.reply(429, "one export at a time", {"Retry-After": "3000"}))
    client = client_for(server.url, fake=fake_time)
    client.kickoff_max_wait = 60
    with pytest.raises(ExportThrottledError) as info:
        client.kick_off(ExportRequest())
    assert fake_time.sleeps == []
    assert info.value.context["retry_after"] == pytest.approx(3000)
    assert info.value.not_before == pytest.approx(time.time() + 3000, abs=5)
    assert info.value.to_dict()["kind"] == "smart.bulk_export.throttled"


# -- 15: rate limits per client, with absolute-epoch Retry-After ---------------------------------


@pytest.mark.parametrize("unit", [1, 1000], ids=["epoch-seconds", "epoch-milliseconds"])
def test_an_epoch_retry_after_on_a_status_429_is_waited_out_not_for_decades(
    hostile_server: Any, fake_time: Any, unit: int
) -> None:
    # The SMART reference server: 60 status calls a minute, then a 5-minute block sent as an epoch.
    def app(h: Any) -> None:
        if len(server.hits) == 1:
            h.reply(429, "Too many requests", {"Retry-After": str(int((time.time() + 300) * unit))})
        else:
            h.reply(200, manifest(server.url))

    server = hostile_server(app)
    client = client_for(server.url, fake=fake_time)
    client.wait(server.url + "/status/1", timeout=3600)
    assert fake_time.sleeps == [pytest.approx(300, abs=3)]


def test_a_long_status_block_is_raised_to_a_caller_that_cannot_wait_in_place(
    hostile_server: Any, fake_time: Any
) -> None:
    epoch_ms = str(int((time.time() + 300) * 1000))
    server = hostile_server(lambda h: h.reply(429, "Too many requests", {"Retry-After": epoch_ms}))
    client = client_for(server.url, fake=fake_time)
    with pytest.raises(ExportThrottledError) as info:
        client.status(server.url + "/status/1", max_wait=5)
    assert info.value.not_before == pytest.approx(time.time() + 300, abs=3)
    assert info.value.context["status_url"] == server.url + "/status/1"
    assert fake_time.sleeps == []


# -- 17 (bulk): redirect loops, corrupt gzip ------------------------------------------------------


def test_a_status_redirect_loop_is_our_error(hostile_server: Any) -> None:
    server = hostile_server(lambda h: h.reply(302, b"", {"Location": h.path}))
    client = client_for(server.url, attempts=0)
    with pytest.raises(BulkExportError, match="redirect loop"):
        client.poll(server.url + "/status/1")


def test_a_kick_off_redirect_loop_is_our_error(hostile_server: Any) -> None:
    server = hostile_server(lambda h: h.reply(307, b"", {"Location": h.path}))
    client = client_for(server.url, attempts=0)
    with pytest.raises(BulkExportError, match="redirect loop"):
        client.kick_off(ExportRequest())


def test_a_file_redirect_loop_is_our_error(hostile_server: Any, tmp_path: Path) -> None:
    server = hostile_server(lambda h: h.reply(302, b"", {"Location": h.path}))
    client = client_for(server.url, attempts=0)
    entries = [{"kind": "output", "type": "Patient", "url": server.url + "/files/p.ndjson", "path": "Patient.1.ndjson"}]
    with pytest.raises(BulkDownloadError, match="redirects"):
        client.download_batch(entries, tmp_path, requires_access_token=False)


@pytest.mark.parametrize("framing", ["content-length", "close-delimited"])
def test_a_corrupt_gzip_file_is_reported_as_corrupt_and_not_retried(
    hostile_server: Any, tmp_path: Path, framing: str
) -> None:
    good = gzip.compress(b'{"resourceType":"Patient","id":"1"}\n' * 50)
    body = good[:20] + bytes(b ^ 0x5A for b in good[20:60]) + good[60:]  # garbage in the deflate stream

    def app(h: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Encoding", "gzip")
        if framing == "content-length":
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    server = hostile_server(app)
    client = client_for(server.url, attempts=5)
    entries = [{"kind": "output", "type": "Patient", "url": server.url + "/files/p.ndjson", "path": "Patient.1.ndjson"}]
    with pytest.raises(BulkDownloadError, match="gzip body is corrupt"):
        client.download_batch(entries, tmp_path, requires_access_token=False)
    assert len(server.hits) == 1
    assert not list(tmp_path.glob("*.ndjson")) and not list(tmp_path.glob(".*part"))


def test_kick_off_with_no_bound_never_sleeps_hours_in_place(hostile_server: Any, fake_time: Any) -> None:
    """Library defaults are bounded: no timeout, no max wait, a 429 storm of one-hour Retry-Afters."""
    server = hostile_server(lambda h: h.reply(429, "one export at a time", {"Retry-After": "3600"}))
    client = client_for(server.url, fake=fake_time)
    with pytest.raises(ExportThrottledError) as info:
        client.kick_off(ExportRequest())
    assert sum(fake_time.sleeps) == 0  # before: 5 x 3600 s of sleep, one warning each
    assert info.value.not_before == pytest.approx(time.time() + 3600, abs=5)
