"""Daily incremental export into SQL on FHIR views into Delta tables, the conversion spread over workers.

``export`` lands what changed since the last successful run (``since="auto"``; the first run exports
everything). ``convert`` is mapped: each task turns a share of the files into the views' rows. ``commit``
writes every table in one Delta transaction each: a full export replaces a table, an incremental one
replaces the rows of each changed resource and removes the deleted ones. Tables live under
``SMART_TABLES_ROOT`` (``delta/<view>``), any ObjectStoragePath URI too (``s3://aws_default@bucket/tables``).
``smart_tables_consumer`` runs on the tables' asset events.
"""

from __future__ import annotations

import os

import pendulum
from airflow.providers.common.compat.sdk import DAG, Asset

from airflow_provider_smart.operators.bulk_export import SmartBulkExportOperator
from airflow_provider_smart.operators.views import SmartViewsOperator
from airflow_provider_smart.tables import BUNDLED_VIEWS

EXPORT_ROOT = os.environ.get("SMART_EXPORT_ROOT", "/tmp/smart-exports")
TABLES_ROOT = os.environ.get("SMART_TABLES_ROOT", "/tmp/smart-tables")
SHARES = 2
# An Asset whose URI ends in a view's name gets that table's event (see smart_tables_consumer).
TABLE_ASSETS = [
    Asset(uri=f"smart-table://daily/{view}")
    for view in ("patient_demographics", "observation_flat", "observation_codes", "condition_flat")
]

with DAG(
    dag_id="smart_daily_tables",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # each incremental run applies on top of the previous one
    tags=["smart", "fhir", "bulk-data", "sql-on-fhir"],
) as dag:
    export = SmartBulkExportOperator(
        task_id="export",
        resource_types=["Patient", "Observation", "Condition"],
        since="auto",
        destination=EXPORT_ROOT + "/daily-tables/{{ ts_nodash }}",
        poll_interval=1,
        retries=2,
    )
    tables = {"export": export.output, "views": str(BUNDLED_VIEWS), "destination": TABLES_ROOT, "shares": SHARES}
    convert = SmartViewsOperator.partial(task_id="convert", retries=2, **tables).expand(share=list(range(SHARES)))
    # depends_on_past: an incremental run must not be applied over a failed one (the commit would refuse).
    commit = SmartViewsOperator(
        task_id="commit", formats=["delta"], depends_on_past=True, outlets=TABLE_ASSETS, retries=2, **tables
    )
    export >> convert >> commit
