"""FIGURE 6 - SQL on FHIR views: the engine against hand-written DuckDB SQL, and its memory as exports grow.

Throughput: the same generated Observations (testing/data.py), the same DuckDB, the same threads; rows/s
of the compiled view against a hand-written query giving the same columns (read_json_auto, struct access,
the same casts). Interleaved repetitions, CPU time of the query (DuckDB runs in this process).

Memory: ``iter_view_batches`` in a child process over exports of growing size; peak RSS from ``wait4``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import MB, PY, REPO, WORK, log, median

FLAT_VIEW = {
    "resource": "Observation",
    "name": "observation_flat",
    "select": [{"column": [
        {"name": "id", "path": "id", "type": "id"},
        {"name": "patient", "path": "subject.getReferenceKey(Patient)", "type": "string"},
        {"name": "code_system", "path": "code.coding.first().system", "type": "uri"},
        {"name": "code", "path": "code.coding.first().code", "type": "code"},
        {"name": "effective", "path": "effective.ofType(dateTime)", "type": "dateTime"},
        {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
    ]}],
}  # fmt: skip
FOREACH_VIEW = {
    "resource": "Observation",
    "name": "observation_coding",
    "select": [
        {"column": [{"name": "id", "path": "id", "type": "id"}]},
        {"forEach": "code.coding", "column": [
            {"name": "system", "path": "system", "type": "uri"},
            {"name": "code", "path": "code", "type": "code"},
            {"name": "display", "path": "display", "type": "string"},
        ]},
    ],
}  # fmt: skip
HAND_FLAT = (
    "SELECT id, nullif(regexp_extract(subject.reference, '^(Patient/[A-Za-z0-9.\\-]{{1,64}})$', 1), '') AS patient, "
    "code.coding[1].system AS code_system, code.coding[1].code AS code, "
    "TRY_CAST(effectiveDateTime AS TIMESTAMPTZ) AS effective, TRY_CAST(valueQuantity.value AS DECIMAL(38,9)) AS value "
    "FROM read_json_auto({files}) WHERE resourceType = 'Observation'"
)
HAND_FOREACH = (
    "SELECT id, c.system, c.code, c.display FROM (SELECT id, unnest(code.coding) AS c "
    "FROM read_json_auto({files}) WHERE resourceType = 'Observation')"
)
QUICK = {"observations": 20_000, "reps": 1, "threads": 1, "rss_mb": (20, 60)}
FULL = {"observations": 200_000, "reps": 3, "threads": 1, "rss_mb": (250, 1000)}


def write_observations(path: Path, count: int) -> int:
    from airflow_provider_smart.testing.data import Dataset, DataState

    per_patient = 10
    dataset = Dataset(patients=max(1, count // per_patient), resources_per_patient=per_patient)
    with path.open("w") as handle:
        for line in dataset.iter_lines("Observation", DataState()):
            handle.write(line)
    return path.stat().st_size


def _timed(con: Any, sql: str) -> tuple[float, int]:
    start = time.process_time()
    rows = con.sql(sql).to_arrow_table().num_rows
    return time.process_time() - start, rows


def throughput(settings: dict[str, Any]) -> dict[str, Any]:
    import duckdb

    from airflow_provider_smart.views import compile_view

    data = WORK / "views" / "observations.ndjson"
    data.parent.mkdir(parents=True, exist_ok=True)
    size = write_observations(data, settings["observations"])
    files = f"['{data}']"
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    con.execute(f"SET threads = {settings['threads']}")
    out: dict[str, Any] = {"bytes": size, "threads": settings["threads"], "rows": {}}
    for name, view, hand in (("flat", FLAT_VIEW, HAND_FLAT), ("forEach", FOREACH_VIEW, HAND_FOREACH)):
        engine_sql = compile_view(view).sql([data])
        hand_sql = hand.format(files=files)
        _timed(con, engine_sql), _timed(con, hand_sql)  # warm the page cache and DuckDB
        ours, theirs, rows = [], [], 0
        for _ in range(settings["reps"]):
            seconds, rows = _timed(con, engine_sql)
            ours.append(rows / seconds)
            seconds, hand_rows = _timed(con, hand_sql)
            theirs.append(hand_rows / seconds)
            if hand_rows != rows:
                raise AssertionError(f"{name}: engine gave {rows} rows, hand-written SQL {hand_rows}")
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        out["rows"][name] = {
            "rows": rows,
            "engine_rows_per_s": median(ours),
            "hand_rows_per_s": median(theirs),
            "ratio": median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
        log(f"views {name}: {median(ours):.0f} rows/s vs hand-written {median(theirs):.0f} ({median(ratios):.2f}x)")
    data.unlink()
    return out


CHILD = """
import sys, json
from airflow_provider_smart.views import iter_view_batches
view = json.loads(sys.argv[1])
rows = sum(b.num_rows for b in iter_view_batches(view, sys.argv[2:], threads={threads}))
print(rows)
"""


def memory(settings: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of a child running the forEach view over exports of two sizes (several files each)."""
    out: dict[str, Any] = {}
    for target_mb in settings["rss_mb"]:
        folder = WORK / "views" / f"export-{target_mb}"
        folder.mkdir(parents=True, exist_ok=True)
        files, total, index = [], 0, 0
        per_file = 50_000 if target_mb >= 100 else 10_000
        while total < target_mb * MB:
            index += 1
            path = folder / f"Observation.{index}.ndjson"
            total += write_observations(path, per_file)
            files.append(str(path))
        code = CHILD.format(threads=settings["threads"])
        start = time.monotonic()
        proc = subprocess.Popen(
            [PY, "-c", code, json.dumps(FOREACH_VIEW), *files], stdout=subprocess.PIPE, cwd=REPO, text=True
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        rows = int(proc.stdout.read().strip() or 0) if proc.stdout else 0
        if status != 0:
            raise RuntimeError(f"views memory child failed with status {status}")
        out[str(target_mb)] = {
            "bytes": total,
            "files": len(files),
            "rows": rows,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "wall_s": wall,
        }
        log(f"views memory: {total / MB:.0f} MB -> peak RSS {usage.ru_maxrss / 1024:.0f} MB, {rows} rows")
        for path in files:
            Path(path).unlink()
    return out


def run_views_figure(settings: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    return {"settings": settings, "throughput": throughput(settings), "memory": memory(settings)}
