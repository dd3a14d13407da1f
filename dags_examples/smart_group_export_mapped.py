"""A Group export split into kick-off, a deferrable wait, and mapped parallel downloads.

How a big export scales past one worker: the sensor plans the manifest's files into at most
``max_batches`` batches, each batch is a mapped download task, and a last unmapped download writes
``manifest.json`` once every file is there, then deletes the export on the server.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_smart.operators.bulk_export import SmartBulkExportDownloadOperator, SmartBulkExportOperator
from airflow_provider_smart.sensors.bulk_export import SmartBulkExportSensor

EXPORT_ROOT = os.environ.get("SMART_EXPORT_ROOT", "/tmp/smart-exports")
DESTINATION = EXPORT_ROOT + "/group/{{ ts_nodash }}"

with DAG(
    dag_id="smart_group_export_mapped",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
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
        max_batches=4,
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
    )
    kickoff >> wait >> download >> finish
