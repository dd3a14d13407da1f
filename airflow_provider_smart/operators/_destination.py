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


def delta_storage_options(path: Any, given: dict[str, str] | None = None) -> dict[str, str] | None:
    """delta-rs storage options for an ``ObjectStoragePath``: on ``s3://`` the Airflow AWS connection's
    credentials, endpoint and region (what its fsspec filesystem uses); ``given`` entries win.

    Built when a task runs and kept in memory only: never templated, logged or returned.
    """
    options: dict[str, str] = {}
    if getattr(path, "protocol", None) in ("s3", "s3a", "s3n"):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        hook = S3Hook(aws_conn_id=getattr(path, "conn_id", None) or "aws_default")
        credentials = hook.get_credentials()
        if credentials is not None and credentials.access_key:
            options.update(AWS_ACCESS_KEY_ID=credentials.access_key, AWS_SECRET_ACCESS_KEY=credentials.secret_key)
            if credentials.token:
                options["AWS_SESSION_TOKEN"] = credentials.token
        endpoint = hook.conn_config.get_service_endpoint_url(service_name="s3")
        if endpoint:
            options["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        region = hook.conn_region_name
        if region:
            options["AWS_REGION"] = region
    options.update(given or {})
    return options or None
