"""The Bulk Data protocol without I/O (bulk/protocol.py): exchanges driven by hand, answer by answer.

What the requests client and the async trigger share is pure: what each request is, how each answer is
classified, when to sleep. These tests are the transport: they read each yielded request and send an answer.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_smart.bulk.protocol import (
    Failure,
    Request,
    Response,
    Server,
    ServerProfile,
    poll_exchange,
    wait_exchange,
)
from airflow_provider_smart.bulk.retry import RetryPolicy, Sleep
from airflow_provider_smart.exceptions import BulkExportError, ExportTimeoutError
from airflow_provider_smart.origins import OriginPolicy

URL = "https://ehr.example/fhir/bulkstatus/1"


def server(profile: ServerProfile | None = None) -> Server:
    origins = OriginPolicy(["https://ehr.example/fhir"])
    return Server(origins, profile) if profile else Server(origins)


def answer(status: int, body: bytes = b"", **headers: str) -> Response:
    return Response(status, {k.replace("_", "-"): v for k, v in headers.items()}, body, URL)


def run(exchange: Any, answers: list[Any]) -> tuple[Any, list[Any]]:
    """Drive ``exchange``: each Request gets the next answer, each Sleep is recorded; (result, actions)."""
    actions: list[Any] = []
    pending = list(answers)
    try:
        action = next(exchange)
        while True:
            actions.append(action)
            action = exchange.send(pending.pop(0) if isinstance(action, Request) else None)
    except StopIteration as done:
        return done.value, actions


def test_a_poll_retries_a_503_after_its_retry_after_then_reads_progress() -> None:
    result, actions = run(
        poll_exchange(URL, server(), RetryPolicy(), read_manifest=False),
        [answer(503, b"busy", Retry_After="2"), answer(202, X_Progress="50%", Retry_After="7")],
    )
    assert [type(a).__name__ for a in actions] == ["Request", "Sleep", "Request"]
    assert actions[1] == Sleep(2.0)
    assert actions[0].headers == {"Accept": "application/json"} and actions[0].method == "GET"
    assert result.state == "in_progress" and result.progress == "50%" and result.retry_after == 7.0


def test_no_answer_is_transient_and_a_redirect_loop_is_fatal() -> None:
    result, actions = run(
        poll_exchange(URL, server(), RetryPolicy(backoff_base=0.5), read_manifest=False),
        [Failure("network", "ConnectionError"), answer(202)],
    )
    assert result.state == "in_progress" and isinstance(actions[1], Sleep)
    with pytest.raises(BulkExportError, match="redirected too many times"):
        run(poll_exchange(URL, server(), RetryPolicy(), read_manifest=False), [Failure("redirects", "x")])


def test_an_http_status_url_under_an_https_base_is_refused_before_any_request() -> None:
    with pytest.raises(BulkExportError, match="downgrade"):
        run(poll_exchange(URL.replace("https", "http"), server(), RetryPolicy(), read_manifest=False), [])


def test_a_profile_plugs_into_request_building_classification_and_pacing() -> None:
    class Vendor(ServerProfile):
        def status_headers(self) -> dict[str, str]:
            return {"Accept": "application/fhir+json", "Epic-Client-ID": "x"}

        def poll_delay(self, retry_after: float | None, polls: int, interval: float, cap: float) -> float:
            return 3.0  # this server is polled every 3 s, whatever it says

    vendor = Vendor(transient_poll_statuses=frozenset({500, 503}))
    clock = iter(range(0, 1000)).__next__
    policy = RetryPolicy(clock=lambda: float(clock())).bounded(timeout=100)
    result, actions = run(
        wait_exchange(URL, server(vendor), policy, poll_interval=1, max_poll_interval=600, read_manifest=False),
        [answer(500, b"oops"), answer(202, Retry_After="60"), answer(200, b"{}")],
    )
    requests = [a for a in actions if isinstance(a, Request)]
    assert all(r.headers["Epic-Client-ID"] == "x" for r in requests)
    assert Sleep(3.0) in actions  # the profile's cadence, not the server's 60 s
    assert result.state == "complete"


def test_a_wait_ends_at_its_deadline_without_polling_early() -> None:
    now = [0.0]
    policy = RetryPolicy(clock=lambda: now[0]).bounded(timeout=10)
    exchange = wait_exchange(URL, server(), policy, poll_interval=1, max_poll_interval=600, read_manifest=False)
    assert isinstance(next(exchange), Request)
    now[0] = 4.0
    assert exchange.send(answer(202, Retry_After="30")) == Sleep(6.0)  # until the deadline, not 30 s
    with pytest.raises(ExportTimeoutError) as info:
        exchange.send(None)
    assert info.value.context["polls"] == 1 and info.value.context["status_url"] == URL
