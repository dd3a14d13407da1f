"""Test DAG: acquire a token and check the granted scope (the test sets the connection env var)."""

from __future__ import annotations

import os

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_smart.operators.token import SmartTokenOperator

with DAG("smart_token_check", schedule=None, catchup=False, tags=["test"]) as dag:
    SmartTokenOperator(
        task_id="token",
        smart_conn_id=os.environ.get("SMART_TEST_CONN_ID", "smart_default"),
        required_scopes=os.environ.get("SMART_TEST_REQUIRED_SCOPES", "system/Patient.rs").split(),
        push_token=os.environ.get("SMART_TEST_PUSH_TOKEN") == "1",
    )
