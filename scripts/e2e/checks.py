"""The e2e checks: each prints PASS/FAIL with what it saw; the run fails if any failed."""

from __future__ import annotations

import glob
import json
from collections import Counter
from pathlib import Path
from typing import Any

from e2e.api import AirflowAPI


class Checks:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool]] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, bool(ok)))
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
        return bool(ok)

    @property
    def failed(self) -> list[str]:
        return [name for name, ok in self.results if not ok]


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://conn@bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket.rsplit("@", 1)[-1], key


def bucket_holds_export(checks: Checks, s3: Any, summary: dict[str, Any], expected: dict[str, int]) -> None:
    """Every manifest file is in the bucket exactly once with the server's line count; nothing else is."""
    bucket, prefix = split_s3(summary["destination"])
    listed: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        listed += [o["Key"] for o in page.get("Contents", [])]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read())
    server_files = [f for kind in ("output", "deleted", "error") for f in manifest["manifest"].get(kind) or []]
    entries = [e for kind in ("output", "deleted", "error") for e in manifest["summary"][kind]]
    keys = [split_s3(e["path"])[1] for e in entries]
    checks.check(
        "every file of the server's manifest landed once",
        len(entries) == len(server_files) and len(set(keys)) == len(keys),
        f"{len(server_files)} files in the server's manifest, {len(entries)} in ours, {len(set(keys))} distinct",
    )
    extra = sorted(set(listed) - set(keys) - {f"{prefix}/manifest.json"})
    missing = sorted(set(keys) - set(listed))
    checks.check(
        "the bucket holds exactly those files and manifest.json (no .part, no state file, no duplicate)",
        not extra and not missing,
        f"{len(listed)} objects under s3://{bucket}/{prefix}/; extra {extra[:5]}, missing {missing[:5]}",
    )
    wrong = []
    per_type: Counter[str] = Counter()
    server_counts = {f["url"].split("?")[0].rsplit("/", 1)[-1]: f.get("count") for f in server_files}
    for entry, key in zip(entries, keys, strict=True):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        lines = body.count(b"\n") + (0 if body.endswith(b"\n") or not body else 1)
        server = server_counts.get(str(entry["url"]).split("?")[0].rsplit("/", 1)[-1])
        if not (lines == entry["count"] == server):
            wrong.append(f"{key}: {lines} lines, manifest count {entry['count']}, server {server}")
        if entry in manifest["summary"]["output"]:
            per_type[entry["type"]] += lines
    checks.check(
        "every object's line count equals its manifest count",
        not wrong,
        "; ".join(wrong[:5]) or f"{len(entries)} objects read back from S3",
    )
    checks.check(
        "resources per type equal the sandbox's cohort",
        dict(per_type) == expected,
        f"landed {dict(sorted(per_type.items()))}, expected {dict(sorted(expected.items()))}",
    )


def ran_on_both_workers(checks: Checks, tis: list[dict[str, Any]], workers: list[str]) -> dict[str, str]:
    downloads = [t for t in tis if t["task_id"] == "download"]
    hosts = Counter(t.get("hostname") for t in downloads)
    checks.check(
        f"{len(downloads)} mapped downloads (>= 8) ran on both Celery workers",
        len(downloads) >= 8 and set(workers) <= set(hosts),
        ", ".join(
            f"{h}: {n} (pids {sorted(t['pid'] for t in downloads if t.get('hostname') == h)[:4]}...)"
            for h, n in sorted(hosts.items(), key=lambda kv: str(kv[0]))
        ),
    )
    return {f"download[{t['map_index']}]": t.get("hostname") for t in downloads}


def sensor_deferred(checks: Checks, api: AirflowAPI, dag_id: str, run_id: str, seen: set[str]) -> None:
    tries = api.tries(dag_id, run_id, "wait")
    log = api.log(dag_id, run_id, "wait", tries[-1]["try_number"])
    checks.check(
        "the sensor deferred to the triggerer and resumed in the same try",
        "deferred" in seen and tries[-1]["state"] == "success" and len(tries) == 1,
        f"states seen {sorted(seen)}; {len(tries)} try; task log mentions the trigger: "
        f"{'Export' in log and 'in progress' in log}",
    )


def export_deleted(checks: Checks, sandbox: Any, status_url: str, auth: Any) -> None:
    import requests

    path = "/" + status_url.split("://", 1)[1].split("/", 1)[1]
    deletes = [e for e in sandbox.requests_log if e["method"] == "DELETE" and e["path"] == path]
    gone = requests.get(status_url, auth=auth, timeout=30)
    checks.check(
        "the export was DELETEd on the server after the finish step",
        len(deletes) == 1 and deletes[0]["status"] == 202 and gone.status_code == 404,
        f"DELETE {path}: {[d['status'] for d in deletes]}; a GET now answers {gone.status_code}",
    )


def no_secrets_in_logs(
    checks: Checks, api: AirflowAPI, dag_id: str, run_id: str, tis: list[dict[str, Any]], secrets: list[str]
) -> None:
    fetched, leaks, chars = 0, [], 0
    for ti in tis:
        for attempt in api.tries(dag_id, run_id, ti["task_id"], ti["map_index"]):
            text = api.log(dag_id, run_id, ti["task_id"], attempt["try_number"], ti["map_index"])
            fetched += 1
            chars += len(text)
            leaks += [f"{ti['task_id']}[{ti['map_index']}] try {attempt['try_number']}" for s in secrets if s in text]
    checks.check(
        "no secret (private key, access tokens, AWS secret, Fernet key, JWT secret) in any task log",
        fetched > 0 and chars > 1000 and not leaks,
        f"{fetched} logs, {chars} characters fetched through the API, {len(secrets)} secrets looked for; "
        f"leaks: {leaks[:5]}",
    )


def asset_event_and_consumer(checks: Checks, api: AirflowAPI, run_id: str, summary: dict[str, Any]) -> None:
    events = api.asset_events(source_dag_id="smart_group_export_mapped", source_run_id=run_id)
    events = [e for e in events if e["source_task_id"] == "finish"]  # the tables commit emits its own
    extra = events[0]["extra"] if len(events) == 1 else {}
    counts = Counter()
    for entry in summary["output"]:
        counts[entry["type"]] += entry["lines"]
    checks.check(
        "one asset event, from the finish task, whose extra describes the export",
        len(events) == 1
        and events[0]["source_task_id"] == "finish"
        and extra.get("destination") == summary["destination"]
        and extra.get("transactionTime") == summary["transaction_time"]
        and extra.get("counts") == dict(sorted(counts.items())),
        f"{len(events)} event(s); extra keys {sorted(extra)}; counts {extra.get('counts')}",
    )


def consumer_ran(checks: Checks, api: AirflowAPI, summary: dict[str, Any]) -> None:
    runs = [r for r in api.runs("smart_group_export_consumer") if r["state"] == "success"]
    landed = []
    for r in runs:
        landed += api.xcom("smart_group_export_consumer", r["dag_run_id"], "read_new_files", "return_value") or []
    mine = [x for x in landed if x["destination"] == summary["destination"]]
    checks.check(
        "the asset-triggered DAG read the new files from S3",
        bool(mine) and all(r["run_type"] == "asset_triggered" for r in runs),
        f"{len(runs)} successful asset-triggered run(s); read {mine[0]['counts'] if mine else None}",
    )


def lineage_emitted(checks: Checks, root: Path, sandbox_origin: str, summary: dict[str, Any]) -> None:
    bucket, prefix = split_s3(summary["destination"])
    found = []
    for path in glob.glob(str(root / "openlineage" / "event*")):
        event = json.loads(Path(path).read_text())
        if event.get("eventType") == "COMPLETE" and event["job"]["name"] == "smart_group_export_mapped.finish":
            found.append(event)
    ok = False
    for event in found:
        inputs, outputs = event.get("inputs") or [], event.get("outputs") or []
        ok = ok or (
            [(i["namespace"], i["name"]) for i in inputs] == [(sandbox_origin, "/fhir/Group/cohort-a/$export")]
            and [(o["namespace"], o["name"]) for o in outputs] == [(f"s3://{bucket}", prefix)]
        )
    stats = next((o.get("outputFacets", {}).get("outputStatistics") for e in found for o in e.get("outputs") or []), {})
    shown = {k: (stats or {}).get(k) for k in ("rowCount", "size", "fileCount")}
    checks.check(
        "OpenLineage COMPLETE event of the finish task: FHIR export in, S3 destination out",
        ok,
        f"{len(found)} event(s) for the finish task; output statistics {shown}",
    )


# -- tables (SQL on FHIR views into Delta) ----------------------------------------------------------------
TABLE_OF_TYPE = {"Patient": "patient_demographics", "Observation": "observation_flat", "Condition": "condition_flat"}


def delta_table(location: str, storage_options: dict[str, str]) -> Any:
    from deltalake import DeltaTable

    return DeltaTable(location, storage_options=storage_options).to_pyarrow_table()


def tables_hold_export(
    checks: Checks,
    api: AirflowAPI,
    dag_id: str,
    run_id: str,
    summary: dict[str, Any],
    storage_options: dict[str, str],
    workers: list[str] | None,
) -> dict[str, Any]:
    """The commit wrote one Delta table per view into the bucket, one row per resource of the NDJSON."""
    commit = api.xcom(dag_id, run_id, "tables_commit", "return_value") or {"tables": {}}
    bucket, prefix = split_s3(summary["destination"])
    root = f"s3://{bucket}/{prefix.rsplit('/', 2)[0]}/tables/delta/"
    ndjson: Counter[str] = Counter()
    for entry in summary["output"]:
        ndjson[entry["type"]] += entry["lines"]
    rows, where = {}, set()
    for view in TABLE_OF_TYPE.values():
        location = commit["tables"].get(view, {}).get("outputs", {}).get("delta", {}).get("location", "")
        where.add(location.startswith(root) and location.endswith(view))
        rows[view] = delta_table(location, storage_options).num_rows if location else None
    expected = {TABLE_OF_TYPE[t]: n for t, n in ndjson.items()}
    checks.check(
        "each Delta table in the bucket holds one row per resource of the export's NDJSON",
        rows == expected and where == {True} and commit.get("incremental") is False,
        f"Delta rows {rows}; NDJSON resources {expected}; tables under {root}",
    )
    if workers:
        tis = [t for t in api.task_instances(dag_id, run_id) if t["task_id"] == "tables_convert"]
        hosts = Counter(t.get("hostname") for t in tis)
        checks.check(
            f"the {len(tis)} mapped view conversions ran on both Celery workers",
            set(workers) <= set(hosts),
            ", ".join(f"{h}: {n}" for h, n in sorted(hosts.items(), key=lambda kv: str(kv[0]))),
        )
    return commit


def tables_consumer_read(checks: Checks, api: AirflowAPI, commit: dict[str, Any], rows: dict[str, int]) -> None:
    """The asset-triggered consumer read this commit's tables back with DuckDB and counted the same rows."""
    runs = [r for r in api.runs("smart_tables_consumer") if r["state"] == "success"]
    seen = []
    for r in runs:
        result = api.xcom("smart_tables_consumer", r["dag_run_id"], "query_tables", "return_value") or {}
        if (result.get("export") or {}).get("observation_flat") == commit.get("export"):
            seen.append(result)
    counts = seen[-1]["counts"] if seen else None
    checks.check(
        "the tables consumer DAG (asset-triggered) read the Delta tables from S3 with DuckDB: same row counts",
        bool(seen) and all(counts.get(k) == v for k, v in rows.items()),
        f"{len(runs)} consumer run(s); read {counts}; expected {rows}",
    )


def tables_lineage_emitted(checks: Checks, root: Path, bucket: str) -> None:
    found = []
    for path in glob.glob(str(root / "openlineage" / "event*")):
        event = json.loads(Path(path).read_text())
        if event.get("eventType") == "COMPLETE" and event["job"]["name"] == "smart_group_export_mapped.tables_commit":
            found.append(event)
    outputs = [o for e in found for o in e.get("outputs") or []]
    with_schema = [o["name"] for o in outputs if (o.get("facets", {}).get("schema") or {}).get("fields")]
    checks.check(
        "OpenLineage COMPLETE event of the tables commit: one output per Delta table, each with a schema facet",
        len(with_schema) >= 4 and all(o["namespace"] == f"s3://{bucket}" for o in outputs),
        f"{len(found)} event(s); outputs with schemas: {sorted(with_schema)[:4]}",
    )
