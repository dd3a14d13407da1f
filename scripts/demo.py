"""The main job end to end, offline: keys, sandbox server, connection, the daily export DAG twice, then the
daily tables DAG twice (export, SQL on FHIR views, Delta tables: full, then incremental) and a few rows.

Run with ``make demo``. Everything lives under ``.demo/`` at the repository root, recreated each time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".demo"
BIN = Path(sys.executable).parent
CLIENT_ID = "demo-client"
KID = "demo-key-1"


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(args: list[str], env: dict[str, str], quiet: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, env=env, text=True, capture_output=True, timeout=900)
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"command failed ({result.returncode}): {' '.join(args[:4])}")
    if not quiet:
        print(result.stdout.strip())
    return result


def generate_keys(keys: Path, env: dict[str, str]) -> None:
    """``airflow-smart keygen``: an ES384 key pair in ``keys`` (private_key.pem 0600, jwks.json) for CLIENT_ID."""
    run(
        [
            str(BIN / "airflow-smart"),
            "keygen",
            "--alg",
            "ES384",
            "--kid",
            KID,
            "--out",
            str(keys),
            "--client-id",
            CLIENT_ID,
            "--scope",
            "system/*.rs",
        ],
        env,
        quiet=True,
    )


def smart_connection(base_url: str, keys: Path, *, inline_key: bool = False) -> dict[str, Any]:
    """The ``smart_default`` connection for CLIENT_ID; ``inline_key`` puts the PEM itself in the extra (workers
    on other machines have no key file), else its path."""
    key_path = keys / "private_key.pem"
    key = {"private_key": key_path.read_text()} if inline_key else {"private_key_path": str(key_path)}
    return {
        "conn_type": "smart",
        "host": base_url,
        "login": CLIENT_ID,
        "extra": {**key, "kid": KID, "scope": "system/*.rs"},
    }


def start_sandbox(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    ready = WORK / "sandbox.url"
    sandbox = subprocess.Popen(
        [
            str(BIN / "airflow-smart"),
            "sandbox",
            "--port",
            "0",
            "--client-id",
            CLIENT_ID,
            "--jwks",
            str(WORK / "keys" / "jwks.json"),
            "--scopes",
            "system/*.rs",
            "--patients",
            "200",
            "--resources-per-patient",
            "10",
            "--resources-per-file",
            "1000",
            "--status-polls",
            "2",
            "--retry-after",
            "1",
            "--churn-per-export",
            "25",
            "--ready-file",
            str(ready),
        ],
        env=env,
        stdout=(WORK / "sandbox.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text().strip()):
        if sandbox.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"sandbox did not start; see {WORK / 'sandbox.log'}")
        time.sleep(0.1)
    return sandbox, ready.read_text().strip()


def describe(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    summary = manifest["summary"]
    print(f"{folder.relative_to(REPO)}  (transactionTime {summary['transaction_time']})")
    for kind in ("output", "deleted", "error"):
        for entry in summary[kind]:
            path = Path(entry["path"])
            first = path.open().readline()
            resource = json.loads(first) if first.strip() else {}
            print(
                f"  {kind:<7} {path.relative_to(folder)!s:<28} {entry['lines']:>6} resources "
                f"{entry['bytes'] / 1e3:>9.1f} kB  first: {resource.get('resourceType')}/{resource.get('id')}"
            )


def show_tables(root: Path) -> None:
    """Each Delta table's version and rows, and a few rows of two of them (read with DuckDB)."""
    from deltalake import DeltaTable

    from airflow_provider_smart.tables.reading import duckdb_over_tables

    names = sorted(p.name for p in (root / "delta").iterdir())
    tables = [{"table": n, "outputs": {"delta": {"location": str(root / "delta" / n)}}} for n in names]
    con, _ = duckdb_over_tables(tables)
    for name in names:
        history = DeltaTable(str(root / "delta" / name)).history(1)[0]
        rows = con.sql(f"SELECT count(*) FROM {name}").fetchall()[0][0]
        print(
            f"  {name:<22} Delta version {history['version']:<3} {rows:>6} rows  (last commit: {history['operation']})"
        )
    for query in (
        "SELECT id, gender, birth_date, family, given, city FROM patient_demographics ORDER BY id LIMIT 3",
        "SELECT id, patient_id, status, code, effective, value, unit FROM observation_flat "
        "ORDER BY status = 'amended' DESC, id LIMIT 4",
    ):
        print(f"  {query.split(' FROM ')[1].split()[0]}:")
        relation = con.sql(query)
        for row in relation.fetchall():
            print("    " + " | ".join(str(v) for v in row))


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(WORK / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags_examples"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        SMART_EXPORT_ROOT=str(WORK / "exports"),
        SMART_TABLES_ROOT=str(WORK / "tables"),
    )

    step("1. Generate a signing key pair (airflow-smart keygen)")
    generate_keys(WORK / "keys", env)
    print(f"private key {WORK / 'keys' / 'private_key.pem'} (0600), public JWKS {WORK / 'keys' / 'jwks.json'}")

    step("2. Start the sandbox SMART + Bulk Data server on 127.0.0.1 with the public key registered")
    sandbox, base_url = start_sandbox(env)
    print(f"FHIR base URL {base_url}")
    try:
        env["AIRFLOW_CONN_SMART_DEFAULT"] = json.dumps(smart_connection(base_url, WORK / "keys"))

        step("3. Migrate a fresh sqlite metadata DB and check the connection gets a token")
        run([str(BIN / "airflow"), "db", "migrate"], env, quiet=True)
        run([str(BIN / "airflow-smart"), "token", "--conn-id", "smart_default"], env)

        for attempt, label in ((1, "full export"), (2, "incremental export, since the first run's transactionTime")):
            step(f"4.{attempt} airflow dags test smart_daily_export ({label})")
            run([str(BIN / "airflow"), "dags", "test", "smart_daily_export"], env, quiet=True)
            runs = sorted((WORK / "exports" / "daily").iterdir())
            describe(runs[-1])
            time.sleep(1.1)  # distinct logical dates, so each run gets its own folder

        for attempt, label in (
            (1, "full: every table built"),
            (2, "incremental: changed rows replaced, deleted rows gone"),
        ):
            step(f"5.{attempt} airflow dags test smart_daily_tables ({label})")
            run([str(BIN / "airflow"), "dags", "test", "smart_daily_tables"], env, quiet=True)
            show_tables(WORK / "tables")
            time.sleep(1.1)
    finally:
        sandbox.send_signal(signal.SIGINT)
        sandbox.wait(timeout=30)

    step("Done")
    print(f"Exports are under {WORK / 'exports' / 'daily'}; each run folder has its NDJSON files and manifest.json.")
    print(f"Tables are under {WORK / 'tables' / 'delta'} (Delta; read them with deltalake, DuckDB, Spark...).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
