"""Figure 7: an incremental run's change set (1 % of the resources) merged into a large table.

The table is shaped like ``observation_flat`` (a resource key and nine typed columns, one row per
resource). The change set updates 0.9 % of the resources (new rows) and deletes 0.1 % (their ids from the
export's ``deleted`` files), spread over the whole key range as real changes are. Each variant runs in a
fresh child process on its own copy of the table (wall, CPU and peak RSS from ``wait4``; the commit call
itself timed inside):

* ``delta_merge``: ours, :class:`~airflow_provider_smart.tables.delta.DeltaSink` (one MERGE transaction);
* ``delta_rewrite``: the alternative without MERGE: the whole table rebuilt (DuckDB anti-join + the new
  rows) and overwritten in one transaction;
* ``parquet_version``: ours, :class:`~airflow_provider_smart.tables.parquet.ParquetSink` (a new version folder);
* ``duckdb_file``: ours, :class:`~airflow_provider_smart.tables.duckdb_file.DuckDBFileSink` (copy, DELETE +
  INSERT, replace).

Every variant's result is checked: the table ends with the expected number of rows, the updated rows new.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import PY, WORK, fresh_dir, log, median, run_measured

FULL = {"rows": 10_000_000, "reps": 3}
QUICK = {"rows": 200_000, "reps": 1}
VARIANTS = ("delta_merge", "delta_rewrite", "parquet_version", "duckdb_file")
CHANGED_EVERY = 100  # 1 % of the resources change...
DELETED_EVERY = 1000  # ...of which one in ten is deleted
KEY = "_resource_id"


def rows_sql(n: int, where: str = "", status: str = "final") -> str:
    return f"""
        SELECT 'obs-' || lpad(i::VARCHAR, 9, '0') AS {KEY}, 'obs-' || lpad(i::VARCHAR, 9, '0') AS id,
               'pat-' || lpad((i // 10)::VARCHAR, 8, '0') AS patient_id, '{status}' AS status,
               ['718-7', '2345-7', '8480-6', '8462-4'][(i % 4) + 1] AS code, 'http://loinc.org' AS code_system,
               TIMESTAMPTZ '2023-01-01 00:00:00+00' + to_seconds(i % 31536000) AS effective,
               (50 + (i % 1000) / 10)::DECIMAL(10, 1) AS value, 'mg/dL' AS unit, (i % 7 = 0) AS abnormal
        FROM range({n}) t(i) {where}"""


def prepare(n: int, root: Path) -> dict[str, Any]:
    """The base table in each format, and the staged change set (Parquet) with its replaced ids."""
    import duckdb
    import pyarrow.parquet as pq

    from airflow_provider_smart.tables.changes import TableMeta, ViewChange
    from airflow_provider_smart.tables.delta import DeltaSink
    from airflow_provider_smart.tables.duckdb_file import DuckDBFileSink
    from airflow_provider_smart.tables.parquet import ParquetSink

    con = duckdb.connect()
    base = root / "base.parquet"
    t0 = time.monotonic()
    con.execute(f"COPY ({rows_sql(n)}) TO '{base}' (FORMAT parquet, ROW_GROUP_SIZE 131072)").fetchall()
    changes = root / "changes.parquet"
    con.execute(
        f"COPY ({rows_sql(n, f'WHERE i % {CHANGED_EVERY} = 0 AND i % {DELETED_EVERY} <> 0', 'amended')}) "
        f"TO '{changes}' (FORMAT parquet)"
    ).fetchall()
    ids = [r[0] for r in con.execute(f"SELECT {KEY} FROM ({rows_sql(n, f'WHERE i % {CHANGED_EVERY} = 0')})").fetchall()]
    schema = pq.read_schema(base)
    full = ViewChange("obs", "Observation", KEY, [base], schema, None, TableMeta("2026-01-01T00:00:00Z", "base"))
    tables = root / "tables"
    DeltaSink(tables / "delta").commit(full)
    ParquetSink(tables / "parquet").commit(full)
    DuckDBFileSink(tables / "tables.duckdb").commit_all([full])
    log(f"merge: base table of {n:,} rows in three formats in {time.monotonic() - t0:.0f} s")
    (root / "ids.json").write_text(json.dumps(ids))
    return {"rows": n, "changed": len(ids), "updated_rows": pq.read_metadata(changes).num_rows, "ids": len(ids)}


def child(variant: str, tables: Path, root: Path, result: Path) -> None:
    """One variant on its own copy of the tables (run in a measured child process)."""
    import pyarrow.parquet as pq

    from airflow_provider_smart.tables.changes import TableMeta, ViewChange
    from airflow_provider_smart.tables.delta import DeltaSink
    from airflow_provider_smart.tables.duckdb_file import DuckDBFileSink
    from airflow_provider_smart.tables.parquet import ParquetSink

    ids = json.loads((root / "ids.json").read_text())
    staged = root / "changes.parquet"
    meta = TableMeta("2026-01-02T00:00:00Z", "run2", "2026-01-01T00:00:00Z")
    change = ViewChange("obs", "Observation", KEY, [staged], pq.read_schema(staged), ids, meta)
    t0 = time.perf_counter()
    if variant == "delta_merge":
        out = DeltaSink(tables / "delta").commit(change)
    elif variant == "delta_rewrite":
        out = _rewrite(tables / "delta" / "obs", change)
    elif variant == "parquet_version":
        out = ParquetSink(tables / "parquet").commit(change)
    else:
        out = DuckDBFileSink(tables / "tables.duckdb").commit_all([change])["obs"]
    seconds = time.perf_counter() - t0
    result.write_text(json.dumps({"seconds": seconds, "rows": out["rows"], "amended": _amended(variant, tables)}))


def _rewrite(uri: Path, change: Any) -> dict[str, Any]:
    """The whole table recomputed and overwritten in one Delta transaction (no MERGE)."""
    import duckdb
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    table = DeltaTable(str(uri))
    con = duckdb.connect()
    files = ", ".join(f"'{f}'" for f in table.file_uris())
    con.execute(f"CREATE VIEW old AS SELECT * FROM read_parquet([{files}], union_by_name = true)").fetchall()
    con.register("new", change.dataset())
    con.register("ids", pa.table({"id": pa.array(change.replaced_ids, pa.string())}))
    reader = con.sql(
        f"SELECT * FROM old ANTI JOIN ids ON old.{KEY} = ids.id UNION ALL SELECT * FROM new"
    ).to_arrow_reader(1 << 17)
    write_deltalake(table, reader, mode="overwrite")
    return {"rows": DeltaTable(str(uri)).to_pyarrow_dataset().count_rows()}


def _amended(variant: str, tables: Path) -> int:
    import duckdb

    con = duckdb.connect()
    if variant.startswith("delta"):
        from deltalake import DeltaTable

        con.register("t", DeltaTable(str(tables / "delta" / "obs")).to_pyarrow_table(columns=["status"]))
        source = "t"
    elif variant == "parquet_version":
        source = f"read_parquet('{tables / 'parquet' / 'obs' / 'current'}/*.parquet')"
    else:
        con.execute(f"ATTACH '{tables / 'tables.duckdb'}' AS db (READ_ONLY)").fetchall()
        source = "db.obs"
    return int(con.execute(f"SELECT count(*) FROM {source} WHERE status = 'amended'").fetchone()[0])


def run_merge_figure(settings: dict[str, Any]) -> dict[str, Any]:
    root = fresh_dir(WORK / "merge")
    facts = prepare(settings["rows"], root)
    deleted = settings["rows"] // DELETED_EVERY
    expected_rows = settings["rows"] - deleted
    rows: dict[str, dict[str, Any]] = {}
    for rep in range(settings["reps"]):
        for variant in VARIANTS:  # interleaved: each repetition runs every variant once
            copy = root / f"run-{variant}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(root / "tables", copy, symlinks=True)
            result = root / "result.json"
            m = run_measured(
                [PY, str(Path(__file__).resolve()), "child", variant, str(copy), str(root), str(result)], timeout=1800
            )
            r = json.loads(result.read_text())
            ok = r["rows"] == expected_rows and r["amended"] == facts["updated_rows"]
            row = rows.setdefault(variant, {"seconds": [], "cpu_s": [], "peak_rss_mb": [], "ok": True})
            row["seconds"].append(r["seconds"])
            row["cpu_s"].append(m.user + m.sys)
            row["peak_rss_mb"].append(m.maxrss_kb / 1024)
            row["ok"] = row["ok"] and ok
            log(f"merge rep {rep + 1} {variant}: {r['seconds']:.2f} s, {r['rows']:,} rows, ok={ok}")
            shutil.rmtree(copy, ignore_errors=True)
    for row in rows.values():
        row["median_s"] = median(row["seconds"])
        row["median_cpu_s"] = median(row["cpu_s"])
        row["max_peak_rss_mb"] = max(row["peak_rss_mb"])
    return {**facts, "deleted": deleted, "expected_rows": expected_rows, "reps": settings["reps"], "rows_by": rows}


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
