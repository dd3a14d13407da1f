"""One Bulk Data export landing in one destination: kick-off or re-attach, then record the result.

The destination itself remembers the export in flight (``.smart-export.json``: status URL and a
fingerprint of the request), so a retried task, a restarted worker or triggerer re-attaches to the
export instead of starting a second one, and already-downloaded files are skipped. ``manifest.json``
is written last, atomically: its presence means the export landed complete and checked. A destination
holding another export's files is refused rather than silently mixed.

Airflow-free: the operators are thin adapters over this module and ``airflow_provider_smart.bulk``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from airflow_provider_smart.exceptions import BulkExportError

log = logging.getLogger("airflow_provider_smart.bulk")

STATE_FILE = ".smart-export.json"
MANIFEST_FILE = "manifest.json"


def resolve_destination(destination: Any) -> Any:
    """A local ``Path`` for plain paths and ``file://`` URIs, an ``ObjectStoragePath`` for other schemes."""
    if isinstance(destination, Path) or (hasattr(destination, "open") and not isinstance(destination, str)):
        return destination
    text = str(destination)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    if "://" in text:
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath(text)
    return Path(text).expanduser()


def request_fingerprint(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_json(path: Any) -> dict[str, Any] | None:
    if not path.exists():
        return None
    with path.open("r") as handle:
        data = json.load(handle)
    return data if isinstance(data, dict) else None


def _write_json_atomically(path: Any, data: dict[str, Any]) -> None:
    partial = path.parent / f".{path.name}.part"
    with partial.open("w") as handle:
        json.dump(data, handle, indent=2, default=str)
    partial.rename(path)


class ExportJob:
    """The state of one export in ``destination``; see the module docstring."""

    def __init__(self, destination: Any, request_params: dict[str, Any]) -> None:
        self.destination = resolve_destination(destination)
        self.request_params = request_params
        self.fingerprint = request_fingerprint(request_params)
        self.state_path = self.destination / STATE_FILE
        self.manifest_path = self.destination / MANIFEST_FILE

    def completed_summary(self) -> dict[str, Any] | None:
        """The summary of this same export if it already landed here; refuses another export's files."""
        manifest = _read_json(self.manifest_path)
        if manifest is None:
            return None
        summary = manifest.get("summary") or {}
        if summary.get("fingerprint") != self.fingerprint:
            raise BulkExportError(
                f"{self.destination} already holds a completed export with other parameters "
                f"(transactionTime {summary.get('transaction_time')}). Use a fresh destination per run, "
                "e.g. destination='.../{{ ds }}/' or '.../{{ run_id }}/', or empty this one.",
                destination=str(self.destination),
            )
        return summary

    def export_in_flight(self) -> str | None:
        """The status URL of this export if an earlier attempt kicked it off."""
        state = _read_json(self.state_path)
        if state is None:
            return None
        if state.get("fingerprint") != self.fingerprint:
            raise BulkExportError(
                f"{self.destination} holds files of another export in progress ({state.get('status_url')}, "
                f"kicked off {state.get('kicked_off_at')}). Use a fresh destination, or delete "
                f"{STATE_FILE} and the files there if that export is abandoned.",
                destination=str(self.destination),
            )
        return str(state["status_url"])

    def record_kickoff(self, status_url: str) -> None:
        self.destination.mkdir(parents=True, exist_ok=True)
        _write_json_atomically(
            self.state_path,
            {
                "status_url": status_url,
                "fingerprint": self.fingerprint,
                "kicked_off_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "request": self.request_params,
            },
        )

    def forget_kickoff(self) -> None:
        if self.state_path.exists():
            self.state_path.unlink()

    def record_completion(self, status_url: str, manifest: Any, report: Any) -> dict[str, Any]:
        """Write ``manifest.json`` (the server's manifest plus our summary) and return the summary."""
        report_dict = report.to_dict()
        files = report_dict["files"]
        summary = {
            "status_url": status_url,
            "transaction_time": manifest.transaction_time,
            "request": manifest.request,
            "requires_access_token": manifest.requires_access_token,
            "destination": str(self.destination),
            "fingerprint": self.fingerprint,
            "output": [_entry(f) for f in files if f["kind"] == "output"],
            "deleted": [_entry(f) for f in files if f["kind"] == "deleted"],
            "error": [_entry(f) for f in files if f["kind"] == "error"],
            # fatal/error OperationOutcome issues from the error files: the task fails on them
            "error_issues": report_dict.get("error_issues") or [],
        }
        raw = manifest.raw if hasattr(manifest, "raw") else asdict(manifest)
        _write_json_atomically(self.manifest_path, {"manifest": raw, "summary": summary})
        self.forget_kickoff()
        return summary


def _entry(f: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_smart.bulk.urls import redact_url

    entry = {k: f.get(k) for k in ("type", "url", "path", "count", "lines", "bytes")}
    # The summary goes to XCom: a pre-signed URL's query is a credential (manifest.json keeps it whole).
    entry["url"] = redact_url(entry["url"]) if entry["url"] else None
    return entry
