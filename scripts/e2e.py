"""``make e2e``: the split Group export on a production-shaped Airflow, all on 127.0.0.1.

PostgreSQL (metadata DB), Redis (Celery broker), moto (an S3 API), the SMART/Bulk sandbox, and Airflow as
separate processes: api-server, scheduler, dag-processor, triggerer and two Celery workers. Through the
REST API it triggers ``smart_group_export_mapped`` into ``s3://``, checks what landed and how, then runs
it again and SIGKILLs a worker mid-download. After each export the mapped view conversions (on both workers)
and one commit turn the files into Delta tables in the bucket, and ``smart_tables_consumer`` reads them
back with DuckDB; a third, incremental run (``since``) must update and delete rows; last, 50 deferred export
waits share the triggerer with a ``DateTimeSensorAsync``, which must fire on time. Everything it starts it
stops, also on failure or a signal. Exits non-zero when any check fails.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo import CLIENT_ID, KID, generate_keys, smart_connection
from e2e import checks as c
from e2e.api import AirflowAPI, wait_until
from e2e.procs import Processes, kill_tree
from e2e.services import Airflow, ensure_installed, start_moto, start_postgres, start_redis

DAG_ID = "smart_group_export_mapped"
CONSUMER = "smart_group_export_consumer"
TABLES_CONSUMER = "smart_tables_consumer"
LOAD_DAG, CLOCK_DAG = "smart_e2e_many_waits", "smart_e2e_datetime_sensor"  # scripts/e2e/dags
LOAD_EXPORTS = 50  # deferred export waits in the triggerer at once
CLOCK_DELAY, CLOCK_TOLERANCE = 45, 30  # the DateTimeSensorAsync's target: this far ahead; resumed within
BUCKET = "e2e-fhir"
PATIENTS, OBS_PER_PATIENT = 2000, 10  # cohort-a (even patients): 13 files of <= 1000 resources
EXPECTED = {"Patient": PATIENTS // 2, "Observation": PATIENTS // 2 * OBS_PER_PATIENT, "Condition": PATIENTS // 2 * 2}
AWS_KEY_ID = "e2e-access-key"


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def start_sandbox(keys: Path) -> Any:
    from airflow_provider_smart.testing import SmartSandbox

    sandbox = SmartSandbox(
        patients=PATIENTS,
        resources_per_patient=OBS_PER_PATIENT,
        resources_per_file=1000,
        token_lifetime=30,  # short-lived: tokens expire and are renewed during the runs
        status_polls_before_ready=8,
        retry_after="2",
    ).start()
    sandbox.register_client(CLIENT_ID, jwks=json.loads((keys / "jwks.json").read_text()), scopes="system/*.rs")
    return sandbox


def wait_for_run(
    ctx: dict[str, Any], run_id: str, seen: dict[str, set[str]], timeout: float, on_poll: Any = None
) -> str:
    """Poll the run until it ends; record every state each task instance was seen in."""
    api = ctx["api"]

    def done() -> str | None:
        ctx["procs"].assert_alive(skip=ctx["killed"])
        for ti in api.task_instances(DAG_ID, run_id):
            seen.setdefault(f"{ti['task_id']}[{ti['map_index']}]", set()).add(str(ti["state"]))
        if on_poll is not None:
            on_poll()
        state = api.run(DAG_ID, run_id)["state"]
        return state if state in ("success", "failed") else None

    return wait_until(done, timeout, f"run {run_id}", interval=0.5)


def trigger(api: AirflowAPI, label: str, export_root: str, offset: int, since: str = "") -> str:
    logical = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=offset)
    run_id = f"e2e_{label}_{logical:%Y%m%dT%H%M%S}"
    api.trigger(DAG_ID, run_id, logical.isoformat(), {"export_root": export_root, "since": since})
    print(f"triggered {DAG_ID} run {run_id} with export_root={export_root}")
    return run_id


def verify_run(ctx: dict[str, Any], run_id: str, seen: dict[str, set[str]], state: str) -> dict[str, Any]:
    api, checks, sandbox = ctx["api"], ctx["checks"], ctx["sandbox"]
    tis = api.task_instances(DAG_ID, run_id)
    checks.check(f"run {run_id} succeeded", state == "success", f"state {state}")
    summary = api.xcom(DAG_ID, run_id, "finish", "return_value")
    status_url = api.xcom(DAG_ID, run_id, "kickoff", "status_url")
    c.bucket_holds_export(checks, ctx["s3"], summary, EXPECTED)
    c.ran_on_both_workers(checks, tis, ctx["workers"]) if ctx.get("both_workers", True) else None
    c.sensor_deferred(checks, api, DAG_ID, run_id, seen.get("wait[-1]", set()))
    c.export_deleted(checks, sandbox, status_url, ctx["fhir_auth"])
    c.no_secrets_in_logs(checks, api, DAG_ID, run_id, tis, ctx["secrets"] + sandbox.issued_tokens())
    c.asset_event_and_consumer(checks, api, run_id, summary)
    wait_until(
        lambda: (
            any(
                x["destination"] == summary["destination"]
                for r in api.runs(CONSUMER)
                if r["state"] == "success"
                for x in api.xcom(CONSUMER, r["dag_run_id"], "read_new_files", "return_value") or []
            )
            or any(r["state"] == "failed" for r in api.runs(CONSUMER))
        ),
        300,
        "the asset-triggered consumer run",
        interval=2,
    )
    c.consumer_ran(checks, api, summary)
    c.lineage_emitted(checks, ctx["root"], sandbox.origin, summary)
    workers = ctx["workers"] if ctx.get("both_workers", True) else None
    commit = c.tables_hold_export(checks, api, DAG_ID, run_id, summary, ctx["delta_options"], workers)
    expected_rows = {"patient_demographics": EXPECTED["Patient"], "observation_flat": EXPECTED["Observation"]}
    wait_for_consumer(ctx, commit)
    c.tables_consumer_read(checks, api, commit, expected_rows)
    c.tables_lineage_emitted(checks, ctx["root"], BUCKET)
    ctx["last_summary"] = summary
    return summary


def wait_for_consumer(ctx: dict[str, Any], commit: dict[str, Any]) -> None:
    api = ctx["api"]

    def read() -> bool:
        for r in api.runs(TABLES_CONSUMER):
            if r["state"] == "failed":
                return True
            if r["state"] != "success":
                continue
            result = api.xcom(TABLES_CONSUMER, r["dag_run_id"], "query_tables", "return_value") or {}
            if (result.get("export") or {}).get("observation_flat") == commit.get("export"):
                return True
        return False

    wait_until(read, 300, "the asset-triggered tables consumer run", interval=2)


def incremental_run(ctx: dict[str, Any], export_root: str) -> None:
    """Third run: an incremental export (since the last one) after the server changed and deleted resources."""
    api, checks, sandbox = ctx["api"], ctx["checks"], ctx["sandbox"]
    touched = sandbox.touch("Observation", 30)
    deleted = ["obs-0002-010", "obs-0004-010", "obs-0006-009"]  # one of them also touched
    in_cohort = sorted(  # cohort-a holds the even patients
        f"Observation/{t}" for t in touched if int(t.split("-")[1]) % 2 == 0 and t not in deleted
    )
    for rid in deleted:
        sandbox.delete_resource("Observation", rid)
    since = ctx["last_summary"]["transaction_time"]
    run_id = trigger(api, "incremental", export_root, offset=5, since=since)
    seen: dict[str, set[str]] = {}
    state = wait_for_run(ctx, run_id, seen, 900)
    checks.check(f"run {run_id} succeeded", state == "success", f"state {state}")
    commit = api.xcom(DAG_ID, run_id, "tables_commit", "return_value") or {"tables": {}}
    flat = c.delta_table(
        commit["tables"].get("observation_flat", {}).get("outputs", {}).get("delta", {}).get("location", ""),
        ctx["delta_options"],
    ).to_pylist()
    ids = {r["id"] for r in flat}
    amended = sorted(r["id"] for r in flat if r["status"] == "amended")
    checks.check(
        "the incremental run replaced the changed observations' rows and removed the deleted ones",
        commit.get("incremental") is True
        and commit.get("since") == since
        and len(flat) == EXPECTED["Observation"] - len(deleted)
        and not ids & {f"Observation/{d}" for d in deleted}
        and amended == in_cohort,
        f"incremental={commit.get('incremental')} since={commit.get('since')}; {len(flat)} rows "
        f"(expected {EXPECTED['Observation'] - len(deleted)}); amended {len(amended)} of {len(in_cohort)} changed",
    )
    wait_for_consumer(ctx, commit)
    c.tables_consumer_read(
        checks,
        api,
        commit,
        {"patient_demographics": EXPECTED["Patient"], "observation_flat": EXPECTED["Observation"] - len(deleted)},
    )


def kill_run(ctx: dict[str, Any], export_root: str) -> None:
    """Second run: slow file downloads, SIGKILL worker 1 while it runs mapped downloads, expect retries."""
    api, checks, sandbox, airflow = ctx["api"], ctx["checks"], ctx["sandbox"], ctx["airflow"]
    victim = "e2e-worker-1"
    sandbox.add_fault("file", delay=6, times=100_000)  # every file answer waits 6 s: downloads are in flight
    run_id = trigger(api, "kill", export_root, offset=0)
    killed: dict[str, Any] = {}

    def maybe_kill() -> None:
        if killed:
            return
        running = [
            t
            for t in api.task_instances(DAG_ID, run_id)
            if t["task_id"] == "download" and t["state"] == "running" and t.get("hostname") == victim
        ]
        if len(running) >= 2:
            time.sleep(2)  # let them get into their downloads
            pid = airflow.workers[victim]
            ctx["killed"].add(victim)
            killed["pids"] = kill_tree(pid, signal.SIGKILL)
            killed["tis"] = sorted(t["map_index"] for t in running)
            killed["at"] = time.monotonic()
            print(
                f"SIGKILL {victim} (pid {pid}; {len(killed['pids'])} processes with its pool and task processes) "
                f"while it ran download map_index {killed['tis']}",
                flush=True,
            )
            sandbox.clear_faults()

    seen: dict[str, set[str]] = {}
    state = wait_for_run(ctx, run_id, seen, 900, on_poll=maybe_kill)
    checks.check("a worker was SIGKILLed mid-download", bool(killed), f"killed pids {killed.get('pids')}")
    retried = []
    for index in killed.get("tis", []):
        tries = api.tries(DAG_ID, run_id, "download", index)
        retried.append(
            f"download[{index}]: "
            + ", ".join(f"try {t['try_number']} {t['state']} on {t.get('hostname')}" for t in tries)
        )
        checks.check(
            f"download[{index}] was retried on the surviving worker and succeeded",
            len(tries) >= 2 and tries[-1]["state"] == "success" and tries[-1].get("hostname") != victim,
            retried[-1],
        )
    if killed:
        print(f"recovered {time.monotonic() - killed['at']:.0f} s after the kill")
    ctx["both_workers"] = False  # worker 1 is gone for part of this run
    verify_run(ctx, run_id, seen, state)


def triggerer_load(ctx: dict[str, Any]) -> None:
    """Run 4: 50 deferred export waits in the triggerer at once, a DateTimeSensorAsync beside them on time."""
    import requests

    from airflow_provider_smart.bulk import BulkExportClient, ExportRequest

    api, checks, sandbox = ctx["api"], ctx["checks"], ctx["sandbox"]
    ctx["airflow"].start_worker("e2e-worker-3", 8)  # replaces the worker run 2 killed: the waits defer sooner
    session = requests.Session()
    session.auth = ctx["fhir_auth"]
    client = BulkExportClient(session, sandbox.url)
    usual, sandbox.status_polls_before_ready = sandbox.status_polls_before_ready, 10**6  # they wait until told
    try:
        request = ExportRequest(level="group", group_id="cohort-a", resource_types=["Patient"])
        urls = [client.kick_off(request) for _ in range(LOAD_EXPORTS)]
    finally:
        sandbox.status_polls_before_ready = usual
    now = datetime.now(UTC).replace(microsecond=0)
    load_run = f"e2e_load_{now:%Y%m%dT%H%M%S}"
    api.trigger(LOAD_DAG, load_run, now.isoformat(), {"status_urls": urls})
    print(f"{LOAD_EXPORTS} exports kicked off, waited on by {LOAD_DAG} run {load_run}")
    seen = {"most": 0, "at_target": -1}

    def deferred_waits() -> int:
        ctx["procs"].assert_alive(skip=ctx["killed"])
        waits = [t for t in api.task_instances(LOAD_DAG, load_run) if t["task_id"] == "wait"]
        deferred = sum(1 for t in waits if t["state"] == "deferred")
        seen["most"] = max(seen["most"], deferred)
        return deferred

    wait_until(lambda: deferred_waits() >= LOAD_EXPORTS, 900, f"{LOAD_EXPORTS} deferred waits", interval=2)
    checks.check(
        f"{LOAD_EXPORTS} deferred export waits in the triggerer at once", seen["most"] >= LOAD_EXPORTS, str(seen)
    )
    # Now, with every wait deferred and polling, a DAG of another kind defers beside them.
    now = datetime.now(UTC).replace(microsecond=0)
    clock_run, target = f"e2e_clock_{now:%Y%m%dT%H%M%S}", now + timedelta(seconds=CLOCK_DELAY)
    api.trigger(CLOCK_DAG, clock_run, now.isoformat(), {"target_time": target.isoformat()})
    print(f"{CLOCK_DAG} run {clock_run} defers until {target:%H:%M:%S}")

    def clock_done() -> str | None:
        deferred = deferred_waits()
        if seen["at_target"] < 0 and datetime.now(UTC) >= target:
            seen["at_target"] = deferred
        state = api.run(CLOCK_DAG, clock_run)["state"]
        return state if state in ("success", "failed") else None

    clock_state = wait_until(clock_done, CLOCK_DELAY + 300, f"run {clock_run}", interval=1)
    [ti] = api.task_instances(CLOCK_DAG, clock_run)
    ended = datetime.fromisoformat(ti["end_date"]) if ti.get("end_date") else None
    late = (ended - target).total_seconds() if ended else None
    checks.check(
        "the DateTimeSensorAsync deferring beside them fired on time",
        clock_state == "success"
        and late is not None
        and 0 <= late <= CLOCK_TOLERANCE
        and seen["at_target"] >= LOAD_EXPORTS,
        f"state {clock_state}; ended {late} s after its target time (resumed on a Celery worker; tolerance "
        f"{CLOCK_TOLERANCE} s); {seen['at_target']} export waits deferred at its target time",
    )
    finished = sandbox.finish_exports()
    load_state = wait_until(
        lambda: (lambda s: s if s in ("success", "failed") else None)(api.run(LOAD_DAG, load_run)["state"]),
        300,
        f"run {load_run}",
        interval=1,
    )
    checks.check(
        f"the {LOAD_EXPORTS} waits completed once their exports did",
        load_state == "success",
        f"run {load_state}; {finished} exports finished by the sandbox",
    )
    for url in urls:
        client.cancel(url)


def main() -> int:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="smart-e2e-"))
    root.chmod(0o755)  # the postgres user must reach its cluster inside
    logs = root / "logs"
    logs.mkdir()
    procs = Processes(logs)
    checks = c.Checks()
    sandbox = None
    try:
        step("Install what is missing (Debian postgresql, redis-server; the venv's e2e extra)")
        ensure_installed()

        step("PostgreSQL, Redis and moto (S3) on 127.0.0.1")
        pg_port = start_postgres(root, procs)
        redis_port = start_redis(root, procs)
        moto_port = start_moto(procs)
        print(f"postgres :{pg_port}  redis :{redis_port}  moto :{moto_port}  (logs in {logs})")
        import boto3

        aws_secret = os.urandom(18).hex()
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{moto_port}",
            aws_access_key_id=AWS_KEY_ID,
            aws_secret_access_key=aws_secret,
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket=BUCKET)

        step("Keys and the SMART/Bulk sandbox (tokens live 30 s)")
        os.environ.setdefault("AIRFLOW_HOME", str(root / "orchestrator-airflow-home"))  # nothing of ours reads it
        generate_keys(root / "keys", dict(os.environ))
        sandbox = start_sandbox(root / "keys")
        print(f"FHIR base URL {sandbox.url}")
        connection = smart_connection(sandbox.url, root / "keys", inline_key=True)

        step("Airflow: db migrate, then api-server, scheduler, dag-processor, triggerer, 2 Celery workers")
        airflow = Airflow(root, procs, pg_port, redis_port)
        airflow.configure()
        airflow.migrate()
        airflow.start()
        api = AirflowAPI(airflow.api_url)
        api.login()
        print(f"api-server {airflow.api_url}; workers {airflow.workers}")

        step("Connections through the REST API: smart_default (key inline) and aws_default (endpoint: moto)")
        api.create_connection(
            "smart_default",
            conn_type="smart",
            host=connection["host"],
            login=connection["login"],
            extra=json.dumps(connection["extra"]),
        )
        api.create_connection(
            "aws_default",
            conn_type="aws",
            login=AWS_KEY_ID,
            password=aws_secret,
            extra=json.dumps({"endpoint_url": f"http://127.0.0.1:{moto_port}", "region_name": "us-east-1"}),
        )
        for dag_id in (DAG_ID, CONSUMER, TABLES_CONSUMER, LOAD_DAG, CLOCK_DAG):
            api.wait_for_dag(dag_id)
            api.unpause(dag_id)

        from airflow_provider_smart.auth import BackendServicesAuth

        pem = connection["extra"]["private_key"]
        key_lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        ctx: dict[str, Any] = {
            "api": api,
            "procs": procs,
            "killed": set(),
            "checks": checks,
            "sandbox": sandbox,
            "airflow": airflow,
            "s3": s3,
            "root": root,
            "logs": logs,
            "workers": list(airflow.workers),
            "secrets": [pem, *key_lines, aws_secret, *airflow.secrets],
            "delta_options": {
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
                "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": aws_secret,
                "AWS_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true",
            },
            "fhir_auth": BackendServicesAuth(
                client_id=CLIENT_ID, private_key=pem, kid=KID, scope="system/*.rs", fhir_base_url=sandbox.url
            ),
        }
        export_root = f"s3://aws_default@{BUCKET}/fhir"

        step(f"Run 1: trigger {DAG_ID} through the REST API into {export_root}")
        run_started = time.monotonic()
        run_id = trigger(api, "first", export_root, offset=10)
        seen: dict[str, set[str]] = {}
        state = wait_for_run(ctx, run_id, seen, 900)
        print(f"run 1 ended {state} after {time.monotonic() - run_started:.0f} s; checks:")
        verify_run(ctx, run_id, seen, state)

        step("Run 2: SIGKILL a Celery worker while mapped downloads run; the retries must finish the job")
        kill_run(ctx, export_root)

        step("Run 3: an incremental export (since run 2) after changes and deletions; the tables follow")
        incremental_run(ctx, export_root)
        step(f"Run 4: {LOAD_EXPORTS} deferred export waits in the triggerer at once, a DateTimeSensorAsync beside them")
        triggerer_load(ctx)
    except Exception as exc:
        checks.check("the e2e run completed without an error", False, f"{type(exc).__name__}: {exc}")
        print(f"logs of every process: {logs}", file=sys.stderr)
    finally:
        step("Stopping everything this run started")
        procs.stop_all()
        if sandbox is not None:
            sandbox.stop()
    elapsed = time.monotonic() - started
    step(f"{len(checks.results) - len(checks.failed)} passed, {len(checks.failed)} failed; wall time {elapsed:.0f} s")
    for name in checks.failed:
        print(f"FAILED: {name}")
    if not checks.failed:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept {root} for inspection")
    return 1 if checks.failed or not checks.results else 0


if __name__ == "__main__":
    sys.exit(main())
