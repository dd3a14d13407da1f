"""Destinations as DAG authors write them: a local path, or a URI any Airflow object store serves."""

from __future__ import annotations

from typing import Any


def resolve_destination(destination: Any) -> Any:
    """An ``ObjectStoragePath`` for ``s3://``, ``gs://``... URIs; anything else goes to the library as is
    (plain paths and ``file://`` URIs become local paths there)."""
    if isinstance(destination, str) and "://" in destination and destination[:5].lower() != "file:":
        from airflow_provider_smart.compat import ObjectStoragePath

        return ObjectStoragePath(destination)
    return destination
