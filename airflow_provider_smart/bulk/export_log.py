"""``log.ndjson``: the standard Bulk Data export log, written beside the landed files.

The format is the one SMART's ``bulk-data-client`` writes and Cumulus ETL (and SMART Fetch) read: the
"Bulk Data Export Log Items" of the bulk-data-client wiki. One JSON object per line::

    {"exportId": ..., "timestamp": "2026-12-06T03:00:00.000+00:00", "eventId": "kickoff", "eventDetail": {...}}

Events and their ``eventDetail`` (``null`` where we do not know a value):

* ``kickoff``: ``exportUrl`` (the kick-off URL with its query), ``errorCode``/``errorBody`` (``null`` when
  accepted), ``softwareName``/``softwareVersion``/``softwareReleaseDate``/``fhirVersion`` (the server's
  CapabilityStatement), ``requestParameters`` (one value per parameter, repeats comma-joined; ``patient``
  left out, as the format asks), ``responseHeaders``. The row also has ``_client``/``_clientVersion``.
* ``status_progress``: ``body``, ``xProgress``, ``retryAfter``, one per in-progress poll we make.
* ``status_complete``: ``transactionTime``; then ``status_page_complete`` (this manifest's
  ``outputFileCount``/``deletedFileCount``/``errorFileCount``) and ``manifest_complete`` (the totals and
  ``totalManifests``; pages are merged before we see them, so 1).
* ``status_error``: ``body``, ``code``, ``message``, ``responseHeaders``.
* ``download_request``: ``fileUrl``, ``itemType`` (output, deleted, error), ``resourceType``.
* ``download_complete``: ``fileUrl``, ``resourceCount``, ``fileSize`` (bytes on disk, after gzip).
* ``download_error``: ``fileUrl``, ``body``, ``code``, ``message``, ``responseHeaders``.
* ``export_complete``: ``files``, ``resources``, ``bytes``, ``attachments`` (``null``: not fetched),
  ``duration`` (milliseconds since the first event of this export).

What Cumulus ETL reads from it is the Group of ``kickoff``'s ``exportUrl`` and ``status_complete``'s
``transactionTime``. ``exportId`` is the export's status URL (its query left out), so every try of one
export writes the same id; a kick-off the server refused gets a random one. File URLs are logged without
their query: a pre-signed URL's query is a credential.

Local destinations get each event appended as it happens; object stores cannot append, so the log is
rewritten whole (atomically) at each step: kick-off, completion, the end of the downloads.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow_provider_smart.bulk.storage import replace
from airflow_provider_smart.bulk.urls import redact_url

log = logging.getLogger("airflow_provider_smart.bulk")

LOG_FILE = "log.ndjson"
CLIENT_NAME = "airflow-provider-smart"
MAX_LOGGED_BODY = 10_000  # characters of an error body kept in the log


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def plain_url(url: str | None) -> str | None:
    """``url`` without its query (a pre-signed URL's query is a credential)."""
    return redact_url(url).split("?", 1)[0] if url else url


def _body(content: bytes | str | None) -> Any:
    if content is None:
        return None
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:MAX_LOGGED_BODY]
    return parsed if isinstance(parsed, dict) else text[:MAX_LOGGED_BODY]


def request_parameters(params: Iterable[tuple[str, str]], body: dict[str, Any] | None) -> dict[str, str]:
    """One value per parameter, repeats comma-joined, from GET query pairs or a POST ``Parameters`` body;
    ``patient`` is left out (the format says not to log it)."""
    pairs: list[tuple[str, str]] = list(params)
    for parameter in (body or {}).get("parameter") or []:
        value = next((v for k, v in parameter.items() if k.startswith("value")), None)
        if isinstance(value, bool):
            value = "true" if value else "false"
        pairs.append((parameter.get("name", ""), value if isinstance(value, str) else json.dumps(value)))
    merged: dict[str, str] = {}
    for name, value in pairs:
        if name == "patient":
            continue
        merged[name] = f"{merged[name]},{value}" if name in merged else value
    return merged


class ExportLog:
    """The ``log.ndjson`` of one destination (see the module docstring). Thread-safe.

    An existing log is read first: a retried task continues it (same ``exportId``, its ``duration``
    counted from the first try), and files it already logged as complete are not logged again.
    """

    def __init__(self, destination: Any, *, version: str | None = None) -> None:
        self.destination = destination
        self.path = destination / LOG_FILE
        self.version = version or _package_version()
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self.export_id = str(uuid.uuid4())
        self._read_existing()

    # -- what is there already ----------------------------------------------------------------------
    def _read_existing(self) -> None:
        try:
            if not self.path.exists():
                return
            with self.path.open("rb") as handle:
                for line in handle:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict):
                        self._rows.append(row)
        except OSError as exc:
            log.warning("Could not read the export log %s (%s); starting a new one.", self.path, exc)
            self._rows = []
        if self._rows and isinstance(self._rows[-1].get("exportId"), str):
            self.export_id = self._rows[-1]["exportId"]

    def has_event(self, event_id: str) -> bool:
        return any(r.get("eventId") == event_id and r.get("exportId") == self.export_id for r in self._rows)

    def logged_files(self) -> set[str]:
        """File URLs (query left out) already logged as downloaded for this export."""
        return {
            str((r.get("eventDetail") or {}).get("fileUrl"))
            for r in self._rows
            if r.get("eventId") == "download_complete" and r.get("exportId") == self.export_id
        }

    def _started_at(self) -> datetime | None:
        for row in self._rows:
            if row.get("exportId") == self.export_id:
                try:
                    return datetime.fromisoformat(str(row.get("timestamp")))
                except ValueError:
                    return None
        return None

    # -- writing ------------------------------------------------------------------------------------
    def use_export_id(self, status_url: str) -> None:
        """From now on, events belong to the export at ``status_url``."""
        self.export_id = plain_url(status_url) or self.export_id

    def event(self, event_id: str, detail: dict[str, Any]) -> None:
        row: dict[str, Any] = {"exportId": self.export_id, "timestamp": _now(), "eventId": event_id}
        row["eventDetail"] = detail
        if event_id == "kickoff":
            row.update(_client=CLIENT_NAME, _clientVersion=self.version)
        with self._lock:
            self._rows.append(row)
            self._pending.append(row)
            if isinstance(self.path, Path):
                self._flush_locked()

    def flush(self) -> None:
        """Write what is pending (on object stores: rewrite the whole log). Never raises: the log must not
        fail an export whose data landed."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        try:
            self.destination.mkdir(parents=True, exist_ok=True)
            if isinstance(self.path, Path):
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.writelines(json.dumps(r, default=str) + "\n" for r in self._pending)
            else:
                partial = self.destination / f".{LOG_FILE}.{uuid.uuid4().hex[:8]}.part"
                with partial.open("wb") as handle:
                    handle.write("".join(json.dumps(r, default=str) + "\n" for r in self._rows).encode())
                replace(partial, self.path)
            self._pending.clear()
        except Exception as exc:
            log.warning("Could not write the export log %s (%s: %s).", self.path, type(exc).__name__, exc)

    # -- the events ---------------------------------------------------------------------------------
    def kickoff(
        self,
        export_url: str,
        parameters: dict[str, str],
        capability: dict[str, Any] | None,
        *,
        error_code: int | None = None,
        error_body: Any = None,
        response_headers: dict[str, str] | None = None,
    ) -> None:
        statement = capability or {}
        software: dict[str, Any] = statement["software"] if isinstance(statement.get("software"), dict) else {}
        self.event(
            "kickoff",
            {
                "exportUrl": export_url,
                "errorCode": error_code,
                "errorBody": error_body,
                "softwareName": software.get("name"),
                "softwareVersion": software.get("version"),
                "softwareReleaseDate": software.get("releaseDate"),
                "fhirVersion": statement.get("fhirVersion"),
                "requestParameters": parameters,
                "responseHeaders": response_headers,
            },
        )

    def status_progress(self, progress: str | None, retry_after: float | None) -> None:
        retry = None if retry_after is None else f"{retry_after:g}"
        self.event("status_progress", {"body": None, "xProgress": progress, "retryAfter": retry})

    def status_error(self, message: str, code: int | None = None, body: Any = None) -> None:
        self.event("status_error", {"body": body, "code": code, "message": message, "responseHeaders": None})

    def status_complete(self, manifest: Any) -> None:
        counts = {kind: len(getattr(manifest, kind)) for kind in ("output", "deleted", "error")}
        transaction_time = manifest.transaction_time
        self.event("status_complete", {"transactionTime": transaction_time})
        self.event(
            "status_page_complete",
            {
                "transactionTime": transaction_time,
                "outputFileCount": counts["output"],
                "deletedFileCount": counts["deleted"],
                "errorFileCount": counts["error"],
            },
        )
        self.event(
            "manifest_complete",
            {
                "transactionTime": transaction_time,
                "totalOutputFileCount": counts["output"],
                "totalDeletedFileCount": counts["deleted"],
                "totalErrorFileCount": counts["error"],
                "totalManifests": 1,
            },
        )

    def download_request(self, entry: dict[str, Any]) -> None:
        self.event(
            "download_request",
            {"fileUrl": plain_url(entry.get("url")), "itemType": entry.get("kind"), "resourceType": entry.get("type")},
        )

    def download_complete(self, url: str, resources: int | None, size: int | None) -> None:
        self.event("download_complete", {"fileUrl": plain_url(url), "resourceCount": resources, "fileSize": size})

    def download_error(self, url: str, message: str) -> None:
        detail = {"fileUrl": plain_url(url), "body": None, "code": None, "message": message, "responseHeaders": None}
        self.event("download_error", detail)

    def export_complete(self, files: int, resources: int, size: int) -> None:
        started = self._started_at()
        duration = int((datetime.now(UTC) - started).total_seconds() * 1000) if started else 0
        self.event(
            "export_complete",
            {"files": files, "resources": resources, "bytes": size, "attachments": None, "duration": duration},
        )


def _package_version() -> str:
    from airflow_provider_smart import __version__

    return __version__
