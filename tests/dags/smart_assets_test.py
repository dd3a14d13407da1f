"""Test DAGs: export operators with Asset outlets; the destination comes from SMART_TEST_DEST."""

from __future__ import annotations

import os

from airflow.providers.common.compat.sdk import DAG, Asset

from airflow_provider_smart.operators.bulk_export import SmartBulkExportDownloadOperator, SmartBulkExportOperator
from airflow_provider_smart.sensors.bulk_export import SmartBulkExportSensor

DEST = os.environ.get("SMART_TEST_DEST", "/tmp/smart-test-export")
# URI only: Airflow 2.x's Dataset has no name (3.x names the asset after its URI)
EXPORT_ASSET = Asset(uri="smart-bulk://test-export")
SPLIT_ASSET = Asset(uri="smart-bulk://test-split")
STATUS_URL = "{{ ti.xcom_pull(task_ids='kickoff', key='status_url') }}"

with DAG("smart_asset_export_test", schedule=None, catchup=False, tags=["test"]) as export_dag:
    SmartBulkExportOperator(
        task_id="export",
        resource_types=["Patient", "Observation"],
        destination=DEST + "/export",
        poll_interval=1,
        outlets=[EXPORT_ASSET],
    )

with DAG("smart_asset_split_test", schedule=None, catchup=False, tags=["test"]) as split_dag:
    kickoff = SmartBulkExportOperator(task_id="kickoff", resource_types=["Patient"], wait_for_completion=False)
    wait = SmartBulkExportSensor(task_id="wait", status_url=STATUS_URL, poke_interval=1, timeout=120)
    finish = SmartBulkExportDownloadOperator(
        task_id="finish", status_url=STATUS_URL, destination=DEST + "/split", outlets=[SPLIT_ASSET]
    )
    kickoff >> wait >> finish
