"""A Group export split into kick-off, a deferrable wait, and mapped parallel downloads.

How a big export scales past one worker: the sensor plans the manifest's files into at most
``max_batches`` batches, each batch is a mapped download task, and a last unmapped download writes
``manifest.json`` once every file is there, then deletes the export on the server.

The destination root is the ``export_root`` param (default: ``SMART_EXPORT_ROOT``, else
``/tmp/smart-exports``); trigger with ``{"export_root": "s3://aws_default@bucket/fhir"}`` to land in S3.
The finishing task updates the ``GROUP_EXPORT`` asset: ``smart_group_export_consumer`` runs on it.

Then the files become tables: ``tables_convert`` (mapped, ``SHARES`` tasks, spread over the workers) runs the
bundled SQL on FHIR views over a share of the files each, and ``tables_commit`` writes one Delta table per
view under ``<export_root>/tables/delta/`` (one transaction each). Trigger with ``{"since": "<instant>"}``
(e.g. the last run's ``transactionTime``) for an incremental export: its changed resources' rows are
replaced and its deleted resources' rows removed. ``smart_tables_consumer`` queries the tables.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.providers.common.compat.sdk import DAG, Asset, Param

from airflow_provider_smart.operators.bulk_export import SmartBulkExportDownloadOperator, SmartBulkExportOperator
from airflow_provider_smart.operators.views import SmartViewsOperator
from airflow_provider_smart.sensors.bulk_export import SmartBulkExportSensor
from airflow_provider_smart.tables import BUNDLED_VIEWS

EXPORT_ROOT = os.environ.get("SMART_EXPORT_ROOT", "/tmp/smart-exports")
DESTINATION = "{{ params.export_root }}/group/{{ ts_nodash }}"
# The event's extra says where this run's files are (see smart_group_export_consumer).
GROUP_EXPORT = Asset(uri="smart-bulk://cohort-a")
SHARES = 4
# One asset per table (a URI ending in the view's name gets that table's event; see smart_tables_consumer).
TABLE_ASSETS = [
    Asset(uri=f"smart-table://cohort-a/{view}")  # URI only: 2.x Datasets have no name
    for view in ("patient_demographics", "observation_flat", "observation_codes", "condition_flat")
]

with DAG(
    dag_id="smart_group_export_mapped",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "export_root": Param(EXPORT_ROOT, type="string", description="local path or object storage URI"),
        "since": Param("", type="string", description="_since of an incremental export (empty: everything)"),
    },
    # A worker lost mid-download (a node drained, an OOM kill) fails its task; the retry skips the files
    # that already landed and fetches the rest.
    default_args={"retries": 2, "retry_delay": timedelta(seconds=5)},
    tags=["smart", "fhir", "bulk-data"],
) as dag:
    kickoff = SmartBulkExportOperator(
        task_id="kickoff",
        export_level="group",
        group_id="cohort-a",
        resource_types=["Patient", "Observation", "Condition"],
        since="{{ params.since }}",
        wait_for_completion=False,
    )
    wait = SmartBulkExportSensor(
        task_id="wait",
        status_url="{{ ti.xcom_pull(task_ids='kickoff', key='status_url') }}",
        max_batches=16,
        deferrable=True,
        poke_interval=1,
        timeout=3600,
    )
    download = SmartBulkExportDownloadOperator.partial(
        task_id="download", destination=DESTINATION, delete_on_success=False
    ).expand(batch=wait.output)
    finish = SmartBulkExportDownloadOperator(
        task_id="finish",
        status_url="{{ ti.xcom_pull(task_ids='kickoff', key='status_url') }}",
        destination=DESTINATION,
        outlets=[GROUP_EXPORT],
    )
    tables = {
        "export": finish.output,
        "views": str(BUNDLED_VIEWS),
        "destination": "{{ params.export_root }}/tables",
        "shares": SHARES,
    }
    convert = SmartViewsOperator.partial(task_id="tables_convert", **tables).expand(share=list(range(SHARES)))
    commit = SmartViewsOperator(task_id="tables_commit", formats=["delta"], outlets=TABLE_ASSETS, **tables)
    kickoff >> wait >> download >> finish >> convert >> commit
