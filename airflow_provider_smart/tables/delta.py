"""Delta tables (delta-rs, no Java or Spark): one per view, each run one transaction.

A full export overwrites the table in one commit. An incremental one is one MERGE: the rows of every
replaced resource are deleted and the new rows inserted in the same commit, so a reader sees the table
before the run or after it, never between. The commit's metadata records the run
(``smart.run_key``, ``smart.transaction_time``): a retried commit finds its run already applied, and
the next incremental run checks that it starts where this one ended.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow_provider_smart.exceptions import TablesError
from airflow_provider_smart.tables.changes import TableMeta, ViewChange
from airflow_provider_smart.tables.files import object_uri

log = logging.getLogger("airflow_provider_smart.tables")

MARKER = "__smart_replace"  # flags the source rows that only name a resource to delete
META_PREFIX = "smart."


class DeltaSink:
    """Delta tables under ``root`` (``<root>/<view>``). ``storage_options``: delta-rs's, for object stores."""

    format = "delta"

    def __init__(self, root: Any, storage_options: dict[str, str] | None = None) -> None:
        self.root = root
        self.storage_options = dict(storage_options or {})

    def location(self, name: str) -> str:
        return object_uri(self.root / name)

    def _table(self, name: str) -> Any:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.location(name), storage_options=self.storage_options or None)
        except TableNotFoundError:
            return None

    def state(self, name: str) -> TableMeta | None:
        """What the table's last commit recorded of its run, or None when there is no table yet."""
        table = self._table(name)
        if table is None:
            return None
        last = table.history(1)[0]
        return TableMeta(
            transaction_time=last.get(META_PREFIX + "transaction_time") or None,
            run_key=str(last.get(META_PREFIX + "run_key") or ""),
            since=last.get(META_PREFIX + "since") or None,
        )

    def commit(self, change: ViewChange) -> dict[str, Any]:
        from deltalake import CommitProperties, write_deltalake

        properties = CommitProperties(
            custom_metadata={META_PREFIX + k: str(v or "") for k, v in change.meta.to_dict().items()}
        )
        uri = self.location(change.name)
        table = self._table(change.name)
        if change.full or table is None:
            write_deltalake(
                uri,
                change.reader(),
                mode="overwrite",
                schema_mode="overwrite",
                storage_options=self.storage_options or None,
                commit_properties=properties,
            )
            metrics: dict[str, Any] = {"replaced": "all"}
        else:
            metrics = self._merge(table, change, properties)
        table = self._table(change.name)
        assert table is not None
        import pyarrow as pa

        records = pa.chunked_array(table.get_add_actions(flatten=True).column("num_records"))
        rows = sum(int(n or 0) for n in records.to_pylist())
        return {"location": uri, "version": table.version(), "rows": rows, **metrics}

    def _merge(self, table: Any, change: ViewChange, properties: Any) -> dict[str, Any]:
        import pyarrow as pa

        current = pa.schema(table.schema().to_arrow())
        if [f.name for f in current] != [f.name for f in change.schema]:
            raise TablesError(
                f"The Delta table {self.location(change.name)} has columns {current.names}, the view "
                f"{change.name!r} now gives {change.schema.names}: an incremental run cannot change a table's "
                "columns. Run the tables step once with mode='full' on a full export to rebuild it.",
                table=self.location(change.name),
            )
        # Marker rows leave every other column null: the merge source is all nullable.
        current = pa.schema([f.with_nullable(True) for f in current])
        rows = change.rows().cast(current)
        key = change.key_column
        ids = pa.array(sorted(set(change.replaced_ids or [])), pa.string())
        if not len(ids) and not rows.num_rows:
            # Nothing changed; still one (empty) commit, so the table records that this export was applied.
            from deltalake import write_deltalake

            write_deltalake(
                table, rows, mode="append", storage_options=self.storage_options or None, commit_properties=properties
            )
            return {"deleted": 0, "inserted": 0}
        markers = pa.table(
            {f.name: (ids if f.name == key else pa.nulls(len(ids), f.type)) for f in current}, schema=current
        )
        source = pa.concat_tables([rows, markers]).append_column(
            MARKER, pa.array([False] * rows.num_rows + [True] * markers.num_rows)
        )
        columns = {f'"{f.name}"': f's."{f.name}"' for f in current}
        result = (
            table.merge(
                source,
                predicate=f't."{key}" = s."{key}" AND s.{MARKER}',
                source_alias="s",
                target_alias="t",
                # The change set is in memory already; materialised, it merges ~15 % faster than streamed.
                streamed_exec=False,
                commit_properties=properties,
            )
            .when_matched_delete()
            .when_not_matched_insert(columns, predicate=f"NOT s.{MARKER}")
            .execute()
        )
        return {"deleted": result.get("num_target_rows_deleted"), "inserted": result.get("num_target_rows_inserted")}
