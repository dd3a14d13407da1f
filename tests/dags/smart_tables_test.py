"""Test DAG: an incremental export into views, converted by two mapped tasks and committed to Delta and
Parquet; one Asset for a table and an AssetAlias for all. Roots come from SMART_TEST_DEST."""

from __future__ import annotations

import os

from airflow.providers.common.compat.sdk import DAG, Asset, AssetAlias

from airflow_provider_smart.operators.bulk_export import SmartBulkExportOperator
from airflow_provider_smart.operators.views import SmartViewsOperator
from airflow_provider_smart.tables import BUNDLED_VIEWS

DEST = os.environ.get("SMART_TEST_DEST", "/tmp/smart-test-tables")
OBSERVATIONS = Asset(uri="smart-table://test/observation_flat")
EVERY_TABLE = AssetAlias("smart_test_tables")
VIEWS = [
    str(BUNDLED_VIEWS / "observation_flat.json"),
    str(BUNDLED_VIEWS / "patient_demographics.json"),
    os.path.join(os.path.dirname(__file__), "views", "status_observations.json"),  # Jinja: {{ params.status }}
]

with DAG("smart_tables_test", schedule=None, catchup=False, tags=["test"], params={"status": "final"}) as tables_dag:
    export = SmartBulkExportOperator(
        task_id="export",
        resource_types=["Patient", "Observation"],
        since="auto",
        destination=DEST + "/exports/{{ ts_nodash }}",
        poll_interval=1,
    )
    common = {"export": export.output, "views": VIEWS, "destination": DEST + "/tables", "shares": 2}
    convert = SmartViewsOperator.partial(task_id="convert", **common).expand(share=[0, 1])
    commit = SmartViewsOperator(
        task_id="commit", formats=["delta", "parquet"], outlets=[OBSERVATIONS, EVERY_TABLE], **common
    )
    export >> convert >> commit
