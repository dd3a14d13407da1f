"""Daily incremental system-level Bulk Data export.

Each run exports what changed since the previous successful run (``since="auto"``) into its own folder
under ``SMART_EXPORT_ROOT`` (any ObjectStoragePath URI works too, e.g. ``s3://aws_default@bucket/fhir``).
"""

from __future__ import annotations

import os

import pendulum
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_smart.operators.bulk_export import SmartBulkExportOperator

EXPORT_ROOT = os.environ.get("SMART_EXPORT_ROOT", "/tmp/smart-exports")

with DAG(
    dag_id="smart_daily_export",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # an incremental export starts where the previous one ended
    tags=["smart", "fhir", "bulk-data"],
) as dag:
    SmartBulkExportOperator(
        task_id="export",
        smart_conn_id="smart_default",
        export_level="system",
        resource_types=["Patient", "Observation", "Condition", "Encounter"],
        since="auto",
        destination=EXPORT_ROOT + "/daily/{{ ts_nodash }}",
        poll_interval=1,
        max_poll_interval=60,
        retries=2,
    )
