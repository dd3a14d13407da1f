"""What one run brings to one table: its new rows, and which resources' earlier rows they replace.

A resource's rows are replaced as a whole (``forEach`` gives one resource many rows): every resource the
export lists for the view's type loses its earlier rows, whether or not it still yields rows (a ``where``
may now leave it out), and every resource in the export's ``deleted`` files loses them too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_smart.exceptions import TablesError


@dataclass
class TableMeta:
    """What a table records of the run that wrote it (Delta commit metadata, the Parquet pointer, the
    DuckDB file's ``_smart_tables``): the export's ``transactionTime`` is where its next incremental
    export must start from, at the latest."""

    transaction_time: str | None
    run_key: str
    since: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"transaction_time": self.transaction_time, "run_key": self.run_key, "since": self.since}


@dataclass
class ViewChange:
    """One view's part of a run. ``replaced_ids`` None: a full export, the table is replaced whole."""

    name: str
    resource: str
    key_column: str
    staged: list[Any]  # the staged Parquet files (path objects)
    schema: Any  # pyarrow.Schema of the view's rows
    replaced_ids: list[str] | None = None
    meta: TableMeta = field(default_factory=lambda: TableMeta(None, ""))

    @property
    def full(self) -> bool:
        return self.replaced_ids is None

    def dataset(self) -> Any:
        """The staged rows as one pyarrow dataset (no staged file: no rows, with the view's schema)."""
        import pyarrow.dataset as ds

        from airflow_provider_smart.tables.files import arrow_filesystem

        if not self.staged:
            import pyarrow as pa

            return ds.dataset(pa.table({f.name: pa.array([], f.type) for f in self.schema}, schema=self.schema))
        fs, _ = arrow_filesystem(self.staged[0])
        paths = [arrow_filesystem(p)[1] for p in self.staged]
        return ds.dataset(paths, filesystem=fs, format="parquet", schema=self.schema)

    def rows(self) -> Any:
        """The staged rows as a pyarrow Table (a change set: small enough to hold)."""
        return self.dataset().to_table()

    def reader(self) -> Any:
        """The staged rows streamed batch by batch (a full load can be larger than memory)."""
        import pyarrow as pa

        return pa.RecordBatchReader.from_batches(self.schema, self.dataset().to_batches())


def deleted_ids(lines: Iterable[bytes | str], source: str) -> Iterator[tuple[str, str]]:
    """``(type, id)`` of every resource a Bulk Data ``deleted`` file names.

    Each line is a transaction Bundle whose entries carry ``request.method`` DELETE and ``request.url``
    ``Type/id`` (a full URL, or one with ``/_history/n``, names the same resource).
    """
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            bundle = json.loads(line)
        except ValueError:
            raise TablesError(f"{source} line {number} is not JSON; the deleted file is damaged.") from None
        entries = bundle.get("entry") if isinstance(bundle, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            request = entry.get("request") if isinstance(entry, dict) else None
            if not isinstance(request, dict) or str(request.get("method", "")).upper() != "DELETE":
                continue
            parts = [p for p in str(request.get("url") or "").split("?")[0].split("/") if p]
            if "_history" in parts:
                parts = parts[: parts.index("_history")]
            if len(parts) >= 2:
                yield parts[-2], parts[-1]


def read_deleted(files: Iterable[tuple[Path, str]]) -> dict[str, set[str]]:
    """Resource ids per type named by local ``deleted`` files (``(path, name for messages)``)."""
    found: dict[str, set[str]] = {}
    for path, source in files:
        with path.open("rb") as handle:
            for rtype, rid in deleted_ids(handle, source):
                found.setdefault(rtype, set()).add(rid)
    return found
