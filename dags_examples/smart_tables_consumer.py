"""Data-aware scheduling on tables: query the Delta tables ``smart_daily_tables`` commits, with DuckDB.

Each table's asset event says where the table is and which export it now holds (``transactionTime``);
this DAG opens the Delta tables (local or object storage; delta-rs, no Spark) and runs SQL over them.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, task

PATIENTS = Asset(name="smart_daily_patient_demographics", uri="smart-table://daily/patient_demographics")
OBSERVATIONS = Asset(name="smart_daily_observation_flat", uri="smart-table://daily/observation_flat")

with DAG(
    dag_id="smart_tables_consumer",
    schedule=[PATIENTS, OBSERVATIONS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["smart", "fhir", "sql-on-fhir", "assets"],
) as dag:

    @task
    def query_tables(*, triggering_asset_events: Any = None) -> dict[str, Any]:
        from airflow_provider_smart.operators.views import tables_in_duckdb

        latest = {asset.name: events[-1].extra for asset, events in triggering_asset_events.items() if events}
        con, names = tables_in_duckdb(latest.values())
        counts = {name: con.sql(f"SELECT count(*) FROM {name}").fetchone()[0] for name in names}
        print(f"rows per table: {counts}")
        if "patient_demographics" in counts and "observation_flat" in counts:
            top = con.sql(
                "SELECT p.gender, o.code, count(*) AS n, round(avg(o.value), 2) AS mean "
                "FROM observation_flat o JOIN patient_demographics p ON p.id = o.patient_id "
                "GROUP BY ALL ORDER BY n DESC LIMIT 5"
            ).fetchall()
            print("observations by patient gender and code:", top)
        return {"counts": counts, "transactionTime": {n: e.get("transactionTime") for n, e in latest.items()}}

    query_tables()
