"""Keyword arguments of ``BulkExportClient`` and ``download`` that a restructure moved into objects.

0.1.0 took the retry settings as ``BulkExportClient`` keywords and the download settings as ``download`` /
``download_batch`` keywords; they now live in :class:`RetryPolicy` (``retry=``) and :class:`DownloadOptions`
(the ``options`` argument). The old keywords keep working, with a ``DeprecationWarning``, until 0.3.0.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from airflow_provider_smart.bulk.models import DownloadOptions
from airflow_provider_smart.bulk.retry import RetryPolicy

REMOVED_IN = "0.3.0"
# old BulkExportClient keyword -> RetryPolicy field
RETRY_KEYWORDS = {
    "sleep": "sleep",
    "transient_retries": "attempts",
    "max_retry_after": "max_retry_after",
    "backoff_base": "backoff_base",
    "backoff_max": "backoff_max",
}
DOWNLOAD_KEYWORDS = ("max_concurrent_downloads", "check_counts", "check_resource_types", "skip_existing")


def _check(where: str, given: dict[str, Any], known: Any) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s): {', '.join(unknown)}")


def retry_policy(retry: RetryPolicy | None, legacy: dict[str, Any]) -> RetryPolicy | None:
    """``retry`` with the 0.1.0 keywords folded in (each one warns)."""
    _check("BulkExportClient", legacy, RETRY_KEYWORDS)
    if not legacy:
        return retry
    for name in legacy:
        warnings.warn(
            f"BulkExportClient({name}=...) is deprecated and will be removed in {REMOVED_IN}: pass "
            f"retry=RetryPolicy({RETRY_KEYWORDS[name]}=...) instead.",
            DeprecationWarning,
            stacklevel=3,  # the caller of BulkExportClient() or download()
        )
    return dataclasses.replace(retry or RetryPolicy(), **{RETRY_KEYWORDS[k]: v for k, v in legacy.items()})


def download_options(method: str, options: DownloadOptions | None, legacy: dict[str, Any]) -> DownloadOptions | None:
    """``options`` with the 0.1.0 ``download`` keywords folded in (each one warns)."""
    _check(method, legacy, DOWNLOAD_KEYWORDS)
    if not legacy:
        return options
    for name in legacy:
        warnings.warn(
            f"{method}({name}=...) is deprecated and will be removed in {REMOVED_IN}: pass "
            f"DownloadOptions({name}=...) as the options argument instead.",
            DeprecationWarning,
            stacklevel=3,  # the caller of BulkExportClient() or download()
        )
    return dataclasses.replace(options or DownloadOptions(), **legacy)
