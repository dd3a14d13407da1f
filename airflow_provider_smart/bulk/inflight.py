"""Exports this provider kicked off and has not landed yet, per connection (server and client).

Epic, Oracle Health/Cerner and athenahealth hold one export per client (and Group) at a time: a second
kick-off is refused while ours still runs. The destination remembers its own export
(``.smart-export.json``), but a run writing to another destination (a new ``{{ ds }}`` folder, a retried
run with a new id) does not see it. This registry does: before a kick-off to a single-slot server the
workflow looks here for an export of the same connection, re-attaches to it when it is the same export,
and otherwise says which one holds the slot and how to cancel it (``airflow-smart cancel-export``).

Records live in a small key-value store: Airflow Variables in Airflow (``hooks.token_stores``), a JSON
file or this process's memory elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_smart.bulk.storage import write_json_atomically
from airflow_provider_smart.bulk.urls import redact_url
from airflow_provider_smart.exceptions import BulkExportError

if TYPE_CHECKING:
    from airflow_provider_smart.bulk.client import BulkExportClient
    from airflow_provider_smart.bulk.models import ExportRequest, StatusResult

log = logging.getLogger("airflow_provider_smart.bulk")


class RecordStore(Protocol):
    """Where registry records live: JSON-safe dicts by name."""

    def get(self, name: str) -> Any: ...

    def set(self, name: str, value: dict[str, Any]) -> None: ...

    def delete(self, name: str) -> None: ...


class MemoryRecords:
    """Records in this process's memory (the library's default; tests)."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Any:
        with self._lock:
            value = self._data.get(name)
            return json.loads(json.dumps(value)) if value is not None else None

    def set(self, name: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._data[name] = json.loads(json.dumps(value))

    def delete(self, name: str) -> None:
        with self._lock:
            self._data.pop(name, None)


class FileRecords:
    """Records as JSON files in a directory (one per connection), written atomically."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def get(self, name: str) -> Any:
        path = self._path(name)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def set(self, name: str, value: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self._path(name), value)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)


PROCESS_RECORDS = MemoryRecords()


class InFlightRegistry:
    """The exports in flight for one connection: ``{"status_url", "fingerprint", "level", "group_id",
    "kicked_off_at", "destination", "run_id"}`` records, newest last."""

    def __init__(self, store: RecordStore, fhir_base_url: str, client_id: str) -> None:
        self.store = store
        self.fhir_base_url = fhir_base_url.rstrip("/")
        self.client_id = client_id
        digest = hashlib.sha256(f"{self.client_id}@{self.fhir_base_url}".encode()).hexdigest()[:24]
        self.name = f"smart_inflight__{digest}"

    def records(self) -> list[dict[str, Any]]:
        try:
            data = self.store.get(self.name)
        except Exception as exc:
            log.warning("Cannot read the exports in flight (%s): a single-slot server may refuse a kick-off.", exc)
            return []
        exports = data.get("exports") if isinstance(data, dict) else None
        return [r for r in exports or [] if isinstance(r, dict) and isinstance(r.get("status_url"), str)]

    def _save(self, records: list[dict[str, Any]]) -> None:
        try:
            if records:
                self.store.set(
                    self.name, {"fhir_base_url": self.fhir_base_url, "client_id": self.client_id, "exports": records}
                )
            else:
                self.store.delete(self.name)
        except Exception as exc:
            log.warning(
                "Cannot record the exports in flight (%s): re-attaching from another destination will not work.",
                exc,
            )

    def add(self, status_url: str, **facts: Any) -> None:
        records = [r for r in self.records() if r["status_url"] != status_url]
        records.append(
            {"status_url": status_url, "kicked_off_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **facts}
        )
        self._save(records)

    def remove(self, status_url: str) -> bool:
        records = self.records()
        kept = [r for r in records if r["status_url"] != status_url]
        if len(kept) != len(records):
            self._save(kept)
        return len(kept) != len(records)

    def __repr__(self) -> str:
        return f"InFlightRegistry({self.client_id!r}@{self.fhir_base_url!r})"


def claim_slot(
    registry: InFlightRegistry, client: BulkExportClient, fingerprint: str, request: ExportRequest
) -> tuple[str, StatusResult] | None:
    """Before a kick-off to a single-slot server: our export of the same request, to re-attach to.

    Returns ``(status_url, first poll)`` when this same export (same fingerprint) is still in flight.
    Raises :class:`BulkExportError` when another export of this connection holds the slot (it names that
    export and how to cancel it). Records of exports the server no longer has are dropped.
    """
    vendor = client.vendor
    for record in reversed(registry.records()):
        same_slot = not vendor.slot_per_group or (
            record.get("level") == request.level and record.get("group_id") == request.group_id
        )
        if not same_slot:
            continue
        status_url = record["status_url"]
        if not client.transport.trusts(status_url):  # a record is no reason to send our token anywhere
            log.warning("Ignoring the recorded export %s: not on an origin this connection trusts.", status_url)
            continue
        try:
            result = client.poll(status_url)
        except BulkExportError as exc:
            log.info("The recorded export %s is gone (%s): forgetting it.", redact_url(status_url), exc)
            registry.remove(status_url)
            continue
        if record.get("fingerprint") == fingerprint:
            log.info(
                "%s holds one export at a time: re-attaching to ours with the same parameters, kicked off %s (%s).",
                vendor.title,
                record.get("kicked_off_at"),
                redact_url(status_url),
            )
            return status_url, result
        state = "complete, not yet landed" if result.complete else f"running ({result.progress or 'no progress'})"
        raise BulkExportError(
            f"{vendor.title} allows one export at a time per client{' and Group' if vendor.slot_per_group else ''}, "
            f"and another export of this connection holds the slot: {redact_url(status_url)}, kicked off "
            f"{record.get('kicked_off_at')} into {record.get('destination') or '?'} ({state}). Let it land, or cancel "
            f"it: airflow-smart cancel-export --conn-id <conn> --status-url '{status_url}' (without --status-url "
            "it lists them).",
            status_url=status_url,
            url=redact_url(status_url),
        )
    return None
