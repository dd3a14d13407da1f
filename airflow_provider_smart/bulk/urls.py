"""URL helpers of the Bulk Data client (origins live in :mod:`airflow_provider_smart.origins`)."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from airflow_provider_smart.origins import OriginPolicy, is_http_url, origin_of

__all__ = ["OriginPolicy", "is_http_url", "origin_of", "redact_url", "resolve"]


def resolve(base: str, url: str) -> str:
    """``url`` made absolute against ``base`` (servers such as IBM's sent relative manifest URLs)."""
    return urljoin(base, url)


def redact_url(url: str) -> str:
    """``url`` without user info, query or fragment: pre-signed file URLs carry their secret in the query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?..." if parts.query else "")
