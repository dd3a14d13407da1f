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

import json
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
    """Record a landed export: :func:`asset_event_extra` on each ``Asset`` outlet's event, and the summary
    on the running task for :func:`openlineage_facets`.

    Call once an export has landed complete (Airflow emits the events when the task succeeds). An
    ``AssetAlias`` outlet gets an event for ``Asset(uri=<destination>)``. The summary is kept on the
    operator (:func:`keep_for_lineage`) because the OpenLineage listener calls the operator from a forked
    process after ``execute``, where fetching the XCom back could hang.
    """
    keep_for_lineage(context, "_smart_export_summary", summary)
    outlets = list(outlets or [])
    if not outlets:
        return
    from airflow_provider_smart.compat import Asset, AssetAlias

    extra = asset_event_extra(summary)
    events = context["outlet_events"]
    for outlet in outlets:
        if isinstance(outlet, Asset):
            events[outlet].extra = dict(extra)
        elif isinstance(outlet, AssetAlias) and extra["destination"]:
            events[outlet].add(Asset(uri=_asset_uri(str(extra["destination"]))), extra=alias_event_extra(extra))


def alias_event_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """An ``AssetAlias`` event's extra. Airflow 2.x and 3.0 freeze it (``frozenset(extra.items())``; 3.0
    fails the task's state update on a nested value): nested values go as JSON text there."""
    from airflow_provider_smart.version_compat import AIRFLOW_V_3_1_PLUS

    if AIRFLOW_V_3_1_PLUS:
        return dict(extra)
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v for k, v in extra.items()}


def keep_for_lineage(context: Any, attribute: str, summary: dict[str, Any]) -> None:
    """Keep a task's summary on the operator, for its ``get_openlineage_facets_on_complete``.

    On the operator running, as the context has it and as the task instance has it: on Airflow 3.0 the
    OpenLineage listener reaches the operator through a template context built afresh, whose task is
    not the object whose execute() ran; on 2.x it reads ti.task.
    """
    get = context.get if hasattr(context, "get") else (lambda key: None)
    holders = [get("task"), getattr(get("ti"), "task", None), getattr(get("task_instance"), "task", None)]
    for task in {id(t): t for t in holders if t is not None}.values():
        setattr(task, attribute, summary)


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


def openlineage_facets(operator: Any, task_instance: Any = None) -> Any:
    """``OperatorLineage`` for an export or download task that completed, or ``None`` without the provider.

    A whole export (the summary :func:`emit_asset_events` kept on the operator): input the FHIR server's
    export (namespace: the server's origin; name: the kick-off path such as ``/fhir/Group/cohort-a/$export``;
    a documentation facet lists the request parameters), output the destination (namespace and name as
    ``ObjectStoragePath`` has them) with an ``outputStatistics`` facet (resources, bytes, files). One mapped
    batch: input the export job (its status URL without query), output the destination with the batch's
    resources and files. Nothing here talks to a server or the metadata DB.
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

    summary = getattr(operator, "_smart_export_summary", None)
    batch = getattr(operator, "batch", None)
    destination = (summary or {}).get("destination") or getattr(operator, "destination", None)
    if not destination or not isinstance(destination, str):
        return OperatorLineage()
    out_namespace, out_name = destination_dataset_id(destination)

    if summary and summary.get("request"):
        namespace, name = fhir_dataset_id(str(summary["request"]))
        params = ", ".join(f"{k}={v}" for k, v in parse_qsl(urlsplit(str(summary["request"])).query))
        description = (
            f"FHIR Bulk Data export {name} ({params or 'no parameters in the URL'}); "
            f"transactionTime {summary.get('transaction_time')}"
        )
        files = [e for kind in KINDS for e in summary.get(kind) or []]
        stats = OutputStatisticsOutputDatasetFacet(
            rowCount=sum(int(e.get("lines") or 0) for e in summary.get("output") or []),
            size=sum(int(e.get("bytes") or 0) for e in files),
            fileCount=len(files),
        )
    elif isinstance(batch, dict) and batch.get("status_url"):
        namespace, name = fhir_dataset_id(str(batch["status_url"]))
        paths = list(batch.get("paths") or [])
        description = f"FHIR Bulk Data export job {name}: one batch of {len(paths)} file(s)"
        stats = OutputStatisticsOutputDatasetFacet(rowCount=batch.get("count"), fileCount=len(paths))
    else:
        return OperatorLineage(outputs=[OutputDataset(namespace=out_namespace, name=out_name)])

    documentation = DocumentationDatasetFacet(description=description)
    return OperatorLineage(
        inputs=[Dataset(namespace=namespace, name=name, facets={"documentation": documentation})],
        outputs=[OutputDataset(namespace=out_namespace, name=out_name, outputFacets={"outputStatistics": stats})],
    )
