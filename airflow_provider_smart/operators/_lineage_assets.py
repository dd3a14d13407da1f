"""Asset events and OpenLineage facets for the Bulk Data export operators.

Kept apart from the operators so they stay small:

* :func:`emit_asset_events` gives every Airflow ``Asset`` in a task's ``outlets`` an event ``extra``
  describing the export that just landed (:func:`asset_event_extra`), so a DAG scheduled on that asset
  knows where the files are and what they hold. An ``AssetAlias`` outlet gets an event for an asset
  named after the destination.
* :func:`openlineage_facets` is what ``get_openlineage_facets_on_complete`` returns: the FHIR server's
  export as the input dataset, the destination as the output dataset (with row, byte and file counts).
  ``apache-airflow-providers-openlineage`` is optional: it is imported here, lazily, and without it
  the function returns ``None``.

Nothing secret goes into either: file URLs are left out (pre-signed ones are capabilities), the
request URL loses its query string in the dataset name, and no token or key is ever at hand here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

KINDS = ("output", "deleted", "error")


def _per_type(entries: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for entry in entries:
        row = totals.setdefault(str(entry.get("type") or "?"), {"files": 0, "resources": 0, "bytes": 0})
        row["files"] += 1
        row["resources"] += int(entry.get("lines") or entry.get("count") or 0)
        row["bytes"] += int(entry.get("bytes") or 0)
    return totals


def asset_event_extra(summary: dict[str, Any]) -> dict[str, Any]:
    """The ``extra`` of the asset event for one landed export (plain JSON, nothing secret).

    ``destination`` (where ``manifest.json`` and the NDJSON files are), ``transactionTime`` (the next
    incremental export's ``_since``), ``request`` (the kick-off URL), ``counts`` (resources per type),
    ``files`` (per type: files, resources, bytes), ``deleted_total``, ``error_total`` (resources in the
    deleted and error files), ``error_issues`` (fatal/error issues; a failed export emits no event),
    ``files_total`` and ``bytes_total``.
    """
    output = list(summary.get("output") or [])
    per_type = _per_type(output)
    everything = [e for kind in KINDS for e in summary.get(kind) or []]
    return {
        "destination": summary.get("destination"),
        "transactionTime": summary.get("transaction_time"),
        "request": summary.get("request"),
        "counts": {rtype: row["resources"] for rtype, row in sorted(per_type.items())},
        "files": dict(sorted(per_type.items())),
        "deleted_total": sum(int(e.get("lines") or 0) for e in summary.get("deleted") or []),
        "error_total": sum(int(e.get("lines") or 0) for e in summary.get("error") or []),
        "error_issues": len(summary.get("error_issues") or []),
        "files_total": len(everything),
        "bytes_total": sum(int(e.get("bytes") or 0) for e in everything),
    }


def emit_asset_events(context: Any, outlets: Iterable[Any] | None, summary: dict[str, Any]) -> None:
    """Attach :func:`asset_event_extra` to the event Airflow emits for each ``Asset`` outlet.

    Call once an export has landed complete (Airflow emits the events when the task succeeds). An
    ``AssetAlias`` outlet gets an event for ``Asset(uri=<destination>)``.
    """
    outlets = list(outlets or [])
    if not outlets:
        return
    from airflow.sdk import Asset, AssetAlias

    extra = asset_event_extra(summary)
    events = context["outlet_events"]
    for outlet in outlets:
        if isinstance(outlet, Asset):
            events[outlet].extra = dict(extra)
        elif isinstance(outlet, AssetAlias) and extra["destination"]:
            events[outlet].add(Asset(uri=_asset_uri(str(extra["destination"]))), extra=dict(extra))


def _asset_uri(destination: str) -> str:
    """A URI for a destination: local paths become ``file://`` URIs; a ``conn_id@`` prefix is dropped."""
    if "://" not in destination:
        return f"file://{destination}"
    scheme, _, rest = destination.partition("://")
    head, slash, tail = rest.partition("/")
    return f"{scheme}://{head.rsplit('@', 1)[-1]}{slash}{tail}"


# --- OpenLineage ------------------------------------------------------------------------------------


def destination_dataset_id(destination: str) -> tuple[str, str]:
    """OpenLineage ``(namespace, name)`` of a destination, as ``ObjectStoragePath.namespace``/``key`` give it.

    ``s3://aws_default@bucket/fhir/x`` -> ``("s3://bucket", "fhir/x")``; ``/data/x`` -> ``("file", "/data/x")``.
    """
    uri = _asset_uri(destination)
    scheme, _, rest = uri.partition("://")
    if scheme == "file":
        return "file", "/" + rest.lstrip("/")
    bucket, _, key = rest.partition("/")
    return (f"{scheme}://{bucket}" if bucket else scheme), key.lstrip("/")


def fhir_dataset_id(url: str) -> tuple[str, str]:
    """OpenLineage ``(namespace, name)`` of a FHIR endpoint: its origin, and its path without the query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}", parts.path or "/"


def _fhir_base_url(operator: Any) -> str | None:
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(operator.smart_conn_id).host or None
    except Exception:
        return None


def openlineage_facets(operator: Any, task_instance: Any) -> Any:
    """``OperatorLineage`` for an export or download task that completed, or ``None``.

    Input: the FHIR server's export (namespace: the server's origin; name: the kick-off path, e.g.
    ``/fhir/Group/cohort-a/$export``; a documentation facet lists the request parameters). Output: the
    destination (namespace and name as ``ObjectStoragePath`` has them) with an ``outputStatistics`` facet:
    resources, bytes and files landed by this task.
    """
    try:
        from airflow.providers.common.compat.openlineage.facet import (
            Dataset,
            DocumentationDatasetFacet,
            OutputDataset,
            OutputStatisticsOutputDatasetFacet,
        )
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None

    result = task_instance.xcom_pull(task_ids=operator.task_id, key="return_value") if task_instance else None
    result = result if isinstance(result, dict) else {}
    destination = result.get("destination") or getattr(operator, "destination", None)
    if not destination or not isinstance(destination, str):
        return OperatorLineage()

    request = result.get("request")
    if request:
        namespace, name = fhir_dataset_id(str(request))
        query = urlsplit(str(request)).query
        params = ", ".join(f"{k}={v}" for k, v in parse_qsl(query)) or "no parameters in the URL"
        description = f"FHIR Bulk Data export {name} ({params}); transactionTime {result.get('transaction_time')}"
    else:
        base = _fhir_base_url(operator) or str((getattr(operator, "batch", None) or {}).get("status_url") or "")
        if not base:
            out_namespace, out_name = destination_dataset_id(destination)
            return OperatorLineage(outputs=[OutputDataset(namespace=out_namespace, name=out_name)])
        namespace, name = fhir_dataset_id(base)
        description = "FHIR Bulk Data export (one batch of its files)"
    documentation = DocumentationDatasetFacet(description=description)
    inputs = [Dataset(namespace=namespace, name=name, facets={"documentation": documentation})]

    if "output" in result:  # a whole export's summary
        files = [e for kind in KINDS for e in result.get(kind) or []]
        rows = sum(int(e.get("lines") or 0) for e in result.get("output") or [])
        size = sum(int(e.get("bytes") or 0) for e in files)
        count = len(files)
    else:  # one batch's totals
        rows, size, count = int(result.get("lines") or 0), int(result.get("bytes") or 0), int(result.get("files") or 0)
    out_namespace, out_name = destination_dataset_id(destination)
    stats = OutputStatisticsOutputDatasetFacet(rowCount=rows, size=size, fileCount=count)
    outputs = [OutputDataset(namespace=out_namespace, name=out_name, outputFacets={"outputStatistics": stats})]
    return OperatorLineage(inputs=inputs, outputs=outputs)
