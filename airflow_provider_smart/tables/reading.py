"""Reading the tables back: each table's asset event extra (or the commit's summary) opened in DuckDB."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from airflow_provider_smart.exceptions import TablesError


def duckdb_over_tables(
    tables: Iterable[dict[str, Any]],
    storage_options: Callable[[str], dict[str, str] | None] | None = None,
    filesystem: Callable[[str], Any] | None = None,
) -> tuple[Any, list[str]]:
    """A DuckDB connection with a view per table, and their names.

    ``tables``: table extras (``{"table", "outputs": {format: {"location", ...}}}``, as the commit's asset
    events carry them). A Delta table is read at its current version: delta-rs lists the version's data
    files (``storage_options(location)`` for object stores) and DuckDB reads them, through the fsspec
    filesystem ``filesystem(location)`` when they are not on this disk. (DuckDB reads the files itself
    rather than through a pyarrow dataset: delta-rs's MERGE writes ``string_view`` columns, which
    pyarrow cannot yet compare with the literal of a filter DuckDB pushes down.) A Parquet table is read
    from its current version folder on a local disk.
    """
    import duckdb

    con = duckdb.connect()
    names = []
    registered: set[str] = set()
    for table in tables:
        name = str(table["table"])
        outputs = table.get("outputs") or {}
        if "delta" in outputs:
            from deltalake import DeltaTable

            location = str(outputs["delta"]["location"])
            delta = DeltaTable(location, storage_options=(storage_options(location) if storage_options else None))
            files = delta.file_uris()
            scheme = location.split("://", 1)[0] if "://" in location else ""
            if scheme and filesystem is not None and scheme not in registered:
                con.register_filesystem(filesystem(location))
                registered.add(scheme)
            if files:
                listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet([{listed}], union_by_name = true)')
            else:
                import pyarrow as pa

                con.register(f"{name}__empty", pa.schema(delta.schema().to_arrow()).empty_table())
                con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "{name}__empty"')
        elif "parquet" in outputs and "://" not in str(outputs["parquet"].get("current", "")):
            current = str(outputs["parquet"]["current"]).replace("'", "''")
            con.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{current}/*.parquet')")
        else:
            raise TablesError(f"No table of {name} this reader opens (Delta anywhere, Parquet on a local disk).")
        names.append(name)
    return con, names
