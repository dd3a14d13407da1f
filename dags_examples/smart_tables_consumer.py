"""Data-aware scheduling on tables: query the Delta tables that ``smart_daily_tables`` or
``smart_group_export_mapped`` commit, with DuckDB.

Each table's asset event says where the table is and which export it now holds (``transactionTime``);
this DAG opens the Delta tables (local or object storage; delta-rs, no Spark) and runs SQL over them.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import DAG, Asset, task

# The same URIs as the producing DAGs' outlets (URI only: Airflow 2.x Datasets have no name).
DAILY = [Asset(uri=f"smart-table://daily/{v}") for v in ("patient_demographics", "observation_flat")]
COHORT = [Asset(uri=f"smart-table://cohort-a/{v}") for v in ("patient_demographics", "observation_flat")]

with DAG(
    dag_id="smart_tables_consumer",
    schedule=(DAILY[0] & DAILY[1]) | (COHORT[0] & COHORT[1]),  # both tables of one commit
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["smart", "fhir", "sql-on-fhir", "assets"],
) as dag:

    @task
    def query_tables(**context: Any) -> dict[str, Any]:
        from airflow_provider_smart.operators.views import tables_in_duckdb

        latest: dict[str, dict[str, Any]] = {}
        # Airflow 2.x names them triggering_dataset_events
        triggering = context.get("triggering_asset_events") or context.get("triggering_dataset_events") or {}
        for events in triggering.values():
            for event in events:
                latest[str(event.extra["table"])] = dict(event.extra)  # later events win
        con, names = tables_in_duckdb(latest.values())
        counts = {name: con.sql(f"SELECT count(*) FROM {name}").fetchall()[0][0] for name in names}
        print(f"rows per table: {counts}")
        if "patient_demographics" in counts and "observation_flat" in counts:
            top = con.sql(
                "SELECT p.gender, o.code, count(*) AS n, round(avg(o.value), 2) AS mean "
                "FROM observation_flat o JOIN patient_demographics p ON p.id = o.patient_id "
                "GROUP BY ALL ORDER BY n DESC LIMIT 5"
            ).fetchall()
            print("observations by patient gender and code:", top)
        amended = con.sql("SELECT count(*) FROM observation_flat WHERE status = 'amended'").fetchall()[0][0]
        return {
            "counts": counts,
            "amended_observations": amended,
            "transactionTime": {n: e.get("transactionTime") for n, e in latest.items()},
            "export": {n: e.get("export") for n, e in latest.items()},
        }

    query_tables()
