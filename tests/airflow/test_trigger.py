"""SmartBulkExportTrigger: JSON-only serialisation, one event per run, errors as events."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import requests

from airflow_provider_smart.triggers.bulk_export import SmartBulkExportTrigger


def events(trigger: SmartBulkExportTrigger) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(collect())


def test_serialize_round_trip_is_plain_json_without_secrets(smart_conn: Any, es384: Any) -> None:
    trigger = SmartBulkExportTrigger(status_url="http://x/status/1", smart_conn_id="smart_default", end_time=1e10)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_smart.triggers.bulk_export.SmartBulkExportTrigger"
    text = json.dumps(kwargs)
    assert "PRIVATE" not in text and es384.kid not in text
    again = SmartBulkExportTrigger(**json.loads(text))
    assert again.serialize() == (path, kwargs)


def test_trigger_polls_until_complete(smart_conn: Any, sandbox: Any, kick_off: Any) -> None:
    status_url = kick_off()
    [event] = events(
        SmartBulkExportTrigger(
            status_url=status_url, smart_conn_id="smart_default", end_time=time.time() + 60, poll_interval=1
        )
    )
    assert event["status"] == "success" and event["status_url"] == status_url
    assert event["polls"] == 2  # one 202 (Retry-After: 1), then the manifest


def test_trigger_times_out(smart_conn: Any, sandbox: Any, kick_off: Any) -> None:
    status_url = kick_off()
    [event] = events(SmartBulkExportTrigger(status_url=status_url, smart_conn_id="smart_default", end_time=time.time()))
    assert event["status"] == "timeout"


@pytest.mark.parametrize("conn_ok", [True, False])
def test_trigger_reports_errors_as_events(smart_conn: Any, sandbox: Any, kick_off: Any, conn_ok: bool) -> None:
    status_url = kick_off()
    if conn_ok:
        requests.delete(status_url, headers={"Authorization": f"Bearer {sandbox.issued_tokens()[-1]}"}, timeout=10)
    else:
        smart_conn(raw={"conn_type": "smart", "host": "not a url", "login": "x"})
    [event] = events(
        SmartBulkExportTrigger(status_url=status_url, smart_conn_id="smart_default", end_time=time.time() + 30)
    )
    assert event["status"] == "error"
    assert ("404" in event["message"]) if conn_ok else ("host" in event["message"])
