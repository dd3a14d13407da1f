"""Reading the tables back: each table's asset event extra (or the commit's summary) opened in DuckDB."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from airflow_provider_smart.exceptions import TablesError


def duckdb_over_tables(
    tables: Iterable[dict[str, Any]], storage_options: Callable[[str], dict[str, str] | None] | None = None
) -> tuple[Any, list[str]]:
    """A DuckDB connection with a view per table, and their names.

    ``tables``: table extras (``{"table", "outputs": {format: {"location", ...}}}``, as the commit's asset
    events carry them). Delta tables are read through delta-rs (``storage_options(location)`` for object
    stores), Parquet ones from their current version folder, and a DuckDB file is attached read-only.
    """
    import duckdb

    con = duckdb.connect()
    names = []
    for table in tables:
        name = str(table["table"])
        outputs = table.get("outputs") or {}
        if "delta" in outputs:
            from deltalake import DeltaTable

            location = str(outputs["delta"]["location"])
            options = storage_options(location) if storage_options else None
            con.register(f"{name}__delta", DeltaTable(location, storage_options=options).to_pyarrow_dataset())
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "{name}__delta"')
        elif "parquet" in outputs and "://" not in str(outputs["parquet"].get("current", "")):
            con.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{outputs['parquet']['current']}/*.parquet')")
        else:
            raise TablesError(f"No table of {name} that this reader opens (Delta anywhere, Parquet on local disk).")
        names.append(name)
    return con, names
