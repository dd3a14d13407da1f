"""Asset events and OpenLineage facets for :class:`~airflow_provider_smart.operators.views.SmartViewsOperator`.

One asset event per table: an ``Asset`` outlet named after a view, or whose URI ends in ``/<view name>`` or
is one of the table's locations, gets that table's extra; an ``AssetAlias`` outlet gets an event for every table, for
``Asset(uri=<the table's location>)``; any other ``Asset`` outlet gets the run's extra (every table).
OpenLineage: the landed export folder is the input; every table in every format is an output dataset
with a schema facet and its row count. Nothing secret is at hand here (no storage credentials).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from airflow_provider_smart.operators._lineage_assets import (
    _asset_uri,
    alias_event_extra,
    destination_dataset_id,
    keep_for_lineage,
)

log = logging.getLogger(__name__)


def table_extra(summary: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``extra`` of one table's asset event (plain JSON)."""
    table = summary["tables"][name]
    return {
        "table": name,
        "resource": table.get("resource"),
        "outputs": table.get("outputs"),
        "rows_staged": table.get("rows_staged"),
        "resources_replaced": table.get("resources_replaced"),
        "transactionTime": summary.get("transaction_time"),
        "since": summary.get("since"),
        "incremental": summary.get("incremental"),
        "deletions_not_reported": summary.get("deletions_not_reported"),
        "export": summary.get("export"),
    }


def run_extra(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "tables": {name: table_extra(summary, name) for name in sorted(summary.get("tables") or {})},
        "transactionTime": summary.get("transaction_time"),
        "deletions_not_reported": summary.get("deletions_not_reported"),
        "export": summary.get("export"),
        "output": summary.get("output"),
    }


def table_uri(table: dict[str, Any]) -> str:
    """The URI that stands for a table: its Delta location, else its Parquet one, else the DuckDB file."""
    outputs = table.get("outputs") or {}
    for fmt in ("delta", "parquet", "duckdb"):
        if fmt in outputs and outputs[fmt].get("location"):
            return _asset_uri(str(outputs[fmt]["location"]).replace("#", "/"))
    raise ValueError("a table without outputs")


def _locations(table: dict[str, Any]) -> set[str]:
    return {_asset_uri(str(o.get("location"))) for o in (table.get("outputs") or {}).values() if o.get("location")}


def emit_table_events(context: Any, outlets: Iterable[Any] | None, summary: dict[str, Any]) -> None:
    keep_for_lineage(context, "_smart_tables_summary", summary)
    outlets = list(outlets or [])
    if not outlets:
        return
    from airflow_provider_smart.compat import Asset, AssetAlias

    events = context["outlet_events"]
    tables = summary.get("tables") or {}
    for outlet in outlets:
        if isinstance(outlet, AssetAlias):
            if not _alias_events_supported(outlet):
                continue
            for name in sorted(tables):
                events[outlet].add(
                    Asset(uri=table_uri(tables[name])), extra=alias_event_extra(table_extra(summary, name))
                )
        elif isinstance(outlet, Asset):
            match = [n for n in sorted(tables) if _names_table(outlet, n, tables[n])]
            events[outlet].extra = table_extra(summary, match[0]) if match else run_extra(summary)


def _alias_events_supported(alias: Any) -> bool:
    """Airflow 2.x's ``dags test`` cannot record dataset-alias events (its alias rows are not there to flush):
    on 2.x an alias outlet is skipped with a warning (README, "Airflow versions"); name the tables' URIs instead."""
    from airflow_provider_smart.version_compat import AIRFLOW_V_3_0_PLUS

    if not AIRFLOW_V_3_0_PLUS:
        log.warning("Airflow 2.x: no events for the dataset alias %r; list the tables' Datasets as outlets", alias)
    return AIRFLOW_V_3_0_PLUS


def _names_table(asset: Any, name: str, table: dict[str, Any]) -> bool:
    """An Asset stands for a table when its name is the view's, its URI ends in ``/<view>``
    (``smart-table://daily/observation_flat``), or its URI is one of the table's locations."""
    uri = str(asset.uri).rstrip("/")
    return (
        getattr(asset, "name", None) == name
        or uri.rsplit("/", 1)[-1] == name
        or uri in _locations(table) | {table_uri(table)}
    )


def tables_lineage(operator: Any) -> Any:
    """``OperatorLineage`` of a commit that completed, or None without the OpenLineage provider."""
    try:
        from airflow.providers.common.compat.openlineage.facet import (
            Dataset,
            OutputDataset,
            OutputStatisticsOutputDatasetFacet,
            SchemaDatasetFacet,
            SchemaDatasetFacetFields,
        )
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None
    summary = getattr(operator, "_smart_tables_summary", None)
    if not summary:
        return OperatorLineage()
    namespace, name = destination_dataset_id(str(summary["export"]))
    outputs = []
    for table in (summary.get("tables") or {}).values():
        schema = SchemaDatasetFacet(
            fields=[SchemaDatasetFacetFields(name=f["name"], type=f["type"]) for f in table.get("schema") or []]
        )
        for _, out in sorted((table.get("outputs") or {}).items()):
            out_namespace, out_name = destination_dataset_id(str(out.get("location") or "").replace("#", "/"))
            stats = OutputStatisticsOutputDatasetFacet(rowCount=out.get("rows"))
            outputs.append(
                OutputDataset(
                    namespace=out_namespace,
                    name=out_name,
                    facets={"schema": schema},
                    outputFacets={"outputStatistics": stats},
                )
            )
    return OperatorLineage(inputs=[Dataset(namespace=namespace, name=name)], outputs=outputs)
