"""Test DAG: one SmartBulkExportOperator whose arguments come from SMART_TEST_* env vars."""

from __future__ import annotations

import json
import os

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_smart.operators.bulk_export import SmartBulkExportOperator

options = json.loads(os.environ.get("SMART_TEST_EXPORT", "{}"))

with DAG("smart_export_test", schedule=None, catchup=False, tags=["test"]) as dag:
    SmartBulkExportOperator(
        task_id="export",
        smart_conn_id=os.environ.get("SMART_TEST_CONN_ID", "smart_default"),
        destination=os.environ.get("SMART_TEST_DEST", "/tmp/smart-test-export"),
        poll_interval=1,
        max_poll_interval=2,
        **options,
    )
