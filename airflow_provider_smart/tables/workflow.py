"""One landed export into tables: shares converted (on as many workers as wanted), then one commit.

Each share's files are turned into the views' rows and staged as Parquet under
``<output>/_staging/<run key>/``; a share's marker file is written last, so a share is staged whole or
not at all, and a retried share simply stages again. The commit converts any share nobody staged, then
applies every view's change to each output in one transaction per table (a Delta commit, a Parquet
version pointer, one DuckDB file), and deletes the staging folder. A run that fails before or during the
commit leaves every table at its previous version.

Incremental exports (``_since``) replace the rows of every resource they list, and remove those of the
resources their ``deleted`` files name; the table must already hold the export before (its recorded
``transactionTime`` at or after this export's ``_since``), else the run stops instead of leaving a gap.
An export whose server never fills ``deleted`` (Medplum) is applied with a warning, and the summary says
``deletions_not_reported``: resources deleted on the server keep their rows.

Airflow-free: :class:`~airflow_provider_smart.operators.views.SmartViewsOperator` is a thin adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow_provider_smart.bulk.storage import read_json, write_json_atomically
from airflow_provider_smart.exceptions import TablesError
from airflow_provider_smart.tables.changes import TableMeta, ViewChange, read_deleted
from airflow_provider_smart.tables.engine import KEY_COLUMN, ViewSpec, resource_ids, view_batches, view_schema
from airflow_provider_smart.tables.files import arrow_filesystem, local_copy, object_uri, remove_tree
from airflow_provider_smart.tables.landed import LandedExport, LandedFile

log = logging.getLogger("airflow_provider_smart.tables")

FORMATS = ("delta", "parquet")
MODES = ("auto", "full", "incremental")
STAGING = "_staging"
IDS = "_ids"


def plan_shares(files: list[LandedFile], shares: int) -> list[list[LandedFile]]:
    """Split files into ``shares`` lists of about equal bytes (largest first onto the lightest share).

    Deterministic: every mapped task computes the same plan from the same export.
    """
    plan: list[list[LandedFile]] = [[] for _ in range(max(1, shares))]
    load = [0] * len(plan)
    for f in sorted(files, key=lambda f: (-(f.bytes or 1), f.path)):
        lightest = min(range(len(plan)), key=lambda i: (load[i], i))
        plan[lightest].append(f)
        load[lightest] += f.bytes or 1
    return plan


def _instant(value: str) -> datetime:
    """A ``transactionTime`` or ``_since``, comparable with any other: the kick-off also takes a year, a month,
    a date or a time without zone (``since="2024-05-01"``), which count from their start in UTC."""
    text = value.strip().replace("Z", "+00:00")
    text += {4: "-01-01", 7: "-01"}.get(len(text), "")  # 2024, 2024-05
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class TablesWorkflow:
    """See the module docstring.

    :param export: the landed export.
    :param views: the views to run.
    :param output: the folder (local path or path object) under which ``delta/<view>`` and
        ``parquet/<view>`` are written, and the staging area lives.
    :param formats: any of ``"delta"``, ``"parquet"``.
    :param duckdb_file: also write this DuckDB database file (path or path object), or None.
    :param shares: how many shares the export's files are split into (the number of mapped tasks).
    :param mode: ``"auto"`` (incremental when the export has ``_since``), ``"full"`` (replace each table)
        or ``"incremental"`` (refuse a full export).
    :param storage_options: delta-rs storage options for object stores (credentials: kept in memory only).
    """

    def __init__(
        self,
        export: LandedExport,
        views: list[ViewSpec],
        output: Any,
        *,
        formats: tuple[str, ...] | list[str] = ("delta",),
        duckdb_file: Any = None,
        shares: int = 1,
        mode: str = "auto",
        storage_options: dict[str, str] | None = None,
    ) -> None:
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise TablesError(f"Unknown table format(s) {unknown}: use any of {FORMATS}.")
        if mode not in MODES:
            raise TablesError(f"mode must be one of {MODES}, not {mode!r}.")
        if not formats and duckdb_file is None:
            raise TablesError("Nothing to write: give formats (delta, parquet) and/or duckdb_file.")
        if shares < 1:
            raise TablesError(f"shares must be at least 1, not {shares!r}.")
        if mode == "incremental" and not export.incremental:
            raise TablesError(
                f"mode='incremental' but the export in {export.location} is a full export (no _since).",
                export=export.location,
            )
        self.export = export
        self.views = views
        self.output = output
        self.formats = tuple(formats)
        self.duckdb_file = duckdb_file
        self.shares = shares
        self.incremental = mode != "full" and export.incremental
        self.storage_options = storage_options
        self.run_key = self._run_key()
        self.stage = output / STAGING / self.run_key

    def _run_key(self) -> str:
        identity = {
            "export": self.export.location,
            "transaction_time": self.export.transaction_time,
            "views": [v.definition for v in self.views],
            "shares": self.shares,
            "incremental": self.incremental,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def sinks(self) -> list[Any]:
        from airflow_provider_smart.tables.delta import DeltaSink
        from airflow_provider_smart.tables.parquet import ParquetSink

        found: list[Any] = []
        if "delta" in self.formats:
            found.append(DeltaSink(self.output / "delta", self.storage_options))
        if "parquet" in self.formats:
            found.append(ParquetSink(self.output / "parquet"))
        return found

    # -- shares -----------------------------------------------------------------------------------
    def share_files(self, share: int) -> list[LandedFile]:
        wanted = {v.resource for v in self.views}
        return plan_shares([f for f in self.export.output if f.type in wanted], self.shares)[share]

    def _marker(self, share: int) -> Any:
        return self.stage / f"share-{share}.json"

    def convert_share(self, share: int) -> dict[str, Any]:
        """Turn one share's files into staged rows; returns ``{"share", "files", "rows": {view: n}}``."""
        if not 0 <= share < self.shares:
            raise TablesError(f"share {share} is outside 0..{self.shares - 1}.")
        started = time.monotonic()
        files = self.share_files(share)
        rows: dict[str, int] = {}
        with tempfile.TemporaryDirectory(prefix="smart-tables-") as tmp:
            local: dict[str, list[Path]] = {}
            for f in files:
                local.setdefault(f.type, []).append(local_copy(self.export.root / f.path, Path(tmp), f.path))
            for view in self.views:
                paths = local.get(view.resource, [])
                if not paths:
                    continue
                target = self.stage / view.name / f"share-{share}.parquet"
                rows[view.name] = self._write_staged(view_schema(view), view_batches(view, paths), target)
            if self.incremental:
                import pyarrow as pa

                for rtype, paths in local.items():
                    ids = pa.table({"id": pa.array(resource_ids(paths), pa.string())})
                    target = self.stage / IDS / rtype / f"share-{share}.parquet"
                    self._write_staged(ids.schema, ids.to_batches(), target)
        report = {"share": share, "files": len(files), "rows": rows, "seconds": round(time.monotonic() - started, 3)}
        self.stage.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self._marker(share), report)
        log.info("Share %d of %d: %d file(s) -> %s", share, self.shares, len(files), rows)
        return report

    @staticmethod
    def _write_staged(schema: Any, batches: Any, target: Any) -> int:
        """Stream batches into one Parquet file; returns the rows written (memory stays one batch)."""
        import pyarrow.parquet as pq

        fs, path = arrow_filesystem(target)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        rows = 0
        with pq.ParquetWriter(path, schema, filesystem=fs) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
        return rows

    # -- commit -----------------------------------------------------------------------------------
    def commit(self) -> dict[str, Any]:
        """Stage what no share did, then write every table; returns the run's summary (JSON-safe)."""
        started = time.monotonic()
        reports = []
        for share in range(self.shares):
            report = read_json(self._marker(share))
            if report is None:
                if self.shares > 1:
                    log.info("Share %d was not staged by a mapped task; converting it here.", share)
                report = self.convert_share(share)
            reports.append(report)
        deleted = self._deleted_ids() if self.incremental else {}
        deletions_not_reported = self.incremental and self.export.deletions_not_reported
        if deletions_not_reported:
            log.warning(
                "The export in %s comes from a server that never reports deleted resources: rows of resources "
                "deleted on the server since %s stay in the tables. Rebuild them from a full export now and then.",
                self.export.location,
                self.export.since,
            )
        changes = [self._change(view, deleted) for view in self.views]
        tables: dict[str, dict[str, Any]] = {c.name: {"resource": c.resource, "outputs": {}} for c in changes}
        for sink in self.sinks():
            for change in changes:
                if self._already_applied(sink, change):
                    tables[change.name]["outputs"][sink.format] = {"location": sink.location(change.name)}
                    continue
                tables[change.name]["outputs"][sink.format] = sink.commit(change)
        if self.duckdb_file is not None:
            from airflow_provider_smart.tables.duckdb_file import DuckDBFileSink

            sink = DuckDBFileSink(self.duckdb_file)
            pending = [c for c in changes if not self._already_applied(sink, c)]
            done = sink.commit_all(pending) if pending else {}
            for change in changes:
                tables[change.name]["outputs"]["duckdb"] = done.get(change.name) or {
                    "location": sink.location(change.name)
                }
        for change in changes:
            tables[change.name]["schema"] = [
                {"name": f.name, "type": str(f.type)} for f in change.schema if f.name != KEY_COLUMN
            ]
            tables[change.name]["rows_staged"] = sum(int((r.get("rows") or {}).get(change.name, 0)) for r in reports)
            tables[change.name]["resources_replaced"] = None if change.full else len(change.replaced_ids or [])
        remove_tree(self.stage)
        summary = {
            "export": self.export.location,
            "transaction_time": self.export.transaction_time,
            "since": self.export.since,
            "incremental": self.incremental,
            "deletions_not_reported": deletions_not_reported,
            "output": object_uri(self.output),
            "run_key": self.run_key,
            "shares": self.shares,
            "tables": tables,
            "seconds": round(time.monotonic() - started, 3),
        }
        log.info("Tables written:\n%s", tables_table(summary))
        return summary

    def _already_applied(self, sink: Any, change: ViewChange) -> bool:
        """Check the table's history against this run: done already (a retried commit), or a gap."""
        state = sink.state(change.name)
        if state is not None and state.run_key == self.run_key:
            log.info("%s %s already holds this run (a retried commit): left as it is.", sink.format, change.name)
            return True
        if change.full:
            return False
        since = self.export.since
        assert since is not None
        if state is None or not state.transaction_time or _instant(state.transaction_time) < _instant(since):
            held = "does not exist yet" if state is None else f"holds the export of {state.transaction_time}"
            raise TablesError(
                f"The {sink.format} table {sink.location(change.name)} {held}, but this incremental export starts "
                f"at {since}: the changes in between would be missing. Re-run the tables step of the run(s) "
                "that failed first, or rebuild the tables from a full export (mode='full' on an export "
                "without since). Nothing was written to this table.",
                table=sink.location(change.name),
                since=since,
            )
        return False

    def _change(self, view: ViewSpec, deleted: dict[str, set[str]]) -> ViewChange:
        staged = [
            self.stage / view.name / f"share-{i}.parquet"
            for i in range(self.shares)
            if (self.stage / view.name / f"share-{i}.parquet").exists()
        ]
        schema = view_schema(view)  # also when the export has no resource of the type: an empty table
        meta = TableMeta(self.export.transaction_time, self.run_key, self.export.since)
        replaced: list[str] | None = None
        if self.incremental:
            replaced = sorted(self._staged_ids(view.resource) | deleted.get(view.resource, set()))
        return ViewChange(view.name, view.resource, KEY_COLUMN, staged, schema, replaced, meta)

    def _staged_ids(self, rtype: str) -> set[str]:
        import pyarrow.dataset as ds

        folder = self.stage / IDS / rtype
        if not folder.exists():
            return set()
        fs, path = arrow_filesystem(folder)
        return set(ds.dataset(path, filesystem=fs, format="parquet").to_table().column("id").to_pylist())

    def _deleted_ids(self) -> dict[str, set[str]]:
        with tempfile.TemporaryDirectory(prefix="smart-deleted-") as tmp:
            files = [(local_copy(self.export.root / f.path, Path(tmp), f.path), f.path) for f in self.export.deleted]
            return read_deleted(files)


def tables_table(summary: dict[str, Any]) -> str:
    """One line per table and output: where it is, its version and rows."""
    lines = [f"{'table':<28} {'format':<8} {'version':>8} {'rows':>10}  location"]
    for name, table in sorted(summary["tables"].items()):
        for fmt, out in sorted(table["outputs"].items()):
            lines.append(
                f"{name:<28} {fmt:<8} {out.get('version', ''):>8} {out.get('rows', ''):>10}  {out.get('location')}"
            )
    return "\n".join(lines)
