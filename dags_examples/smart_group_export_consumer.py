"""Data-aware scheduling: runs whenever ``smart_group_export_mapped`` lands a new Group export.

The asset event's ``extra`` (written by the export operators) says where the files are, the export's
``transactionTime`` and how many resources of each type it holds; this DAG reads ``manifest.json`` and
every NDJSON file from there (local disk or object storage alike) and checks the line counts.
"""

from __future__ import annotations

import json
from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import DAG, Asset, task

# Same URI as in smart_group_export_mapped.py: that is what ties the two DAGs together. (URI only: on
# Airflow 2.x an Asset is a Dataset, which has no name; 3.x names it after the URI.)
GROUP_EXPORT = Asset(uri="smart-bulk://cohort-a")

with DAG(
    dag_id="smart_group_export_consumer",
    schedule=[GROUP_EXPORT],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["smart", "fhir", "bulk-data", "assets"],
) as dag:

    @task
    def read_new_files(**context: Any) -> list[dict[str, Any]]:
        from pathlib import Path

        from airflow.providers.common.compat.sdk import ObjectStoragePath

        landed = []
        if "triggering_asset_events" in context:
            events = context["triggering_asset_events"][GROUP_EXPORT]
        else:  # Airflow 2.x: Datasets, keyed by URI
            events = context["triggering_dataset_events"][GROUP_EXPORT.uri]
        for event in events:
            extra = event.extra or {}
            destination = str(extra["destination"])
            root = ObjectStoragePath(destination) if "://" in destination else Path(destination)
            manifest = json.loads((root / "manifest.json").read_text())
            counts: dict[str, int] = {}
            for entry in manifest["summary"]["output"]:
                name = str(entry["path"]).rsplit("/", 1)[-1]
                with (root / name).open("rb") as f:
                    lines = sum(chunk.count(b"\n") for chunk in iter(lambda f=f: f.read(1 << 20), b""))
                counts[entry["type"]] = counts.get(entry["type"], 0) + lines
            if counts != extra.get("counts"):
                raise ValueError(f"{root}: files hold {counts}, the asset event said {extra.get('counts')}")
            print(f"{root}: transactionTime {extra.get('transactionTime')}, resources {counts}")
            landed.append({"destination": extra["destination"], "counts": counts})
        return landed

    read_new_files()
