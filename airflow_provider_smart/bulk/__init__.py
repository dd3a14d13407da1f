"""The Airflow-free FHIR Bulk Data client: kick-off, status, manifest, download, cancel.

Importing this package is cheap: names are loaded on first use (PEP 562), so e.g. the Airflow
trigger can import :mod:`airflow_provider_smart.bulk.retry` without pulling in ``requests``.

    client = BulkExportClient(session, "https://ehr.example/fhir")
    status_url = client.kick_off(ExportRequest(level="group", group_id="g1", resource_types=["Patient"]))
    manifest = client.wait(status_url)
    report = client.download(manifest, "/data/export", DownloadOptions(max_concurrent_downloads=4))
    client.cancel(status_url)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_smart.bulk.client import BulkExportClient
    from airflow_provider_smart.bulk.kickoff import KickoffRequest, build_kickoff
    from airflow_provider_smart.bulk.models import (
        DownloadOptions,
        DownloadReport,
        ExportManifest,
        ExportRequest,
        FileReport,
        ManifestFile,
        StatusResult,
    )
    from airflow_provider_smart.bulk.ndjson import NdjsonScanner
    from airflow_provider_smart.bulk.plan import batch, plan_batches, plan_files, safe_type_name
    from airflow_provider_smart.bulk.retry import RetryPolicy, backoff_delay, next_poll_delay, parse_retry_after
    from airflow_provider_smart.bulk.vendors import VendorProfile, detect_profile, profile_named
    from airflow_provider_smart.bulk.workflow import ExportWorkflow
    from airflow_provider_smart.exceptions import (
        BulkDownloadError,
        BulkExportError,
        ExportThrottledError,
        ExportTimeoutError,
        ExportWindowError,
    )

_EXPORTS = {
    "BulkExportClient": "client",
    "KickoffRequest": "kickoff",
    "build_kickoff": "kickoff",
    "DownloadOptions": "models",
    "DownloadReport": "models",
    "ExportManifest": "models",
    "ExportRequest": "models",
    "FileReport": "models",
    "ManifestFile": "models",
    "StatusResult": "models",
    "NdjsonScanner": "ndjson",
    "batch": "plan",
    "plan_batches": "plan",
    "plan_files": "plan",
    "safe_type_name": "plan",
    "RetryPolicy": "retry",
    "backoff_delay": "retry",
    "next_poll_delay": "retry",
    "parse_retry_after": "retry",
    "ExportWorkflow": "workflow",
    "VendorProfile": "vendors",
    "detect_profile": "vendors",
    "profile_named": "vendors",
}
_ERRORS = ("BulkDownloadError", "BulkExportError", "ExportThrottledError", "ExportTimeoutError", "ExportWindowError")

__all__ = [
    "BulkDownloadError",
    "BulkExportClient",
    "BulkExportError",
    "DownloadOptions",
    "DownloadReport",
    "ExportManifest",
    "ExportRequest",
    "ExportThrottledError",
    "ExportTimeoutError",
    "ExportWindowError",
    "ExportWorkflow",
    "FileReport",
    "KickoffRequest",
    "ManifestFile",
    "NdjsonScanner",
    "RetryPolicy",
    "StatusResult",
    "VendorProfile",
    "backoff_delay",
    "batch",
    "build_kickoff",
    "detect_profile",
    "next_poll_delay",
    "parse_retry_after",
    "plan_batches",
    "plan_files",
    "profile_named",
    "safe_type_name",
]


def __getattr__(name: str) -> Any:
    if name in _ERRORS:
        from airflow_provider_smart import exceptions

        return getattr(exceptions, name)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
