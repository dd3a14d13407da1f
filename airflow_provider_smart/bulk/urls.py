"""URL helpers of the Bulk Data client (origins and redaction live in :mod:`airflow_provider_smart.origins`)."""

from __future__ import annotations

from urllib.parse import urljoin

from airflow_provider_smart.origins import OriginPolicy, is_http_url, origin_of, redact_url

__all__ = ["OriginPolicy", "is_http_url", "origin_of", "redact_url", "resolve"]


def resolve(base: str, url: str) -> str:
    """``url`` made absolute against ``base`` (servers such as IBM's sent relative manifest URLs)."""
    return urljoin(base, url)
