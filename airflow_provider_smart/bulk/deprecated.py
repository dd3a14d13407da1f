"""Keyword arguments of ``BulkExportClient`` and ``download`` that a restructure moved into objects.

0.1.0 took the retry settings as ``BulkExportClient`` keywords and the download settings as ``download`` /
``download_batch`` keywords; they now live in :class:`RetryPolicy` (``retry=``) and :class:`DownloadOptions`
(the ``options`` argument). The old keywords keep working, with a ``DeprecationWarning``, until 0.3.0.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from airflow_provider_smart.bulk.models import DownloadOptions
from airflow_provider_smart.bulk.retry import RetryPolicy

T = TypeVar("T")
REMOVED_IN = "0.3.0"
# old BulkExportClient keyword -> RetryPolicy field
RETRY_KEYWORDS = {
    "sleep": "sleep",
    "transient_retries": "attempts",
    "max_retry_after": "max_retry_after",
    "backoff_base": "backoff_base",
    "backoff_max": "backoff_max",
}
DOWNLOAD_KEYWORDS = {
    name: name for name in ("max_concurrent_downloads", "check_counts", "check_resource_types", "skip_existing")
}


def _fold(
    where: str,
    current: T | None,
    factory: Callable[[], T],
    legacy: dict[str, Any],
    fields: Mapping[str, str],
    instead: str,
) -> T | None:
    """``current`` (or ``factory()``) with each legacy keyword set on field ``fields[name]``, each one warning
    ``{where}({name}=...) is deprecated ...: pass {instead}`` (``{field}`` in ``instead``: the new field)."""
    unknown = sorted(set(legacy) - set(fields))
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s): {', '.join(unknown)}")
    if not legacy:
        return current
    for name in legacy:
        warnings.warn(
            f"{where}({name}=...) is deprecated and will be removed in {REMOVED_IN}: pass "
            f"{instead.format(field=fields[name])} instead.",
            DeprecationWarning,
            stacklevel=4,  # the caller of BulkExportClient(), download() or download_batch()
        )
    return dataclasses.replace(current or factory(), **{fields[k]: v for k, v in legacy.items()})  # type: ignore[type-var]


def retry_policy(retry: RetryPolicy | None, legacy: dict[str, Any]) -> RetryPolicy | None:
    """``retry`` with the 0.1.0 keywords folded in (each one warns)."""
    return _fold("BulkExportClient", retry, RetryPolicy, legacy, RETRY_KEYWORDS, "retry=RetryPolicy({field}=...)")


def download_options(method: str, options: DownloadOptions | None, legacy: dict[str, Any]) -> DownloadOptions | None:
    """``options`` with the 0.1.0 ``download`` keywords folded in (each one warns)."""
    return _fold(
        method,
        options,
        DownloadOptions,
        legacy,
        DOWNLOAD_KEYWORDS,
        "DownloadOptions({field}=...) as the options argument",
    )
