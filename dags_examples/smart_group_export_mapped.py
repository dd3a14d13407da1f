"""A Group export split into kick-off, a deferrable wait, and mapped parallel downloads.

How a big export scales past one worker: the sensor plans the manifest's files into at most
``max_batches`` batches, each batch is a mapped download task, and a last unmapped download writes
``manifest.json`` once every file is there, then deletes the export on the server.

The destination root is the ``export_root`` param (default: ``SMART_EXPORT_ROOT``, else
``/tmp/smart-exports``); trigger with ``{"export_root": "s3://aws_default@bucket/fhir"}`` to land in S3.
The finishing task updates the ``GROUP_EXPORT`` asset: ``smart_group_export_consumer`` runs on it.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.providers.common.compat.sdk import DAG, Asset, Param

from airflow_provider_smart.operators.bulk_export import SmartBulkExportDownloadOperator, SmartBulkExportOperator
from airflow_provider_smart.sensors.bulk_export import SmartBulkExportSensor

EXPORT_ROOT = os.environ.get("SMART_EXPORT_ROOT", "/tmp/smart-exports")
DESTINATION = "{{ params.export_root }}/group/{{ ts_nodash }}"
# The event's extra says where this run's files are (see smart_group_export_consumer).
GROUP_EXPORT = Asset(uri="smart-bulk://cohort-a")

with DAG(
    dag_id="smart_group_export_mapped",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"export_root": Param(EXPORT_ROOT, type="string", description="local path or object storage URI")},
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
    kickoff >> wait >> download >> finish
