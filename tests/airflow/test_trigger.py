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


def test_trigger_polls_with_the_vendor_profile_the_operator_used(smart_conn: Any, sandbox: Any, kick_off: Any) -> None:
    """The vendor profile rides through the deferral: the triggerer's polls send Epic-Client-ID and keep
    Epic's cadence (at most a poll a minute, although the sandbox asks for one a second)."""
    status_url = kick_off()
    trigger = SmartBulkExportTrigger(
        status_url=status_url, smart_conn_id="smart_default", end_time=time.time() + 3, poll_interval=1, vendor="epic"
    )
    assert SmartBulkExportTrigger(**trigger.serialize()[1]).vendor == "epic"
    [event] = events(trigger)
    assert event["status"] == "timeout" and event["polls"] == 1  # the next poll was due a minute later
    [poll] = [r for r in sandbox.requests_log if r["route"] == "status"]
    assert poll["headers"].get("epic-client-id") == "es-client"


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


def test_error_events_carry_the_error_and_the_operator_re_raises_the_same_kind(
    smart_conn: Any, sandbox: Any, kick_off: Any
) -> None:
    from airflow_provider_smart.exceptions import BulkExportError, SmartConfigError
    from airflow_provider_smart.triggers.bulk_export import raise_for_event

    status_url = kick_off()
    requests.delete(status_url, headers={"Authorization": f"Bearer {sandbox.issued_tokens()[-1]}"}, timeout=10)
    [event] = events(SmartBulkExportTrigger(status_url=status_url, smart_conn_id="smart_default", end_time=1e10))
    assert event["error"]["kind"] == "smart.bulk_export" and event["error"]["context"]["status"] == 404
    json.dumps(event)  # events are stored as JSON
    with pytest.raises(BulkExportError, match="no longer exists") as info:
        raise_for_event(event)
    assert info.value.status == 404

    smart_conn(raw={"conn_type": "smart", "host": "not a url", "login": "x"})
    [event] = events(SmartBulkExportTrigger(status_url=status_url, smart_conn_id="smart_default", end_time=1e10))
    with pytest.raises(SmartConfigError, match="host"):
        raise_for_event(event)


def test_timeout_events_raise_export_timeout() -> None:
    from airflow_provider_smart.exceptions import ExportTimeoutError
    from airflow_provider_smart.triggers.bulk_export import raise_for_event

    with pytest.raises(ExportTimeoutError, match="did not finish") as info:
        raise_for_event({"status": "timeout", "status_url": "https://ehr/s/1", "progress": "50%"})
    assert info.value.context["status_url"] == "https://ehr/s/1"


COLD_START_PROBE = """
import asyncio, json, sys, threading, time
import airflow.triggers.base  # loaded in any triggerer before our trigger starts
try:
    import airflow.sdk
except ImportError:  # Airflow 2.x has no Task SDK
    pass
HEAVY = ("requests", "urllib3", "jwt")  # cryptography: Airflow itself has loaded it already
ALREADY = [m for m in HEAVY if m in sys.modules]  # Airflow 2.x loads requests and urllib3 itself
from airflow_provider_smart.triggers.bulk_export import SmartBulkExportTrigger

imported_on = {}

class Spy:
    def find_spec(self, name, path=None, target=None):
        if name in HEAVY and name not in imported_on and name not in ALREADY:
            imported_on[name] = threading.current_thread() is threading.main_thread()
        return None

assert not [m for m in HEAVY if m in sys.modules and m not in ALREADY], "the trigger module must import cheaply"
sys.meta_path.insert(0, Spy())

async def main():
    trigger = SmartBulkExportTrigger(status_url=sys.argv[1], smart_conn_id="smart_default", end_time=time.time() + 60,
                                     poll_interval=1)
    events = [e.payload async for e in trigger.run()]
    print(json.dumps({"on_loop_thread": imported_on, "already": ALREADY, "events": events}))

asyncio.run(main())
"""


@pytest.mark.slow
def test_the_trigger_imports_and_builds_its_client_off_the_event_loop(
    smart_conn: Any, sandbox: Any, kick_off: Any
) -> None:
    """A cold triggerer: requests, urllib3 and PyJWT load (and the session is built) in a worker
    thread, never on the event loop the triggerer shares with other DAGs' triggers."""
    import os
    import subprocess
    import sys

    status_url = kick_off()
    result = subprocess.run(
        [sys.executable, "-c", COLD_START_PROBE, status_url],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [e["status"] for e in report["events"]] == ["success"]
    assert set(report["on_loop_thread"]) | set(report["already"]) == {"requests", "urllib3", "jwt"}
    assert not any(report["on_loop_thread"].values()), report["on_loop_thread"]
