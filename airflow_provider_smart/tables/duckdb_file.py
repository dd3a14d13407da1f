"""One DuckDB database file holding a table per view, replaced whole at the end of each run.

The file is built (or, for an incremental run, updated from a copy of the current file) on the worker's
disk and then put in place in one step: a rename on a local disk, one PUT on an object store. Readers
see the previous file or the new one; all views change together. ``_smart_tables`` records, per table,
the run that wrote it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from airflow_provider_smart.exceptions import TablesError
from airflow_provider_smart.tables.changes import TableMeta, ViewChange
from airflow_provider_smart.tables.files import local_copy, object_uri, upload

META_TABLE = "_smart_tables"


def _run(con: Any, sql: str, params: list[Any] | None = None) -> list[Any]:
    """Execute and fetch: DuckDB wants every result finished before the next statement."""
    return list(con.execute(sql, params or []).fetchall())


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DuckDBFileSink:
    """The database file ``path`` (local or object storage)."""

    format = "duckdb"

    def __init__(self, path: Any) -> None:
        self.path = path
        self._states: dict[str, TableMeta] | None = None

    def location(self, name: str) -> str:
        return f"{object_uri(self.path)}#{name}"

    def state(self, name: str) -> TableMeta | None:
        """What the file records of the run that wrote this table; the file is read once for every table
        (on an object store each read downloads the whole file)."""
        if self._states is None:
            self._states = self._read_states()
        return self._states.get(name)

    def _read_states(self) -> dict[str, TableMeta]:
        if not self.path.exists():
            return {}
        with tempfile.TemporaryDirectory(prefix="smart-duckdb-") as tmp:
            con = self._connect(local_copy(self.path, Path(tmp), "read.duckdb"), read_only=True)
            try:
                rows = _run(con, f"SELECT name, transaction_time, run_key, since FROM {META_TABLE}")
            except Exception:
                return {}
            finally:
                con.close()
        return {row[0]: TableMeta(row[1], row[2] or "", row[3]) for row in rows}

    @staticmethod
    def _connect(path: Path, read_only: bool = False) -> Any:
        import duckdb

        return duckdb.connect(str(path), read_only=read_only)

    def commit_all(self, changes: list[ViewChange]) -> dict[str, dict[str, Any]]:
        """Apply every view's change to a copy of the file, then put the copy in place."""
        results: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="smart-duckdb-") as tmp:
            work = Path(tmp) / "tables.duckdb"
            if self.path.exists() and not all(c.full for c in changes):
                source = local_copy(self.path, Path(tmp), "current.duckdb")
                if source != work:
                    work.write_bytes(source.read_bytes())
            con = self._connect(work)
            try:
                _run(
                    con,
                    f"CREATE TABLE IF NOT EXISTS {META_TABLE} "
                    "(name VARCHAR PRIMARY KEY, transaction_time VARCHAR, run_key VARCHAR, since VARCHAR)",
                )
                _run(con, "BEGIN")
                for change in changes:
                    results[change.name] = self._apply(con, change)
                _run(con, "COMMIT")
                _run(con, "CHECKPOINT")
            except Exception as exc:
                raise TablesError(
                    f"Could not write the DuckDB file {object_uri(self.path)} ({type(exc).__name__}: {exc}); "
                    "the previous file is unchanged.",
                    table=object_uri(self.path),
                ) from exc
            finally:
                con.close()
            upload(work, self.path)
        self._states = None
        return results

    def _apply(self, con: Any, change: ViewChange) -> dict[str, Any]:
        table = _quote(change.name)
        con.register("smart_new_rows", change.dataset())  # scanned batch by batch
        exists = _run(con, "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [change.name])[0][0]
        if change.full or not exists:
            _run(con, f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM smart_new_rows")
        else:
            import pyarrow as pa

            ids = pa.table({"id": pa.array(sorted(set(change.replaced_ids or [])), pa.string())})
            con.register("smart_replaced", ids)
            _run(con, f"DELETE FROM {table} WHERE {_quote(change.key_column)} IN (SELECT id FROM smart_replaced)")
            _run(con, f"INSERT INTO {table} BY NAME SELECT * FROM smart_new_rows")
            con.unregister("smart_replaced")
        con.unregister("smart_new_rows")
        meta = change.meta
        _run(
            con,
            f"INSERT OR REPLACE INTO {META_TABLE} VALUES (?, ?, ?, ?)",
            [change.name, meta.transaction_time, meta.run_key, meta.since],
        )
        total = _run(con, f"SELECT count(*) FROM {table}")[0][0]
        return {"location": self.location(change.name), "rows": int(total)}
