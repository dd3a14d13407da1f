"""The trigger and the deferrable operator keep the caller's bound and the server's pace (issue 8, 14-15).

Status URLs live on a hostile loopback server; the token comes from the sandbox behind ``smart_conn``.
Real time, a few seconds per test.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from airflow_provider_smart.triggers.bulk_export import SmartBulkExportTrigger


def events(trigger: SmartBulkExportTrigger) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(collect())


def trigger(status_url: str, timeout: float, **kwargs: Any) -> SmartBulkExportTrigger:
    return SmartBulkExportTrigger(
        status_url=status_url, smart_conn_id="smart_default", end_time=time.time() + timeout, **kwargs
    )


def test_a_trigger_due_in_2_s_reports_timeout_at_2_s_despite_a_503_loop(smart_conn: Any, hostile_server: Any) -> None:
    def app(h: Any) -> None:
        if len(server.hits) == 1:
            h.reply(202, b"", {"Retry-After": "1"})
        else:
            h.reply(503, "overloaded", {"Retry-After": "10"})

    server = hostile_server(app)
    started = time.monotonic()
    [event] = events(trigger(server.url + "/status/1", 2, poll_interval=1))
    elapsed = time.monotonic() - started
    assert event["status"] == "timeout", event  # today: "error", after 50 s of retries in a thread
    assert 1.8 <= elapsed < 3.5
    assert len(server.hits) == 2  # no poll before the 503's Retry-After, which lies past the timeout


def test_a_trigger_does_not_poll_early_when_the_server_wants_it_back_after_the_timeout(
    smart_conn: Any, hostile_server: Any
) -> None:
    server = hostile_server(lambda h: h.reply(202, b"", {"Retry-After": "10"}))
    started = time.monotonic()
    [event] = events(trigger(server.url + "/status/1", 1.5, poll_interval=1))
    assert event["status"] == "timeout" and event["polls"] == 1
    assert 1.3 <= time.monotonic() - started < 3
    assert len(server.hits) == 1


def test_the_first_poll_after_deferring_honours_not_before(smart_conn: Any, hostile_server: Any) -> None:
    server = hostile_server(lambda h: h.reply(200, {"transactionTime": "x", "request": "x", "output": []}))
    deferred_at = time.monotonic()
    [event] = events(trigger(server.url + "/status/1", 30, not_before=time.time() + 1.5))
    assert event["status"] == "success"
    assert server.hits[0][0] - deferred_at >= 1.4  # today: the trigger polled at once


def test_not_before_survives_serialisation(smart_conn: Any) -> None:
    _path, kwargs = trigger("http://x/status/1", 30, not_before=1234.5).serialize()
    assert kwargs["not_before"] == 1234.5 and kwargs["kickoff_pending"] is False
    assert SmartBulkExportTrigger(**kwargs).not_before == 1234.5


def test_a_status_429_epoch_block_is_waited_out_on_the_event_loop(smart_conn: Any, hostile_server: Any) -> None:
    # The reference server's per-client limit: a block until an absolute epoch time, in milliseconds.
    blocked_until = time.time() + 1.5

    def app(h: Any) -> None:
        if len(server.hits) == 1:
            h.reply(429, "Too many requests", {"Retry-After": str(int(blocked_until * 1000))})
        else:
            h.reply(200, {"transactionTime": "x", "request": "x", "output": []})

    server = hostile_server(app)
    [event] = events(trigger(server.url + "/status/1", 30))
    assert event["status"] == "success"
    assert len(server.hits) == 2
    second_poll_wall = time.time() - (time.monotonic() - server.hits[1][0])
    assert second_poll_wall >= blocked_until - 1.0  # Retry-After epoch is whole ms: allow rounding


def test_a_kickoff_pending_trigger_fires_kickoff_due_at_not_before(smart_conn: Any) -> None:
    started = time.monotonic()
    [event] = events(trigger("", 30, not_before=time.time() + 1, kickoff_pending=True))
    assert event["status"] == "kickoff_due"
    assert 0.9 <= time.monotonic() - started < 2.5


def test_a_kickoff_pending_past_the_timeout_reports_timeout_at_the_timeout(smart_conn: Any) -> None:
    started = time.monotonic()
    [event] = events(trigger("", 1, not_before=time.time() + 3600, kickoff_pending=True))
    assert event["status"] == "timeout"
    assert 0.9 <= time.monotonic() - started < 2.5


def test_a_deferrable_operator_defers_a_long_throttled_kick_off(
    smart_conn: Any, hostile_server: Any, sandbox: Any, es384: Any, tmp_path: Any
) -> None:

    from airflow_provider_smart.compat import TaskDeferred
    from airflow_provider_smart.operators.bulk_export import SmartBulkExportOperator

    def app(h: Any) -> None:
        kickoffs = [hit for hit in server.hits if "$export" in hit[2]]
        if h.path.endswith("/metadata"):
            h.reply(404, b"")  # vendor detection: a server that publishes none
        elif len(kickoffs) == 1:
            h.reply(429, "one export at a time", {"Retry-After": "3000"})
        else:
            h.reply(202, b"", {"Content-Location": f"{server.url}/status/1"})

    server = hostile_server(app)
    # The FHIR server is the hostile one; tokens still come from the sandbox's token endpoint.
    extra = {"private_key": es384.pem, "kid": es384.kid, "scope": "system/*.rs", "token_url": sandbox.token_url}
    smart_conn(raw={"conn_type": "smart", "host": server.url + "/fhir", "login": "es-client", "extra": extra})
    op = SmartBulkExportOperator(task_id="x", destination=str(tmp_path / "d"), deferrable=True, timeout=7200)
    ti = FakeTI()
    started = time.monotonic()
    with pytest.raises(TaskDeferred) as info:
        op.execute({"ti": ti})  # type: ignore[arg-type]
    assert time.monotonic() - started < 10  # today: sleeps 3000 s x 5 in the worker
    deferred = info.value
    assert deferred.trigger.kickoff_pending is True
    assert deferred.trigger.not_before == pytest.approx(time.time() + 3000, abs=10)
    assert deferred.kwargs["end_time"] == pytest.approx(time.time() + 7200, abs=10)
    # When the trigger says the kick-off is due, the operator kicks off and defers to poll it.
    with pytest.raises(TaskDeferred) as info:
        op.execute_complete({"ti": ti}, {"status": "kickoff_due"}, **deferred.kwargs)  # type: ignore[arg-type]
    assert info.value.trigger.status_url == f"{server.url}/status/1"
    assert info.value.trigger.not_before is not None
    assert ti.pushed["status_url"] == f"{server.url}/status/1"


class FakeTI:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value

    def xcom_pull(self, **kwargs: Any) -> Any:
        return None
