"""Check that the SMART connection still gets a token with the scopes the exports need."""

from __future__ import annotations

import pendulum
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_smart.operators.token import SmartTokenOperator

with DAG(
    dag_id="smart_token_check",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["smart", "fhir"],
) as dag:
    SmartTokenOperator(
        task_id="token",
        smart_conn_id="smart_default",
        required_scopes=["system/Patient.rs", "system/Observation.rs"],
    )
