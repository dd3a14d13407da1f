"""SmartBulkExportSensor with deferrable=True: it defers to the trigger, and execute_complete turns the
trigger's event into batches or an error. Real HTTP against the sandbox; the trigger's run() really runs."""

from __future__ import annotations

import asyncio
import importlib
import time
from typing import Any

import pytest
import requests

from airflow_provider_smart.compat import TaskDeferred
from airflow_provider_smart.exceptions import BulkExportError, ExportTimeoutError
from airflow_provider_smart.sensors.bulk_export import SmartBulkExportSensor
from airflow_provider_smart.triggers.bulk_export import SmartBulkExportTrigger

CONTEXT: Any = {}  # neither execute() nor execute_complete() of the sensor reads the context


def sensor(status_url: str, **kwargs: Any) -> SmartBulkExportSensor:
    kwargs = {"poke_interval": 1, "timeout": 60, "max_poll_interval": 5, **kwargs}
    return SmartBulkExportSensor(task_id="wait_for_export", status_url=status_url, deferrable=True, **kwargs)


def defer(task: SmartBulkExportSensor) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(CONTEXT)
    return deferred.value


def run_trigger(trigger: Any) -> dict[str, Any]:
    """As the triggerer does: rebuild the trigger from its serialised form, run it, take its one event."""
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)

    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in rebuilt.run()]

    [event] = asyncio.run(collect())
    return event


def manifest_of(sandbox: Any, status_url: str) -> dict[str, Any]:
    """The completed manifest, read with a plain authorised GET (not through the sensor's client)."""
    token = sandbox.issued_tokens()[-1]
    response = requests.get(
        status_url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_defers_while_not_ready_and_returns_the_batches_on_success(sandbox: Any, kick_off: Any) -> None:
    sandbox.status_polls_before_ready = 2  # read at kick-off: the sensor's poke and the trigger's first poll get 202
    status_url = kick_off()
    task = sensor(status_url, max_batches=2)
    deferred = defer(task)

    assert deferred.method_name == "execute_complete"
    trigger = deferred.trigger
    assert isinstance(trigger, SmartBulkExportTrigger)
    assert trigger.status_url == status_url and trigger.smart_conn_id == "smart_default"
    assert trigger.poll_interval == 1 and trigger.max_poll_interval == 5
    assert time.time() < trigger.end_time <= time.time() + 60
    assert sandbox.status_polls == 1  # the sensor looked once before deferring

    event = run_trigger(trigger)
    assert event["status"] == "success" and event["status_url"] == status_url
    assert event["polls"] == 2  # one more 202 (Retry-After: 1), then the manifest

    batches = task.execute_complete(CONTEXT, event)
    manifest = manifest_of(sandbox, status_url)
    assert manifest["output"] and not manifest.get("error") and not manifest.get("deleted")
    assert 1 <= len(batches) <= 2
    assert all(b["status_url"] == status_url and b["paths"] for b in batches)
    paths = [p for b in batches for p in b["paths"]]
    assert len(paths) == len(set(paths)) == len(manifest["output"])
    seen: dict[str, int] = {}
    expected = set()
    for entry in manifest["output"]:
        seen[entry["type"]] = seen.get(entry["type"], 0) + 1
        expected.add(f"{entry['type']}.{seen[entry['type']]}.ndjson")
    assert set(paths) == expected
    assert sum(b["count"] for b in batches) == sum(e["count"] for e in manifest["output"]) > 0
    assert not any("url" in b or "://" in "".join(b["paths"]) for b in batches)  # XCom never holds file URLs


def test_does_not_defer_when_the_export_is_already_complete(sandbox: Any, kick_off: Any) -> None:
    sandbox.status_polls_before_ready = 0
    status_url = kick_off()
    batches = sensor(status_url).execute(CONTEXT)  # no TaskDeferred
    assert sum(b["count"] for b in batches) == sum(e["count"] for e in manifest_of(sandbox, status_url)["output"])


def test_error_event_raises(sandbox: Any, kick_off: Any) -> None:
    status_url = kick_off()
    deferred = defer(sensor(status_url))
    # The export disappears while the task is deferred: the trigger's next poll gets a 404.
    gone = requests.delete(status_url, headers={"Authorization": f"Bearer {sandbox.issued_tokens()[-1]}"}, timeout=10)
    assert gone.status_code == 202, gone.text

    event = run_trigger(deferred.trigger)
    assert event["status"] == "error" and "404" in event["message"]
    with pytest.raises(BulkExportError, match=r"HTTP 404.*no longer exists") as raised:
        sensor(status_url).execute_complete(CONTEXT, event)
    assert status_url in str(raised.value)


def test_timeout_event_raises(sandbox: Any, kick_off: Any) -> None:
    sandbox.status_polls_before_ready = 1000  # read at kick-off: this export never finishes in time
    status_url = kick_off()
    task = sensor(status_url, timeout=0.5)
    deferred = defer(task)

    started = time.monotonic()
    event = run_trigger(deferred.trigger)
    assert event["status"] == "timeout"  # the last Retry-After points past the timeout: no early poll
    assert time.monotonic() - started < 5  # it gave up at the sensor's timeout, not at a poll interval
    with pytest.raises(ExportTimeoutError, match="did not finish before the timeout"):
        task.execute_complete(CONTEXT, event)


def test_no_event_raises(smart_conn: Any) -> None:
    with pytest.raises(BulkExportError, match="ended without an event"):
        sensor("http://127.0.0.1:9/fhir/bulkstatus/x").execute_complete(CONTEXT, None)
